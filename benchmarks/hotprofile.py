"""Hot-path profile: where the time of `await record(event)` goes, and what a flush costs per user.

One subprocess (fresh PROMETHEUS_MULTIPROC_DIR), flagmetrics exporter with a LocalStore, flusher
started. cProfile is enabled only around the record loops (about 1,000,000 `await record(event)`
in rounds of 20,000 events of the hot-path stream); the explicit flush after each round runs with
the profiler off. cProfile adds a fixed cost per Python call, so shares of tiny functions are
inflated; the unprofiled microseconds per event are measured too, in the same process.

The flush path is broken down with flagmetrics' own functions on real data (20,000 distinct user
ids over 10 flags, as a round leaves them): hashing (`buffer.digest_users`), the LocalStore sketch
update (`sketch.add`), a whole `LocalStore.push` and a whole `RedisStore.push` of the same batch.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from typing import Any

from benchmarks._common import (
    PYTHON,
    clean_env,
    emit,
    event_specs,
    log,
    median,
    now_iso,
    redis_server,
    require_multiprocess_env,
    run_json,
    temp_dir,
    to_litestar_events,
)
from benchmarks.page import Charts, Lines, fmt, provenance, table

ROUND = 20_000


def _where(filename: str) -> str:
    if "/flagmetrics/" in filename:
        return "flagmetrics"
    if "/prometheus_client/" in filename:
        return "prometheus_client"
    if filename.startswith("~") or filename == "":
        return "builtins"
    if "/benchmarks/" in filename:
        return "benchmark loop"
    return "other"


def _short(filename: str) -> str:
    for marker in ("/src/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _summarise(profile: cProfile.Profile, calls: int, top: int = 18) -> dict[str, Any]:
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows: list[dict[str, Any]] = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({name})" if filename != "~" else name,
                "where": _where(filename),
                "ncalls": ncalls,
                "calls_per_event": ncalls / calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
                "share_pct": tottime / total * 100 if total else 0.0,
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    # Group own time by package, charging built-ins (getpid, struct.pack, lock exits...) to their callers.
    groups: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, callers) in raw.items():
        if filename == "~" and callers:
            spent = sum(c[2] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                where = _where(caller[0])
                groups[where] = groups.get(where, 0.0) + tottime * c[2] / spent / total * 100
        else:
            where = _where(filename)
            groups[where] = groups.get(where, 0.0) + tottime / total * 100
    return {"total_s": total, "top": rows[:top], "by_package_pct": groups}


async def _measure(events_total: int, redis_url: str) -> dict[str, Any]:
    from flagmetrics import LocalStore, PrometheusExporter, RedisStore, sketch
    from flagmetrics.buffer import digest_users
    from flagmetrics.stores.base import Batch, FlagDelta

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    events = to_litestar_events(event_specs(3 * ROUND, users=12_000))
    rounds = [events[i : i + ROUND] for i in range(0, len(events), ROUND)]
    exporter = PrometheusExporter(store=LocalStore(directory))
    await exporter.start()
    record = exporter.record
    sleep = asyncio.sleep
    for event in rounds[0]:  # warm-up: series created, files mapped
        await record(event)
    await exporter.flush()

    async def loop(batch: list[Any]) -> None:
        for i in range(0, len(batch), 100):
            for event in batch[i : i + 100]:
                await record(event)
            await sleep(0)

    # Unprofiled, in turns with the profiled rounds below: microseconds per event.
    plain: list[float] = []
    profile = cProfile.Profile()
    profiled_events = 0
    n = 0
    while profiled_events < events_total:
        batch = rounds[n % len(rounds)]
        n += 1
        t0 = time.perf_counter_ns()
        await loop(batch)
        plain.append((time.perf_counter_ns() - t0) / 1e3 / len(batch))
        await exporter.flush()
        profile.enable()
        await loop(batch)
        profile.disable()
        profiled_events += len(batch)
        await exporter.flush()
    await exporter.close()
    summary = _summarise(profile, profiled_events)

    # The flush path, piece by piece, on one round's worth of distinct users.
    users = [f"user-{i:06d}" for i in range(ROUND)]
    per_flag = {f"flag_{f:02d}": users[f::10] for f in range(10)}
    t0 = time.perf_counter_ns()
    digests = {k: digest_users(v, b"") for k, v in per_flag.items()}
    hash_us = (time.perf_counter_ns() - t0) / 1e3 / ROUND
    registers = bytearray(sketch.REGISTERS)
    histogram = [0] * sketch.HISTOGRAM_SIZE
    histogram[0] = sketch.REGISTERS
    t0 = time.perf_counter_ns()
    for d in digests.values():
        sketch.add(registers, histogram, d)
    sketch_us = (time.perf_counter_ns() - t0) / 1e3 / ROUND
    batch_flags = {k: FlagDelta(total=len(v), errors=0, members=digests[k]) for k, v in per_flag.items()}
    pushes: dict[str, list[float]] = {"local": [], "redis": []}
    local = LocalStore(directory)
    redis = RedisStore.from_url(redis_url, key_prefix="profile")
    for seq in range(1, 6):
        delivered = Batch(writer="bench-profile", seq=seq, flags=batch_flags)
        t0 = time.perf_counter_ns()
        await local.push(delivered)
        pushes["local"].append((time.perf_counter_ns() - t0) / 1e3 / ROUND)
        t0 = time.perf_counter_ns()
        await redis.push(delivered)
        pushes["redis"].append((time.perf_counter_ns() - t0) / 1e3 / ROUND)
    await local.close()
    await redis.close()
    # The windows: a batch whose users are new to the bucket, then the same users again (another seq).
    windowed = LocalStore(directory)
    for seq in range(1, 6):
        now = time.time()
        new = {k: digest_users(v, b"round %d" % seq) for k, v in per_flag.items()}
        first = Batch("bench-windows", 2 * seq - 1, {k: FlagDelta(len(d), 0, d, now) for k, d in new.items()})
        again = Batch("bench-windows", 2 * seq, {k: FlagDelta(len(d), 0, d, now) for k, d in new.items()})
        for name, delivered in (("windows-new", first), ("windows-again", again)):
            t0 = time.perf_counter_ns()
            await windowed.push(delivered)
            pushes.setdefault(name, []).append((time.perf_counter_ns() - t0) / 1e3 / ROUND)
    await windowed.close()
    return {
        "profiled_events": profiled_events,
        "plain_us_median": median(plain),
        "profile": summary,
        "flush_breakdown_us_per_user": [
            ["`buffer.digest_users` (BLAKE2b; runs in `Buffer.cut`, on the event loop)", hash_us],
            ["`sketch.add` alone (the LocalStore register update)", sketch_us],
            ["`LocalStore.push` (thread, directory lock, `sketch.add`; no windows)", median(pushes["local"])],
            [
                "`LocalStore.push` with the 3 default windows, users new to the quantum (a row each)",
                median(pushes["windows-new"]),
            ],
            [
                "`LocalStore.push` with the 3 default windows, the same users again in the quantum",
                median(pushes["windows-again"]),
            ],
            ["`RedisStore.push` (argument list + one EVALSHA round trip)", median(pushes["redis"])],
        ],
    }


TITLE = "Hot-path profile"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    events_total = 20_000 if quick else 1_000_000
    with redis_server() as redis, temp_dir("prof") as directory:
        log(f"profile: cProfile over {events_total:,} record() calls")
        out = run_json(
            [
                PYTHON,
                "-m",
                "benchmarks.hotprofile",
                "--worker",
                "--events",
                str(events_total),
                "--redis-url",
                redis.url,
            ],
            env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            timeout_s=600,
        )
    return {"section": "profile", "date": now_iso(), "quick": quick, **out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    require_multiprocess_env()
    emit(asyncio.run(_measure(args.events, args.redis_url)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    p = data["profile"]
    rows = [[fmt(r["share_pct"], 1), fmt(r["calls_per_event"], 2), r["where"], f"`{r['function']}`"] for r in p["top"]]
    groups = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(p["by_package_pct"].items(), key=lambda x: -x[1]))
    brows = [[k, fmt(v, 3)] for k, v in data["flush_breakdown_us_per_user"]]
    return [
        provenance(data),
        "",
        f"cProfile over {data['profiled_events']:,} `await record(event)` calls "
        "(LocalStore, flusher running, "
        "flushes outside the profile), the hot-path event stream. Unprofiled, in turns in the same process: "
        f"**{data['plain_us_median']:.2f} µs/event** (median of rounds). Shares are of the profiled own time "
        "(tottime); cProfile's per-call cost inflates small functions.",
        "",
        f"By package (built-ins charged to their callers): {groups}.",
        "",
        *table(["share %", "calls / event", "package", "function"], rows),
        "",
        "### Flush path, per distinct user id",
        "",
        "One round's buffer (20,000 distinct user ids over 10 flags) through flagmetrics' own functions:",
        "",
        *table(["step", "µs per user id"], brows),
        "",
    ]


if __name__ == "__main__":
    main()
