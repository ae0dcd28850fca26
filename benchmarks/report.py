"""Build docs/benchmarks.md from the saved per-section results: the header, the targets, each section's part."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks._common import read_results
from benchmarks.page import Charts, Lines, table
from benchmarks.sections import SECTIONS, module
from tests.processes import REPO

PACKAGES = (
    "flagmetrics",
    "prometheus_client",
    "redis",
    "hiredis",
    "litestar",
    "litestar-flags",
    "gunicorn",
    "uvicorn",
    "uvicorn-worker",
    "matplotlib",
)


def _first_line(args: list[str]) -> str:
    if shutil.which(args[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_info() -> dict[str, Any]:
    """CPU, cores, Python, package versions, binaries and the source revision, as of now."""
    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    redis_line = _first_line(["redis-server", "--version"])
    match = re.search(r"v=(\S+)", redis_line)
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "examples", "gunicorn.conf.py"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "redis_server": match.group(1) if match else redis_line,
        "wrk": _first_line(["wrk", "--version"]).split(" [")[0],
        "git": f"{head}{' + uncommitted changes in src/' if dirty else ''}",
        "executable": sys.executable,
    }


def _commands_line(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    """The command(s) that produced the sections on the page, with their dates."""
    ran = {k: v for k, v in results.items() if k in SECTIONS}
    commands = {v.get("command") for v in ran.values()}
    if len(commands) == 1:
        first = min(v.get("date", "") for v in ran.values())
        return f"- **Command:** `{commands.pop()}` (every section below; first section finished {first})"
    parts = [f"{key}: `{v.get('command')}` ({v.get('date')})" for key, v in ran.items()]
    return "- **Commands:** " + "; ".join(parts) + f" — machine facts as of {machine['date']}"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write(results_dir: Path, out: Path, img_dir: Path) -> None:
    """Write the page from every saved section (missing sections are listed as not run)."""
    results = read_results(results_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = Charts(img_dir, out.parent)
    machine = results.get("machine", machine_info())
    verdicts: list[list[str]] = []
    body: Lines = []
    for key in SECTIONS:
        section = module(key)
        body += [f"## {section.TITLE}", ""]
        if key in results:
            try:
                body += section.render(results[key], charts, verdicts)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                body += [f"_Results in {key}.json could not be rendered: {exc!r}._", ""]
        elif f"{key}.failed" in results:
            body += [
                "_This section failed in its last run:_",
                "",
                "```",
                results[f"{key}.failed"]["error"].strip()[-3000:],
                "```",
                "",
            ]
        else:
            body += [
                f"_Not run yet: `python -m benchmarks --only {key}`._",
                "",
            ]
    pk = machine["packages"]
    head: Lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks` (see [benchmarks/README.md](../benchmarks/README.md)); do not "
        f"edit by hand. Every figure below comes from the JSON files in `{_shown(results_dir)}/`.",
        "",
        _commands_line(results, machine),
        f"- **Machine:** {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM, "
        f"Linux {machine['kernel']} — shared and noisy, so compare the ratios measured side by "
        "side in one run (section 1 relates it to the baseline machine of the targets)",
        f"- **Software:** {machine['python']}; prometheus_client {pk['prometheus_client']}, redis-py "
        f"{pk['redis']}, hiredis {pk['hiredis']}, redis-server {machine['redis_server']}, litestar "
        f"{pk['litestar']}, litestar-flags {pk['litestar-flags']}, gunicorn {pk['gunicorn']}, uvicorn "
        f"{pk['uvicorn']}, uvicorn-worker {pk['uvicorn-worker']}, {machine['wrk']}, matplotlib "
        f"{pk['matplotlib']}",
        f"- **Source:** flagmetrics {pk['flagmetrics']} at git {machine['git']}",
        "",
        "## Targets",
        "",
        *table(["target", "measured", "verdict"], verdicts),
        "",
    ]
    out.write_text("\n".join(head + body).rstrip() + "\n")
