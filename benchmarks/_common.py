"""Shared helpers: statistics, synthetic events, results files, and our own redis-server (from tests.processes).

Nothing here imports prometheus_client: the orchestrator (`python -m benchmarks`) never does, so
each measuring subprocess can set PROMETHEUS_MULTIPROC_DIR before its first import.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.processes import REPO, RedisServer, clean_environ, stop_process

BENCH = REPO / "benchmarks"
PYTHON = sys.executable

# -- statistics ------------------------------------------------------------------------------------


def require_multiprocess_env() -> None:
    """Exit unless PROMETHEUS_MULTIPROC_DIR names a directory and prometheus_client is not yet imported."""
    if not Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or "/nonexistent").is_dir():
        raise SystemExit("run me with PROMETHEUS_MULTIPROC_DIR set to an existing directory")
    if "prometheus_client" in sys.modules:
        raise SystemExit("prometheus_client was imported before the multiprocess directory was set")


def counter_total(counter: Any) -> float:
    """The sum of a prometheus_client counter's `_total` samples, over all its labels."""
    return float(sum(s.value for fam in counter.collect() for s in fam.samples if s.name.endswith("_total")))


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def p90(values: Sequence[float]) -> float:
    """90th percentile (linear interpolation between closest ranks)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = 0.9 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


# -- processes -------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without flagmetrics/prometheus settings, plus `extra`, with the repo importable.

    String hashing is seeded, so that runs iterate sets and dicts of strings in the same order.
    """
    return clean_environ(PYTHONHASHSEED="0", **extra)


def run_json(args: Sequence[str], *, env: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
    """Run a measuring subprocess (with a deadline) and return the JSON object on its last stdout line."""
    try:
        done = subprocess.run(
            list(args),
            cwd=REPO,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(args)} did not finish within {timeout_s} s") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited with {done.returncode}:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
        )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{' '.join(args)} printed no result:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def emit(result: Mapping[str, Any]) -> None:
    """What a measuring subprocess ends with: its result as one JSON line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed afterwards, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=f"flagmetrics-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start our own redis-server and stop it by its pid afterwards."""
    with temp_dir("redis") as directory:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        server = RedisServer(binary=binary, directory=directory, persist=False)
        try:
            server.start()  # inside: a server that never answers PING is stopped too
            yield server
        finally:
            server.stop()


# -- synthetic evaluation events ---------------------------------------------------------------------

