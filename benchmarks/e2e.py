"""Section 5, end to end: requests per second of the example app under gunicorn, exporter on vs off.

gunicorn masters from the repository's gunicorn.conf.py, each with 2 uvicorn workers
(WEB_CONCURRENCY=2) on a free loopback port and its own fresh PROMETHEUS_MULTIPROC_DIR:
  on (LocalStore)    examples.app:app (FlagMetricsPlugin, the default store),
  on (RedisStore)    examples.app:app with FLAGMETRICS_REDIS_URL pointing at our redis-server,
  on (LocalStore, no windows)  the first with FLAGMETRICS_WINDOWS=off (what the windows cost),
  off                benchmarks.app_off:app (same flags and handlers, no exporter, no collector),
  no-op collector    benchmarks.app_off:app with BENCH_COLLECTOR=noop (litestar-flags builds its
                     events, the collector drops them: the cost any collector pays),
  reference exporter benchmarks.app_off:app with BENCH_COLLECTOR=reference (litestar-flags 0.2.2's).
They run side by side; wrk (`-t2 -c32`, benchmarks/wrk_users.lua varying the user over 100,000
ids) loads one at a time, in rotated order, several rounds, so drift hits all alike. Each server
gets a warm-up run first. Overhead = 1 - rps(config) / rps(off), on medians. Because wrk, the
servers and whatever else runs on the machine share 2 cores, the CPU time the two workers spent
per request (utime + stime from /proc, redis-server's added for the Redis store) is recorded too:
it hardly depends on how busy the machine is, so its overhead is the steadier figure.

Sampling profile: with py-spy installed (the bench extra), each flagmetrics server is loaded once more
while `py-spy record --subprocesses` samples its workers; every sample is charged to the innermost
frame of flagmetrics, litestar-flags or the rest (the app, Litestar, uvicorn, h11, asyncio), so
flagmetrics' share is the CPU the same app would not spend without it, measured in the same
process at the same moment.

In-process breakdown (`--inprocess`, no HTTP, much less noise): the example's page (4 flag
evaluations for one user) through FeatureFlagClients that differ only in the collector, in turns
(rotated each round); flagmetrics' time includes an `await flush()` of its round's buffer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    BENCH,
    PYTHON,
    clean_env,
    log,
    median,
    now_iso,
    redis_server,
    run_json,
    temp_dir,
)
from benchmarks.page import Charts, Lines, fmt, met, paired, provenance, table
from benchmarks.targets import TARGET_E2E_PCT
from tests.processes import LOOPBACK, REPO, free_port, stop_process, wait_for

WRK_SCRIPT = BENCH / "wrk_users.lua"
SAMPLED = ("on (LocalStore)", "on (RedisStore)", "on (LocalStore, no windows)")
"""The servers profiled by sampling."""
SAMPLE_RATE_HZ = 250
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    app: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    workers: list[int] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def worker_pids(self) -> list[int]:
        found: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in task.read_text().split()]
        return found


def _cpu_ms(pids: list[int]) -> float:
    """CPU milliseconds (user + system) spent so far by these processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total * 1000.0 / CLOCK_TICKS


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our loopback server
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@contextlib.contextmanager
def _gunicorn(name: str, app: str, workdir: Path, **env: str) -> Iterator[Server]:
    port = free_port()
    multiproc = workdir / f"multiproc-{port}"
    log_path = workdir / f"gunicorn-{port}.log"
    environ = clean_env(BIND=f"{LOOPBACK}:{port}", WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(multiproc), **env)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), app],
            cwd=REPO,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(name=name, app=app, port=port, proc=proc, log_path=log_path)
    try:
        wait_for(
            lambda: len(server.worker_pids()) == 2 and _get(f"{server.url}/?user=warm")[0] == 200,
            60,
            f"gunicorn {name} on {port} (log {log_path})",
        )
        server.workers = server.worker_pids()
        yield server
    finally:
        workers = server.worker_pids()  # as they are now: also after a failed start or a replacement
        stop_process(proc, timeout_s=20)
        for pid in workers:  # a worker the master could not reap in time
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _wrk(url: str, seconds: float, connections: int = 32, threads: int = 2) -> dict[str, Any]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(WRK_SCRIPT), url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    match = re.search(r"^JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def _evaluations_total(server: Server) -> float:
    status, body = _get(f"{server.url}/metrics", timeout_s=10)
    if status != 200:
        return -1.0
    from prometheus_client.parser import text_string_to_metric_families  # the orchestrator's own use

    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "feature_flag_evaluations":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


TITLE = "5. End to end: the example app under gunicorn"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    rounds, seconds, warmup = (1, 1.0, 1.0) if quick else (8, 4.0, 2.0)
    runs: dict[str, list[dict[str, Any]]] = {}
    checks: dict[str, Any] = {}
    with redis_server() as redis, temp_dir("e2e") as workdir, contextlib.ExitStack() as stack:
        configs = [
            ("on (LocalStore)", "examples.app:app", {}),
            ("on (RedisStore)", "examples.app:app", {"FLAGMETRICS_REDIS_URL": redis.url}),
            ("on (LocalStore, no windows)", "examples.app:app", {"FLAGMETRICS_WINDOWS": "off"}),
            ("off", "benchmarks.app_off:app", {}),
            ("no-op collector", "benchmarks.app_off:app", {"BENCH_COLLECTOR": "noop"}),
            ("reference exporter", "benchmarks.app_off:app", {"BENCH_COLLECTOR": "reference"}),
        ]
        if quick:  # the smoke run starts only the two that the target compares
            configs = [c for c in configs if c[0] in ("on (LocalStore)", "off")]
        servers = [stack.enter_context(_gunicorn(name, app, workdir, **env)) for name, app, env in configs]
        for server in servers:
            if server.name == "on (RedisStore)" and redis.proc is not None:
                server.extra_pids = [redis.proc.pid]  # its Lua work runs on the same 2 cores
        log(f"e2e: {len(servers)} gunicorn masters x 2 uvicorn workers up; {rounds} rounds of {seconds:g} s")
        for server in servers:
            _wrk(f"{server.url}/", warmup)
            runs[server.name] = []
        for r in range(rounds):
            shift = r % len(servers)
            for server in servers[shift:] + servers[:shift]:
                before_workers, before_extra = _cpu_ms(server.workers), _cpu_ms(server.extra_pids)
                result = _wrk(f"{server.url}/", seconds)
                workers_ms = _cpu_ms(server.workers) - before_workers
                extra_ms = _cpu_ms(server.extra_pids) - before_extra
                result["cpu_ms_per_request"] = (workers_ms + extra_ms) / max(result["requests"], 1)
                result["redis_cpu_ms_per_request"] = extra_ms / max(result["requests"], 1)
                runs[server.name].append(result)
                log(
                    f"e2e: round {r + 1}, {server.name}: {result['rps']:.0f} req/s, "
                    f"{result['cpu_ms_per_request'] * 1000:.0f} µs CPU/request"
                )
        time.sleep(1.5)  # let the flushers deliver before the sanity scrape
        for server in servers:
            sent = sum(x["requests"] for x in runs[server.name])
            checks[server.name] = {
                "metrics_evaluations_total": _evaluations_total(server),
                "requests_measured": sent,
                "non2xx": sum(x["non2xx"] for x in runs[server.name]),
                "socket_errors": sum(x["socket_errors"] for x in runs[server.name]),
                "metrics_status": _get(f"{server.url}/metrics")[0],
            }
        sampled = {
            server.name: _sampled(server, workdir, 4.0 if quick else 12.0)
            for server in servers
            if server.name in SAMPLED
        }
    with temp_dir("inproc") as directory:
        log("e2e: in-process breakdown of a page (4 evaluations) by collector")
        inprocess = run_json(
            [
                PYTHON,
                "-m",
                "benchmarks.e2e",
                "--inprocess",
                "--pages",
                "200" if quick else "300",
                "--rounds",
                "1" if quick else "40",
            ],
            env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            timeout_s=300,
        )
    summary: dict[str, Any] = {}
    off = median([x["rps"] for x in runs["off"]])
    off_cpu = median([x["cpu_ms_per_request"] for x in runs["off"]])
    for name, results in runs.items():
        rps = median([x["rps"] for x in results])
        cpu = median([x["cpu_ms_per_request"] for x in results])
        summary[name] = {
            "rps_median": rps,
            "rps_all": [x["rps"] for x in results],
            "cpu_us_per_request_median": cpu * 1000,
            "cpu_us_per_request_all": [x["cpu_ms_per_request"] * 1000 for x in results],
            "redis_cpu_us_per_request_median": median([x["redis_cpu_ms_per_request"] for x in results]) * 1000,
            "cpu_overhead_pct": (cpu / off_cpu - 1) * 100 if name != "off" else 0.0,
            "latency_p50_us_median": median([x["latency_p50_us"] for x in results]),
            "latency_p99_us_median": median([x["latency_p99_us"] for x in results]),
            "overhead_pct": (1 - rps / off) * 100 if name != "off" else 0.0,
        }
    return {
        "section": "e2e",
        "date": now_iso(),
        "quick": quick,
        "rounds": rounds,
        "seconds": seconds,
        "wrk": f"wrk -t2 -c32 -d{seconds:g}s -s benchmarks/wrk_users.lua http://127.0.0.1:PORT/",
        "summary": summary,
        "checks": checks,
        "inprocess": inprocess,
        "sampled": {name: profile for name, profile in sampled.items() if profile is not None},
    }


def _py_spy() -> str | None:
    beside = Path(PYTHON).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _sampled(server: Server, workdir: Path, seconds: float) -> dict[str, Any] | None:
    """Sample the server's workers with py-spy under wrk load; samples by owner and flagmetrics function."""
    spy = _py_spy()
    if spy is None:
        log("e2e: py-spy is not installed (pip install -e '.[bench]'): no sampling profile")
        return None
    raw = workdir / f"py-spy-{server.port}.txt"
    load = subprocess.Popen(
        ["wrk", "-t2", "-c32", f"-d{seconds + 3:g}s", "-s", str(WRK_SCRIPT), f"{server.url}/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        command = [spy, "record", "-p", str(server.proc.pid), "--subprocesses", "--nonblocking"]
        command += ["-r", str(SAMPLE_RATE_HZ), "-d", f"{seconds:g}", "-f", "raw", "-o", str(raw)]
        done = subprocess.run(command, capture_output=True, timeout=seconds + 60, check=False)
    finally:
        load.wait(timeout=seconds + 30)
    if done.returncode != 0 or not raw.exists():
        log(f"e2e: py-spy failed on {server.name}: {done.stderr.decode(errors='replace')[-300:]}")
        return None
    return _attribute(raw.read_text(encoding="utf-8"), seconds)


_OWNERS = (("(flagmetrics/", "flagmetrics"), ("(litestar_flags/", "litestar-flags"))


def _attribute(raw: str, seconds: float) -> dict[str, Any]:
    """Charge each worker sample of a py-spy raw profile to the innermost flagmetrics or litestar-flags frame."""
    owners: dict[str, int] = {"flagmetrics": 0, "litestar-flags": 0, "the rest": 0}
    functions: dict[str, int] = {}
    workers = set()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or not frames[1].startswith("process "):
            continue  # the master's own samples
        workers.add(frames[1].split(":")[0])
        owner = "the rest"
        for frame in reversed(frames):
            found = next((name for marker, name in _OWNERS if marker in frame), None)
            if found is not None:
                owner = found
                if found == "flagmetrics":
                    where = frame.split(" (", 1)
                    module = where[1].split(":")[0] if len(where) > 1 else ""
                    function = f"{module.removeprefix('flagmetrics/')}: {where[0]}"
                    functions[function] = functions.get(function, 0) + int(count)
                break
        owners[owner] += int(count)
    return {
        "seconds": seconds,
        "rate_hz": SAMPLE_RATE_HZ,
        "workers": len(workers),
        "owners": owners,
        "flagmetrics_functions": sorted(functions.items(), key=lambda item: -item[1])[:10],
    }


async def _inprocess(pages: int, rounds: int) -> dict[str, Any]:
    """Microseconds per page (4 evaluations) for each collector; run with PROMETHEUS_MULTIPROC_DIR set."""
    import asyncio

    from litestar_flags import EvaluationContext, FeatureFlagClient
    from litestar_flags.analytics.exporters.prometheus import PrometheusExporter as Reference
    from litestar_flags.storage.memory import MemoryStorageBackend
    from prometheus_client import CollectorRegistry

    from benchmarks.app_off import NoopCollector
    from examples.app import example_flags
    from flagmetrics import PrometheusExporter
    from flagmetrics.litestar_flags import instrument

    # As examples/app.py builds it, in a registry of its own (importing the example made one too).
    example_exporter = PrometheusExporter(registry=CollectorRegistry())

    async def client(collector: Any, instrumented: bool = False) -> Any:
        storage = MemoryStorageBackend()
        for flag in example_flags():
            await storage.create_flag(flag)
        made = FeatureFlagClient(storage=storage, analytics_collector=collector)
        if instrumented:
            instrument(made, example_exporter)
        return made

    await example_exporter.start()
    clients = {
        "off": await client(None),
        "no-op collector": await client(NoopCollector()),
        "reference exporter": await client(Reference(registry=CollectorRegistry())),
        "flagmetrics (as examples/app.py: collector + instrument)": await client(example_exporter, True),
    }
    instrumented = clients["flagmetrics (as examples/app.py: collector + instrument)"]

    async def page(flags: Any, user: str, plan: str) -> None:
        context = EvaluationContext(targeting_key=user, attributes={"plan": plan})
        await flags.get_boolean_value("new_checkout", default=False, context=context)
        await flags.get_object_value("button_color", default={}, context=context)
        await flags.get_object_value("search_ranking", default={}, context=context)
        await flags.get_boolean_value("legacy_banner", default=False, context=context)

    times: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    for r in range(rounds + 1):  # round 0 warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            flags = clients[name]
            t0 = time.perf_counter_ns()
            for i in range(pages):
                n = r * pages + i
                await page(flags, f"u{n}", "premium" if n % 10 == 0 else "free")
                if i % 10 == 9:
                    await asyncio.sleep(0)
            if flags is instrumented:
                # This round's share of shipping the buffer to the store is flagmetrics' cost.
                await example_exporter.flush()
            if r:
                times[name].append((time.perf_counter_ns() - t0) / 1000 / pages)
    profiled = await _profile_pages(page, instrumented, noop=clients["no-op collector"], pages=max(pages * 10, 1000))
    await example_exporter.close()
    return {
        "pages": pages,
        "rounds": rounds,
        "us_per_page": times,
        "median_us_per_page": {k: median(v) for k, v in times.items()},
        "profile": profiled,
    }


# Functions whose cumulative time per page says where flagmetrics' extra time goes.
_WATCHED = (
    (
        "litestar_flags/engine.py",
        "_record_analytics",
        "litestar-flags `_record_analytics` (builds the event, awaits the collector)",
    ),
    ("flagmetrics/exporter.py", "record", "flagmetrics `PrometheusExporter.record` (whole)"),
    ("prometheus_client/values.py", "inc", "of which prometheus_client value writes (`values.inc`)"),
    ("flagmetrics/buffer.py", "add", "of which `Buffer.add`"),
    ("flagmetrics/litestar_flags.py", "_evaluate", "flagmetrics `instrument` wrapper (whole, includes the evaluation)"),
    ("litestar_flags/client.py", "_evaluate", "litestar-flags `FeatureFlagClient._evaluate` (whole evaluation)"),
    ("flagmetrics/flusher.py", "flush", "flagmetrics `Flusher.flush` (hash + push)"),
    ("flagmetrics/buffer.py", "cut_in_steps", "of which `Buffer.cut_in_steps` (BLAKE2b of the user ids, on the loop)"),
)


async def _profile_pages(page: Any, flagmetrics: Any, *, noop: Any, pages: int) -> dict[str, Any]:
    """cProfile `pages` pages through the flagmetrics client (and the no-op one): µs per page per function."""
    import asyncio
    import cProfile
    import pstats

    out: dict[str, Any] = {"pages": pages}
    for label, flags in (("flagmetrics", flagmetrics), ("no-op collector", noop)):
        profile = cProfile.Profile()
        profile.enable()
        for i in range(pages):
            await page(flags, f"p{i}", "free")
            if i % 10 == 9:
                await asyncio.sleep(0)
        if flags is flagmetrics:
            await flagmetrics.analytics_collector.flush()
        profile.disable()
        raw = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        total = sum(v[2] for v in raw.values())
        rows = []
        for suffix, name, label_text in _WATCHED:
            cum = sum(v[3] for (f, _l, n), v in raw.items() if f.endswith(suffix) and n == name)
            rows.append([label_text, cum / pages * 1e6])
        out[label] = {"total_us_per_page": total / pages * 1e6, "functions_us_per_page": rows}
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    import asyncio

    from benchmarks._common import emit, require_multiprocess_env

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inprocess", action="store_true", required=True)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    require_multiprocess_env()
    emit(asyncio.run(_inprocess(args.pages, args.rounds)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    order = [
        "off",
        "on (LocalStore)",
        "on (RedisStore)",
        "on (LocalStore, no windows)",
        "no-op collector",
        "reference exporter",
    ]
    names = sorted(data["summary"], key=lambda k: order.index(k) if k in order else len(order))
    s = {k: data["summary"][k] for k in names}
    off = s["off"]
    rows = []
    overheads: dict[str, tuple[float, float]] = {}
    for name, r in s.items():
        check = data["checks"][name]
        rps_paired = (1 - paired(r["rps_all"], off["rps_all"])) * 100
        cpu_paired = (paired(r["cpu_us_per_request_all"], off["cpu_us_per_request_all"]) - 1) * 100
        overheads[name] = (rps_paired, cpu_paired)
        is_off = name == "off"
        rows.append(
            [
                name,
                f"{r['rps_median']:,.0f}",
                ", ".join(f"{x:,.0f}" for x in r["rps_all"]),
                "–" if is_off else fmt(r["overhead_pct"], 1),
                "–" if is_off else fmt(rps_paired, 1),
                fmt(r["cpu_us_per_request_median"], 0),
                "–" if is_off else fmt(cpu_paired, 1),
                "–" if is_off else fmt((1 - 1 / (1 + cpu_paired / 100)) * 100, 1),
                fmt(r["redis_cpu_us_per_request_median"], 1) if name == "on (RedisStore)" else "–",
                fmt(r["latency_p50_us_median"] / 1000, 1),
                fmt(r["latency_p99_us_median"] / 1000, 1),
                f"{check['non2xx']}/{check['socket_errors']}",
                f"{check['metrics_evaluations_total']:,.0f}"
                if check["metrics_evaluations_total"] >= 0
                else f"no /metrics ({check['metrics_status']})",
            ]
        )
    out = [
        provenance(data),
        "",
        f"gunicorn (`gunicorn.conf.py`, WEB_CONCURRENCY=2 uvicorn workers, BIND on a free port), all servers "
        f"up at once and loaded one at a time in rotated order, {data['rounds']} rounds of "
        f"`{data['wrk']}` after a warm-up each; the page `/?user=…` evaluates the 4 example flags. "
        "wrk shares the machine's cores with the servers. *off* is `benchmarks/app_off.py` (same flags and "
        "handlers, no exporter); *no-op collector* lets litestar-flags build its evaluation events and "
        "drops them (the cost any collector pays); *reference* is litestar-flags 0.2.2's exporter.",
        "",
        "Other work on this shared machine makes req/s swing by tens of percent from one run to the "
        "next, for every server alike, so req/s medians differ by more than the effect being measured. "
        "The CPU time the 2 workers spent per request (utime + stime from /proc, plus redis-server's for "
        "the Redis store) hardly depends on that, and with wrk and the workers saturating both cores, "
        "req/s is inversely proportional to it: *req/s overhead from CPU* = 1 − CPU(off) / CPU(server). "
        "*Paired* figures are medians of per-round ratios to the off run of the same round. The verdict "
        "uses the CPU-derived figure.",
        "",
        *table(
            [
                "server",
                "req/s median",
                "req/s per round",
                "req/s overhead % (of medians)",
                "req/s overhead % (paired)",
                "CPU µs / request, median",
                "CPU overhead % (paired)",
                "req/s overhead % from CPU",
                "of which redis-server µs / request",
                "p50 ms",
                "p99 ms",
                "non-2xx / socket errors",
                "evaluations in /metrics after the runs",
            ],
            rows,
        ),
        "",
    ]
    for name in ("on (LocalStore)", "on (RedisStore)"):
        if name in s:
            rps_paired, cpu_paired = overheads[name]
            from_cpu = (1 - 1 / (1 + cpu_paired / 100)) * 100
            verdicts.append(
                [
                    f"end to end, exporter {name}: ≤ {TARGET_E2E_PCT:g}% fewer req/s than off",
                    f"{from_cpu:.1f}% fewer req/s from CPU per request (+{cpu_paired:.1f}% CPU, paired); "
                    f"req/s themselves: {s[name]['overhead_pct']:.1f}% of medians, {rps_paired:.1f}% paired "
                    "(noise of this machine: ± tens of %)",
                    met(from_cpu <= TARGET_E2E_PCT),
                ]
            )
    noop = s.get("no-op collector")
    sampled = data.get("sampled") or {}
    for name in ("on (LocalStore)", "on (RedisStore)", "on (LocalStore, no windows)"):
        if name in s and noop is not None:
            vs_noop = (paired(s[name]["cpu_us_per_request_all"], noop["cpu_us_per_request_all"]) - 1) * 100
            shares = sampled.get(name)
            measured = f"+{vs_noop:.1f}% CPU per request over the no-op collector (/proc, paired, noisy)"
            share_pct = None
            if shares:
                total = sum(shares["owners"].values())
                own = shares["owners"]["flagmetrics"]
                share_pct = own / max(total - own, 1) * 100
                measured += f"; sampled in the workers: flagmetrics' own code +{share_pct:.1f}% over the rest"
                if name == "on (RedisStore)":
                    redis_pct = s[name]["redis_cpu_us_per_request_median"] / noop["cpu_us_per_request_median"] * 100
                    share_pct += redis_pct
                    measured += f", +{redis_pct:.1f}% for redis-server's work: +{share_pct:.1f}%"
            verdicts.append(
                [
                    f"end to end, exporter {name}: CPU per request ≤ {TARGET_E2E_PCT:g}% above the no-op collector",
                    measured,
                    met((share_pct if share_pct is not None else vs_noop) <= TARGET_E2E_PCT),
                ]
            )
    if sampled:
        srows = []
        for name, shares in sampled.items():
            total = sum(shares["owners"].values())
            own = shares["owners"]["flagmetrics"]
            srows.append(
                [
                    name,
                    f"{total:,}",
                    fmt(own / total * 100, 1),
                    fmt(shares["owners"]["litestar-flags"] / total * 100, 1),
                    fmt(shares["owners"]["the rest"] / total * 100, 1),
                    fmt(own / max(total - own, 1) * 100, 1),
                    ", ".join(f"`{fn}` {n / total * 100:.1f}%" for fn, n in shares["flagmetrics_functions"][:6]),
                ]
            )
        out += [
            "### Where a worker's CPU goes (sampling profile under load)",
            "",
            f"Each flagmetrics server loaded by the same wrk command once more while `py-spy record --subprocesses "
            f"-r {next(iter(sampled.values()))['rate_hz']}` sampled its workers for "
            f"{next(iter(sampled.values()))['seconds']:g} s (idle samples left out). A sample is charged to the "
            "innermost frame of flagmetrics or litestar-flags on its stack, else to *the rest* (the app, "
            "Litestar, uvicorn, h11, asyncio): flagmetrics' share is what the same worker would not spend "
            "without it, at the same moment, free of the run-to-run noise of the CPU figures above. "
            "litestar-flags' share includes building each `FlagEvaluationEvent` for its collector, which "
            "the no-op collector pays too.",
            "",
            *table(
                [
                    "server",
                    "worker samples",
                    "flagmetrics %",
                    "litestar-flags %",
                    "the rest %",
                    "flagmetrics over the rest %",
                    "flagmetrics' functions (innermost, % of samples)",
                ],
                srows,
            ),
            "",
        ]
    inproc = data.get("inprocess")
    if inproc:
        per = inproc["us_per_page"]
        base = per["off"]
        extras = {name: median([v - b for v, b in zip(per[name], base, strict=True)]) for name in per}
        irows = [
            [name, fmt(median(per[name]), 1), fmt(extras[name], 1), fmt(extras[name] / 4, 1)]
            for name in sorted(per, key=lambda k: extras[k])
        ]
        out += [
            "### In-process breakdown (no HTTP)",
            "",
            "The same page (4 evaluations, one user per page) called directly, "
            f"{inproc['pages']:,} pages per round, {inproc['rounds']} rounds with the collectors in turn; "
            "*extra* is the median over rounds of the difference to the off run of the same round. This "
            "splits the end-to-end overhead into what litestar-flags spends building a "
            "`FlagEvaluationEvent` (the no-op collector) and what the collector itself adds.",
            "",
            *table(["collector", "µs per page, median", "extra vs off µs/page", "extra µs per evaluation"], irows),
            "",
        ]
        prof = inproc.get("profile")
        if prof:
            fm_rows = prof["flagmetrics"]["functions_us_per_page"]
            noop_rows = dict(prof["no-op collector"]["functions_us_per_page"])
            out += [
                f"Where the flagmetrics page's time goes (cProfile of {prof['pages']:,} pages; cumulative µs per "
                "page under the profiler, which inflates every Python call, so compare the rows with each "
                "other, not with the timings above):",
                "",
                *table(
                    ["function", "flagmetrics page µs", "no-op collector page µs"],
                    [[name, fmt(v, 1), fmt(noop_rows.get(name), 1)] for name, v in fm_rows],
                ),
                "",
            ]
    fig, (ax1, ax2) = charts.plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    names = list(s)
    ax1.barh(names, [s[n]["rps_median"] for n in names], color="#9dc")
    ax2.barh(names, [s[n]["cpu_us_per_request_median"] for n in names], color="#dc9")
    for i, n in enumerate(names):
        ax1.plot(s[n]["rps_all"], [i] * len(s[n]["rps_all"]), "k.", ms=4)
        ax2.plot(s[n]["cpu_us_per_request_all"], [i] * len(s[n]["cpu_us_per_request_all"]), "k.", ms=4)
    ax1.axvline(
        off["rps_median"] * (1 - TARGET_E2E_PCT / 100),
        color="k",
        ls="--",
        lw=1,
        label=f"off − {TARGET_E2E_PCT:g}%",
    )
    ax2.axvline(
        off["cpu_us_per_request_median"] / (1 - TARGET_E2E_PCT / 100),
        color="k",
        ls="--",
        lw=1,
        label=f"{TARGET_E2E_PCT:g}% fewer req/s",
    )
    ax1.set_xlabel("requests per second (bar: median, dots: rounds)")
    ax2.set_xlabel("worker CPU µs per request (bar: median, dots: rounds)")
    ax1.invert_yaxis()
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    out += [charts.save(fig, "e2e.png", "requests per second and CPU per request"), ""]
    return out


if __name__ == "__main__":
    main()
