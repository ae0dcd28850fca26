"""Section 3, scrape time: live workers x flags, and dead workers with and without compaction.

Worker files come from real processes: a "fleet" subprocess (PROMETHEUS_MULTIPROC_DIR set before
prometheus_client is imported, no metric created in it) forks one child per worker; each child builds
a flagmetrics exporter with a `LocalStore` on the directory, records evaluations for every flag
(3 variants under SPLIT, TARGETING_MATCH, DEFAULT and, for every fifth flag, ERROR), flushes, and then
stays alive until told to quit (live workers) or exits at once without compaction (dead workers).

A separate "scraper" subprocess with the same directory then times, interleaved, over repeats:
  (a) prometheus_client alone: fresh CollectorRegistry + MultiProcessCollector + generate_latest;
  (b) flagmetrics `render_snapshot` with the LocalStore snapshot (directory lock included), and the
      full `await render(exporter)` (snapshot read + render in a thread);
  (c) the fleet gauges alone: `await store.snapshot()` + writing the gauges' text, for the
      LocalStore and for a RedisStore filled with the same flags.
The scraper itself creates one small counter file in the directory, as the worker answering a
scrape would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    PYTHON,
    LineWorker,
    clean_env,
    emit,
    log,
    median,
    now_iso,
    redis_server,
    require_multiprocess_env,
    run_json,
    temp_dir,
)
from benchmarks.page import Charts, Lines, fmt, met, provenance, table
from benchmarks.targets import TARGET_DEAD_RATIO, TARGET_LOCAL_FLEET_MS, TARGET_REDIS_FLEET_MS

VARIANTS = ("blue", "green", "red")

# -- the fleet: forked worker processes that write real metric files --------------------------------


def _flag_events(flags: int, worker: int) -> list[Any]:
    from litestar_flags.analytics.models import FlagEvaluationEvent
    from litestar_flags.types import EvaluationReason

    now = datetime.now(UTC)
    events = []
    for f in range(flags):
        key = f"flag_{f:04d}"
        shapes: list[tuple[EvaluationReason, str | None]] = [(EvaluationReason.SPLIT, v) for v in VARIANTS] + [
            (EvaluationReason.TARGETING_MATCH, VARIANTS[0]),
            (EvaluationReason.DEFAULT, None),
        ]
        if f % 5 == 0:
            shapes.append((EvaluationReason.ERROR, None))
        for n, (reason, variant) in enumerate(shapes):
            events.append(
                FlagEvaluationEvent(
                    timestamp=now,
                    flag_key=key,
                    value=variant,
                    reason=reason,
                    variant=variant,
                    targeting_key=f"w{worker}-user-{(f * 7 + n) % 50}",
                    context_attributes={},
                    evaluation_duration_ms=0.05 + 0.3 * n,
                )
            )
    return events


async def _record_all(directory: str, flags: int, worker: int) -> None:
    from flagmetrics import LocalStore, PrometheusExporter

    exporter = PrometheusExporter(store=LocalStore(directory), max_flags=max(flags, 1000))
    for event in _flag_events(flags, worker):
        await exporter.record(event)
    await exporter.flush()
    await exporter.close()


def _child(directory: str, flags: int, worker: int, hold: int | None, ready: int, close: Sequence[int]) -> None:
    """Body of a forked worker; never returns."""
    code = 0
    try:
        for fd in close:
            os.close(fd)
        asyncio.run(_record_all(directory, flags, worker))
        os.write(ready, b"1")
        if hold is not None:
            while os.read(hold, 1):  # EOF when the fleet closes the write end
                pass
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _fleet(workers: int, flags: int) -> None:
    """Fork `workers` live workers, then serve `dead N` and `quit` lines on stdin."""
    import litestar_flags.analytics.models  # noqa: F401
    import prometheus_client  # noqa: F401 - imported before forking so that children start fast

    import flagmetrics.exporter  # noqa: F401

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    live: list[int] = []
    for w in range(workers):
        pid = os.fork()
        if pid == 0:
            _child(directory, flags, w, hold_r, ready_w, (hold_w, ready_r))
        live.append(pid)
    _wait_ready(ready_r, workers, timeout_s=120)
    emit({"live": live})
    next_worker = workers
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "dead":
            count = int(words[1])
            dead: list[int] = []
            started = time.perf_counter()
            pending: list[int] = []
            for _ in range(count):
                pid = os.fork()
                if pid == 0:
                    _child(directory, flags, next_worker, None, ready_w, (hold_w, hold_r, ready_r))
                next_worker += 1
                pending.append(pid)
                if len(pending) >= 2:  # two at a time: the machine has two cores
                    _reap(pending.pop(0), timeout_s=60)
                dead.append(pid)
            for pid in pending:
                _reap(pid, timeout_s=60)
            _wait_ready(ready_r, count, timeout_s=10)
            emit({"dead": dead, "seconds": time.perf_counter() - started})
        elif words and words[0] == "quit":
            break
    os.close(hold_w)
    for pid in live:
        _reap(pid, timeout_s=30)
    emit({"done": True})


def _wait_ready(fd: int, count: int, timeout_s: float) -> None:
    import select

    deadline = time.monotonic() + timeout_s
    got = 0
    while got < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise SystemExit(f"only {got} of {count} workers recorded within {timeout_s} s")
        got += len(os.read(fd, count - got))


def _reap(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"worker {pid} failed with status {status}")
            return
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise SystemExit(f"worker {pid} did not exit within {timeout_s} s")
        time.sleep(0.005)


# -- the scraper ------------------------------------------------------------------------------------------


def _min_repeats(budget_s: float) -> int:
    return 5 if budget_s >= 2 else 3


def _time_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


async def _atime_ms(coro_fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter_ns()
    value = await coro_fn()
    return (time.perf_counter_ns() - t0) / 1e6, value


def _pc_alone(directory: str) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return bytes(generate_latest(registry))


def _fleet_only(snapshot: Any, prefix: str) -> bytes:
    """The fleet gauges as a worker's scrape writes them."""
    from flagmetrics.collector import fleet_text

    return fleet_text(snapshot, prefix, openmetrics=False).encode()