FLAG_VARIANTS: tuple[tuple[str, ...], ...] = (
    ("on", "off"),
    ("blue", "green", "red"),
    ("bm25", "neural"),
    ("a", "b", "c", "d"),
    ("control", "treatment"),
    ("v1", "v2", "v3"),
    ("on", "off"),
    ("small", "large"),
    ("x", "y", "z"),
    ("enabled", "disabled"),
)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One synthetic evaluation, independent of any library so every candidate gets the same stream."""

    flag_key: str
    reason: str
    variant: str | None
    user: str
    duration_ms: float


def event_specs(
    count: int, *, flags: int = 10, users: int = 12_000, error_share: float = 0.02, seed: int = 1
) -> list[EventSpec]:
    """A realistic stream: `flags` flags with a few variants, reasons incl. ERROR, users cycling.

    Users cycle through `users` distinct keys in order (each key comes back every `users` events);
    flags are chosen with a skew (the first flags are evaluated more); durations are 0.01-2 ms.
    """
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(flags)]
    flag_ids = rng.choices(range(flags), weights=weights, k=count)
    specs: list[EventSpec] = []
    for i, f in enumerate(flag_ids):
        variants = FLAG_VARIANTS[f % len(FLAG_VARIANTS)]
        roll = rng.random()
        if roll < error_share:
            reason, variant = "ERROR", None
        elif roll < 0.35:
            reason, variant = "SPLIT", rng.choice(variants)
        elif roll < 0.6:
            reason, variant = "TARGETING_MATCH", variants[0]
        elif roll < 0.85:
            reason, variant = "STATIC", variants[-1]
        elif roll < 0.95:
            reason, variant = "DEFAULT", None
        else:
            reason, variant = "DISABLED", None
        specs.append(
            EventSpec(
                flag_key=f"flag_{f:02d}",
                reason=reason,
                variant=variant,
                user=f"user-{i % users:06d}",
                duration_ms=rng.uniform(0.01, 2.0),
            )
        )
    return specs


def to_litestar_events(specs: Sequence[EventSpec]) -> list[Any]:
    """litestar-flags `FlagEvaluationEvent`s for the specs (imports litestar_flags)."""
    from litestar_flags.analytics.models import FlagEvaluationEvent
    from litestar_flags.types import EvaluationReason

    now = datetime.now(UTC)
    return [
        FlagEvaluationEvent(
            timestamp=now,
            flag_key=s.flag_key,
            value=s.variant is not None,
            reason=EvaluationReason(s.reason),
            variant=s.variant,
            targeting_key=s.user,
            context_attributes={},
            evaluation_duration_ms=s.duration_ms,
        )
        for s in specs
    ]


# -- process memory ------------------------------------------------------------------------------------


async def started_exporter(candidate: str, redis_url: str | None, key_prefix: str) -> Any:
    """A running flagmetrics exporter in this (multiprocess) worker: `flagmetrics-redis` or `flagmetrics-local`."""
    from flagmetrics import LocalStore, PrometheusExporter, RedisStore

    store: Any
    if candidate == "flagmetrics-redis":
        assert redis_url
        store = RedisStore.from_url(redis_url, key_prefix=key_prefix)
    else:
        store = LocalStore(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    exporter = PrometheusExporter(store=store)
    await exporter.start()
    return exporter


def proc_status_kb(field_name: str = "VmRSS") -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


# -- results -------------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_result(results_dir: Path, section: str, data: Mapping[str, Any]) -> Path:
    """Write a section's results atomically (results/<section>.json)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    target = results_dir / f"{section}.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, target)
    return target


def read_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every section's latest results in `results_dir`."""
    found: dict[str, dict[str, Any]] = {}
    if results_dir.is_dir():
        for path in sorted(results_dir.glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                found[path.stem] = json.loads(path.read_text())
    return found


def log(message: str) -> None:
    """Progress on stderr (stdout of subprocesses carries their JSON result)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


class LineWorker:
    """A measuring subprocess driven by lines on stdin, answering one JSON line on stdout per request."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], name: str) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            list(args),
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def request(self, line: str | None, timeout_s: float) -> dict[str, Any]:
        """Send `line` (if any) and wait at most `timeout_s` for the JSON answer."""
        import select

        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        answer = self.proc.stdout.readline() if ready else ""
        if not answer:
            raise RuntimeError(f"{self.name} gave no answer within {timeout_s} s:\n{self.stderr()[-4000:]}")
        result: dict[str, Any] = json.loads(answer)
        return result

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        stop_process(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()


def run_json_concurrently(
    jobs: Mapping[str, tuple[Sequence[str], Mapping[str, str]]], *, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Run several measuring subprocesses at once (with one deadline); return each one's JSON result."""
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        procs: dict[str, tuple[subprocess.Popen[str], Any, Any]] = {}
        for name, (args, env) in jobs.items():
            out = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
            err = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
            proc = subprocess.Popen(list(args), cwd=REPO, env=dict(env), stdout=out, stderr=err, text=True)
            stack.callback(stop_process, proc)
            procs[name] = (proc, out, err)
        deadline = time.monotonic() + timeout_s
        for name, (proc, out, err) in procs.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{name} did not finish within {timeout_s} s") from exc
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{err.read()[-4000:]}")
            lines = [line for line in out.read().splitlines() if line.strip()]
            if not lines:
                raise RuntimeError(f"{name} printed no result:\n{err.read()[-4000:]}")
            results[name] = json.loads(lines[-1])
    return results
