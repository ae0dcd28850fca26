"""Run the benchmark suite and write docs/benchmarks.md with charts in docs/img/.

    python -m benchmarks                      # everything (about 12 minutes on 2 cores)
    python -m benchmarks --quick              # smoke run of every section (well under a minute)
    python -m benchmarks --only hotpath,scrape
    python -m benchmarks --report-only        # rebuild the page from the saved results

Each section runs its measurements in subprocesses (each with its own PROMETHEUS_MULTIPROC_DIR
set before prometheus_client is imported), starts and stops its own redis-server and gunicorn
processes, and saves its figures to <results>/<section>.json; the page is then built from every
saved section, so running one section refreshes its part and keeps the others.
A full run writes to benchmarks/results/, docs/benchmarks.md and docs/img/; --quick writes to a
temporary directory (printed) unless --results/--out/--img-dir say otherwise.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks._common import log, write_result
from benchmarks.sections import SECTIONS, module
from tests.processes import REPO


def _sections(spec: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if not spec:
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return names


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit, so every section stops the processes it started by their pids."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="flagmetrics benchmark suite: " + ", ".join(SECTIONS),
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument("--only", metavar="SECTIONS", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--skip", metavar="SECTIONS", help="comma-separated sections to leave out")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the page from saved results")
    parser.add_argument("--results", type=Path, help="directory of the per-section JSON results")
    parser.add_argument("--out", type=Path, help="the Markdown page to write")
    parser.add_argument("--img-dir", type=Path, help="directory of the PNG charts")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in SECTIONS:
            doc = (module(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:9s} {doc}")
        return 0

    if args.quick and not (args.results and args.out):
        scratch = Path(tempfile.mkdtemp(prefix="flagmetrics-bench-quick-"))
        results = args.results or scratch / "results"
        out = args.out or scratch / "benchmarks.md"
        img_dir = args.img_dir or scratch / "img"
    else:
        results = args.results or REPO / "benchmarks" / "results"
        out = args.out or REPO / "docs" / "benchmarks.md"
        img_dir = args.img_dir or (out.parent / "img")

    chosen = _sections(args.only, parser) or list(SECTIONS)
    skipped = set(_sections(args.skip, parser))
    chosen = [s for s in chosen if s not in skipped]
    command = "python -m benchmarks" + ("".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:])))

    from benchmarks import report

    failed: list[str] = []
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not args.report_only:
        machine = report.machine_info()
        write_result(results, "machine", {**machine, "command": command})
        started = time.monotonic()
        for name in chosen:
            log(f"== section {name} ==")
            t0 = time.monotonic()
            try:
                data = module(name).run(quick=args.quick)
            except Exception:
                failed.append(name)
                log(f"section {name} FAILED:\n{traceback.format_exc()}")
                write_result(results, f"{name}.failed", {"section": name, "error": traceback.format_exc()})
                continue
            data["command"] = command
            data["git"] = machine["git"]
            data["elapsed_s"] = time.monotonic() - t0
            write_result(results, name, data)
            (results / f"{name}.failed.json").unlink(missing_ok=True)
            log(f"section {name} done in {data['elapsed_s']:.0f} s")
        log(f"all sections done in {time.monotonic() - started:.0f} s")
    report.write(results, out, img_dir)
    log(f"wrote {out} and charts in {img_dir}")
    if failed:
        log(f"failed sections: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