async def _fill_redis(store: Any, flags: int, writers: int) -> None:
    """Give the Redis store the state `writers` workers would have flushed (real digests, real push)."""
    from flagmetrics.buffer import digest_users
    from flagmetrics.stores.base import Batch, FlagDelta

    if len((await store.snapshot()).flags) == flags:
        return
    for w in range(writers):
        deltas = {
            f"flag_{f:04d}": FlagDelta(
                total=6,
                errors=1 if f % 5 == 0 else 0,
                members=digest_users([f"w{w}-user-{(f * 7 + n) % 50}" for n in range(6)], b""),
            )
            for f in range(flags)
        }
        await store.push(Batch(writer=f"bench-filler-{w}", seq=1, flags=deltas))


async def _scrape_live(redis_url: str, flags: int, budget_s: float) -> dict[str, Any]:
    from flagmetrics import LocalStore, PrometheusExporter, RedisStore
    from flagmetrics.exposition import render, render_snapshot

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    local = LocalStore(directory)
    redis = RedisStore.from_url(redis_url, key_prefix=f"scrape{flags}", timeout_s=5.0)
    await _fill_redis(redis, flags, writers=4)
    exporter = PrometheusExporter(store=local, scrape_timeout_s=30.0)
    snapshot = await exporter.fleet_snapshot()
    assert snapshot is not None
    # Warm-up and the number of repeats that fits in the budget.
    first = _time_ms(lambda: _pc_alone(directory))
    repeats = int(min(max(math.ceil(budget_s * 1000 / 3 / max(first, 0.1)), _min_repeats(budget_s)), 25))
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "pc_alone",
            "fm_render_snapshot",
            "fm_render",
            "fleet_local",
            "fleet_redis",
            "snapshot_local",
            "snapshot_redis",
            "fleet_render",
        )
    }
    for _ in range(repeats):
        times["pc_alone"].append(_time_ms(lambda: _pc_alone(directory)))
        times["fm_render_snapshot"].append(_time_ms(lambda: render_snapshot(exporter, snapshot)))
        ms, _ = await _atime_ms(lambda: render(exporter))
        times["fm_render"].append(ms)
        ms_snap, local_snapshot = await _atime_ms(local.snapshot)
        ms_render = _time_ms(lambda: _fleet_only(local_snapshot, ""))  # noqa: B023
        times["snapshot_local"].append(ms_snap)
        times["fleet_render"].append(ms_render)
        times["fleet_local"].append(ms_snap + ms_render)
        ms_snap, redis_snapshot = await _atime_ms(redis.snapshot)
        ms_render = _time_ms(lambda: _fleet_only(redis_snapshot, ""))  # noqa: B023
        times["snapshot_redis"].append(ms_snap)
        times["fleet_redis"].append(ms_snap + ms_render)
    body, _ = render_snapshot(exporter, snapshot)
    checks = {
        "pc_alone_bytes": len(_pc_alone(directory)),
        "fm_bytes": len(body),
        "unique_users_lines": body.count(b"\nfeature_flag_unique_users{"),
        "local_flags": len(snapshot.flags),
        "redis_flags": len((await redis.snapshot()).flags),
        "files": len(os.listdir(directory)),
    }
    await exporter.close()
    await redis.close()
    return {
        "repeats": repeats,
        "times_ms": times,
        "median_ms": {k: median(v) for k, v in times.items()},
        "checks": checks,
    }


async def _scrape_dead(dead: list[int], budget_s: float) -> dict[str, Any]:
    from prometheus_client.multiprocess import mark_process_dead

    from flagmetrics import LocalStore, PrometheusExporter
    from flagmetrics.exposition import render_snapshot
    from flagmetrics.multiprocess import compact

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    exporter = PrometheusExporter(store=LocalStore(directory), scrape_timeout_s=30.0)
    snapshot = await exporter.fleet_snapshot()
    assert snapshot is not None

    def measure(label: str) -> dict[str, Any]:
        first = _time_ms(lambda: _pc_alone(directory))
        least = 3 if first > 1000 else _min_repeats(budget_s)  # seconds-long scrapes: 3 repeats
        repeats = int(min(max(math.ceil(budget_s * 1000 / 4 / max(first, 0.1)), least), 25))
        pc, fm = [], []
        for _ in range(repeats):
            pc.append(_time_ms(lambda: _pc_alone(directory)))
            fm.append(_time_ms(lambda: render_snapshot(exporter, snapshot)))
        return {
            "label": label,
            "repeats": repeats,
            "pc_alone_ms": pc,
            "fm_render_snapshot_ms": fm,
            "files": len([n for n in os.listdir(directory) if n.endswith(".db")]),
        }

    before = measure("dead files in place")
    body_before = _pc_alone(directory)
    t0 = time.perf_counter()
    folded = 0
    for pid in dead:
        mark_process_dead(pid, directory)
        folded += compact(directory, pid)
    compact_s = time.perf_counter() - t0
    after = measure("after compact()")
    body_after = _pc_alone(directory)
    await exporter.close()
    return {
        "before": before,
        "after": after,
        "compact_seconds": compact_s,
        "folded_files": folded,
        "same_values": _samples(body_before) == _samples(body_after),
    }


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, summed per name and labels (to check compaction keeps the values)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = round(out.get(key, 0.0) + s.value, 6)
    return out


# -- the orchestrator -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fleet_running(directory: Path, workers: int, flags: int) -> Any:
    worker = LineWorker(
        [PYTHON, "-m", "benchmarks.scrape", "--fleet", "--workers", str(workers), "--flags", str(flags)],
        clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
        name=f"fleet of {workers} workers x {flags} flags",
    )
    try:
        worker.request(None, timeout_s=180)  # the live workers have recorded and flushed
        yield worker
        with contextlib.suppress(RuntimeError):
            worker.request("quit", timeout_s=60)
    finally:
        worker.close()


TITLE = "3. Scrape time"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    worker_grid: tuple[int, ...]
    flag_grid: tuple[int, ...]
    dead_grid: tuple[int, ...]
    if quick:
        worker_grid, flag_grid, dead_grid = (2,), (10,), (0, 4)
    else:
        worker_grid, flag_grid, dead_grid = (1, 4, 16), (10, 100, 1000), (0, 100, 500)
    budget_s = 0.3 if quick else 8.0
    live: list[dict[str, Any]] = []
    dead_rows: list[dict[str, Any]] = []
    with redis_server() as redis:
        for flags in flag_grid:
            for workers in worker_grid:
                with temp_dir("scrape") as directory, _fleet_running(directory, workers, flags):
                    log(f"scrape: {workers} live workers x {flags} flags")
                    out = run_json(
                        [
                            PYTHON,
                            "-m",
                            "benchmarks.scrape",
                            "--measure-live",
                            "--redis-url",
                            redis.url,
                            "--flags",
                            str(flags),
                            "--budget",
                            str(budget_s),
                        ],
                        env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
                        timeout_s=600,
                    )
                live.append({"workers": workers, "flags": flags, **out})
        for dead in dead_grid:
            with temp_dir("dead") as directory, _fleet_running(directory, 4, 100) as fleet:
                log(f"scrape: 4 live workers x 100 flags + {dead} dead workers")
                pids: list[int] = []
                made_s = 0.0
                if dead:
                    answer = fleet.request(f"dead {dead}", timeout_s=600)
                    pids, made_s = answer["dead"], answer["seconds"]
                pid_file = directory / "bench-dead-pids.txt"
                pid_file.write_text(" ".join(map(str, pids)))
                out = run_json(
                    [PYTHON, "-m", "benchmarks.scrape", "--measure-dead", str(pid_file), "--budget", str(budget_s)],
                    env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
                    timeout_s=600,
                )
            dead_rows.append({"dead": dead, "fork_seconds": made_s, **out})
        redis_version = redis.version()
    return {
        "section": "scrape",
        "date": now_iso(),
        "quick": quick,
        "live": live,
        "dead": dead_rows,
        "redis_version": redis_version,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fleet", action="store_true")
    mode.add_argument("--measure-live", action="store_true")
    mode.add_argument("--measure-dead", metavar="PID_FILE")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--flags", type=int, default=10)
    parser.add_argument("--redis-url")
    parser.add_argument("--budget", type=float, default=8.0)
    args = parser.parse_args(argv)
    require_multiprocess_env()
    if args.fleet:
        _fleet(args.workers, args.flags)
    elif args.measure_live:
        emit(asyncio.run(_scrape_live(args.redis_url, args.flags, args.budget)))
    else:
        pids = [int(p) for p in Path(args.measure_dead).read_text().split()]
        Path(args.measure_dead).unlink()
        emit(asyncio.run(_scrape_dead(pids, args.budget)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    live = data["live"]
    rows = []
    for r in live:
        m = r["median_ms"]
        rows.append(
            [
                str(r["workers"]),
                str(r["flags"]),
                fmt(m["pc_alone"], 1),
                fmt(m["fm_render_snapshot"], 1),
                fmt(m["fm_render"], 1),
                fmt(m["fm_render_snapshot"] - m["pc_alone"], 1),
                fmt(m["fleet_local"], 2),
                fmt(m["fleet_redis"], 2),
                fmt(m["snapshot_redis"], 2),
                str(r["repeats"]),
                f"{r['checks']['unique_users_lines']}/{r['flags']}",
            ]
        )
    out = [
        provenance(data),
        "",
        "### Live workers × flags",
        "",
        "Worker files written by real forked worker processes that stay alive during the timing; each "
        "records every flag with 3 SPLIT variants, TARGETING_MATCH, DEFAULT and (every fifth flag) ERROR, "
        "then flushes to the LocalStore. Medians over the repeats (interleaved), milliseconds. "
        "*(a)* prometheus_client alone = fresh CollectorRegistry + MultiProcessCollector + generate_latest; "
        "*(b)* `render_snapshot` = what flagmetrics' scrape does in its thread (same merge + fleet gauges, "
        "under the directory lock); *render* = the whole `await render(exporter)` (snapshot read + thread); "
        "*(c)* fleet gauges alone = `await store.snapshot()` + writing the gauges' text (the Redis store "
        "holds the same flags, 4 writers).",
        "",
        *table(
            [
                "live workers",
                "flags",
                "(a) prometheus_client ms",
                "(b) render_snapshot ms",
                "render() ms",
                "(b) − (a) ms",
                "(c) fleet, LocalStore ms",
                "(c) fleet, RedisStore ms",
                "of which Redis snapshot ms",
                "repeats",
                "unique_users lines",
            ],
            rows,
        ),
        "",
    ]
    redis_1000 = [r["median_ms"]["fleet_redis"] for r in live if r["flags"] == max(x["flags"] for x in live)]
    local_16_100 = [
        r["median_ms"]["fleet_local"]
        for r in live
        if r["workers"] == max(x["workers"] for x in live) and r["flags"] == 100
    ]
    max_flags = max(x["flags"] for x in live)
    verdicts.append(
        [
            f"scrape: fleet gauges add ≤ {TARGET_REDIS_FLEET_MS:g} ms at {max_flags} flags, RedisStore",
            f"{max(redis_1000):.2f} ms (worst over worker counts; medians {', '.join(f'{v:.2f}' for v in redis_1000)})",
            met(max(redis_1000) <= TARGET_REDIS_FLEET_MS),
        ]
    )
    if local_16_100:
        verdicts.append(
            [
                f"scrape: fleet gauges add ≤ {TARGET_LOCAL_FLEET_MS:g} ms at "
                f"{max(x['workers'] for x in live)} workers × 100 flags, LocalStore",
                f"{local_16_100[0]:.2f} ms",
                met(local_16_100[0] <= TARGET_LOCAL_FLEET_MS),
            ]
        )
    dead = data["dead"]
    drows = []
    for r in dead:
        b, a = r["before"], r["after"]
        per = r["compact_seconds"] / r["dead"] * 1000 if r["dead"] else None
        drows.append(
            [
                str(r["dead"]),
                str(b["files"]),
                fmt(median(b["pc_alone_ms"]), 1),
                fmt(median(b["fm_render_snapshot_ms"]), 1),
                fmt(r["compact_seconds"] * 1000, 0),
                fmt(per, 1),
                str(a["files"]),
                fmt(median(a["fm_render_snapshot_ms"]), 1),
                fmt(median(a["pc_alone_ms"]), 1),
                "yes" if r["same_values"] else "**NO**",
            ]
        )
    fm0 = median(dead[0]["after"]["fm_render_snapshot_ms"])
    fm_last = median(dead[-1]["after"]["fm_render_snapshot_ms"])
    pc_last = median(dead[-1]["before"]["pc_alone_ms"])
    verdicts.append(
        [
            f"scrape: flat in dead workers (flagmetrics at {dead[-1]['dead']} dead ≤ {TARGET_DEAD_RATIO}× at 0 dead)",
            f"{fm_last:.1f} ms vs {fm0:.1f} ms = {fm_last / fm0:.2f}× (prometheus_client alone with the dead "
            f"files in place: {pc_last:.0f} ms = {pc_last / median(dead[0]['before']['pc_alone_ms']):.1f}×)",
            met(fm_last / fm0 <= TARGET_DEAD_RATIO),
        ]
    )
    out += [
        "### Dead workers (4 live workers × 100 flags)",
        "",
        "Dead workers are forked processes that recorded all 100 flags and exited without compaction. "
        "prometheus_client alone leaves their files in place; flagmetrics runs what gunicorn's "
        "`child_exit` hook runs — `mark_process_dead(pid)` then "
        "`flagmetrics.multiprocess.compact(path, pid)` "
        "for each dead pid — and then scrapes. *values unchanged* compares every sample of a "
        "prometheus_client scrape before and after compaction.",
        "",
        *table(
            [
                "dead workers",
                ".db files",
                "prometheus_client ms (dead in place)",
                "render_snapshot ms (before compact)",
                "compact() all, ms",
                "compact() per worker, ms",
                ".db files after",
                "flagmetrics render_snapshot ms (after compact)",
                "prometheus_client ms (after compact)",
                "values unchanged",
            ],
            drows,
        ),
        "",
    ]
    fig, (ax1, ax2) = charts.plt.subplots(1, 2, figsize=(10, 3.8))
    for workers, color in zip(sorted({r["workers"] for r in live}), ("#2a7", "#27a", "#a72", "#a27"), strict=False):
        pts = sorted((r["flags"], r["median_ms"]) for r in live if r["workers"] == workers)
        ax1.plot(
            [p[0] for p in pts],
            [p[1]["pc_alone"] for p in pts],
            ls="--",
            marker="o",
            ms=3,
            color=color,
            label=f"{workers} w: prometheus_client",
        )
        ax1.plot(
            [p[0] for p in pts],
            [p[1]["fm_render_snapshot"] for p in pts],
            marker="s",
            ms=3,
            color=color,
            label=f"{workers} w: flagmetrics",
        )
        ax1.plot(
            [p[0] for p in pts],
            [p[1]["fleet_redis"] for p in pts],
            ls=":",
            marker="^",
            ms=3,
            color=color,
            label=f"{workers} w: fleet gauges (Redis)",
        )
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("flags")
    ax1.set_ylabel("scrape ms (median)")
    ax1.legend(fontsize=6)
    xs = [r["dead"] for r in dead]
    ax2.plot(
        xs,
        [median(r["before"]["pc_alone_ms"]) for r in dead],
        marker="o",
        color="#c55",
        label="prometheus_client, dead files kept",
    )
    ax2.plot(
        xs,
        [median(r["after"]["fm_render_snapshot_ms"]) for r in dead],
        marker="s",
        color="#2a7",
        label="flagmetrics after compact()",
    )
    ax2.set_xlabel("dead workers (4 live × 100 flags)")
    ax2.set_ylabel("scrape ms (median)")
    ax2.legend(fontsize=8)
    out += [charts.save(fig, "scrape.png", "scrape time"), ""]
    return out


if __name__ == "__main__":
    main()
