"""Section 2, memory per worker: RSS growth after recording N distinct users.

One subprocess per candidate, each with a fresh PROMETHEUS_MULTIPROC_DIR. flagmetrics (each store):
every user evaluates every one of 10 flags (10 x N events); the flusher runs (default 1 s) and the
loop also awaits `exporter.flush()` every 5,000 users so the buffer (100,000 pairs by default)
never overflows. The reference keeps a set of user ids per flag and never trims it, so one flag is
enough to show its growth (N events). Growth is VmRSS after `gc.collect()` minus VmRSS after a
warm-up (series created, files mapped, store connected); VmHWM gives the peak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import time
from datetime import UTC, datetime
from typing import Any

from benchmarks._common import (
    FLAG_VARIANTS,
    PYTHON,
    clean_env,
    counter_total,
    emit,
    log,
    now_iso,
    proc_status_kb,
    redis_server,
    require_multiprocess_env,
    run_json_concurrently,
    started_exporter,
    temp_dir,
)
from benchmarks.page import NAMES, Charts, Lines, fmt, met, provenance, table
from benchmarks.targets import TARGET_MEMORY_MB

CANDIDATES = ("flagmetrics-redis", "flagmetrics-local", "reference")
FLUSH_EVERY_USERS = 5_000
WARMUP_USERS = 2_000  # fewer in a smoke run: a fifth of the users


def _settle() -> tuple[int, int]:
    gc.collect()
    return proc_status_kb("VmRSS"), proc_status_kb("VmHWM")


async def _measure(candidate: str, users: int, flags: int, redis_url: str | None) -> dict[str, Any]:
    from litestar_flags.analytics.models import FlagEvaluationEvent
    from litestar_flags.types import EvaluationReason

    exporter: Any
    if candidate.startswith("flagmetrics"):
        exporter = await started_exporter(candidate, redis_url, key_prefix=f"mem{os.getpid()}")
    else:
        from litestar_flags.analytics.exporters.prometheus import PrometheusExporter as Reference

        exporter = Reference()
    flagmetrics = candidate.startswith("flagmetrics")
    now = datetime.now(UTC)
    # One event object per (flag, variant), its targeting key set per user: the benchmark itself
    # allocates nothing that outlives one evaluation, so RSS growth is the exporter's.
    events = [
        [
            FlagEvaluationEvent(
                timestamp=now,
                flag_key=f"flag_{f:02d}",
                value=True,
                reason=EvaluationReason.SPLIT,
                variant=variant,
                targeting_key=None,
                context_attributes={},
                evaluation_duration_ms=0.25,
            )
            for variant in FLAG_VARIANTS[f % len(FLAG_VARIANTS)]
        ]
        for f in range(flags)
    ]
    record = exporter.record

    async def run_users(first: int, last: int) -> None:
        for i in range(first, last):
            user = f"user-{i:08d}"
            for per_flag in events:
                event = per_flag[i % len(per_flag)]
                event.targeting_key = user
                await record(event)
            if flagmetrics and (i + 1) % FLUSH_EVERY_USERS == 0:
                await exporter.flush()

    warm_last = min(WARMUP_USERS, users // 5)
    await run_users(0, warm_last)
    if flagmetrics:
        await exporter.flush()
    await asyncio.sleep(0.2)
    base_rss, base_hwm = _settle()
    checkpoints: list[tuple[int, int]] = [(warm_last, 0)]
    step = max(users // 10, 1)
    started = time.perf_counter()
    done = warm_last
    while done < users:
        upto = min(done + step, users)
        await run_users(done, upto)
        done = upto
        if flagmetrics:
            await exporter.flush()
        rss, _ = _settle()
        checkpoints.append((done, rss - base_rss))
    elapsed = time.perf_counter() - started
    if flagmetrics:
        await exporter.flush()
        await asyncio.sleep(1.2)  # one more tick of the background flusher
    final_rss, final_hwm = _settle()
    result: dict[str, Any] = {
        "candidate": candidate,
        "users": users,
        "flags": flags,
        "events": users * flags,
        "baseline_rss_kb": base_rss,
        "final_rss_kb": final_rss,
        "growth_kb": final_rss - base_rss,
        "peak_growth_kb": final_hwm - base_rss,
        "baseline_hwm_kb": base_hwm,
        "checkpoints": checkpoints,
        "seconds": elapsed,
    }
    if flagmetrics:
        snapshot = await exporter.fleet_snapshot()
        result["dropped"] = counter_total(exporter.metrics.dropped_events)
        result["estimated_users"] = (
            {k: v.unique_users for k, v in snapshot.flags.items()} if snapshot is not None else None
        )
        await exporter.close()
    else:
        result["tracked_users"] = {k: len(v) for k, v in exporter._unique_users.items()}
    return result


TITLE = "2. Memory per worker"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    """Run the three candidates at once (memory does not depend on CPU share); return the results."""
    users = 5_000 if quick else 1_000_000
    with redis_server() as redis, contextlib.ExitStack() as stack:
        jobs = {}
        for candidate in CANDIDATES:
            directory = stack.enter_context(temp_dir("mem"))
            flags = 1 if candidate == "reference" else 10
            log(f"memory: {candidate}, {users:,} users x {flags} flags")
            jobs[candidate] = (
                [
                    PYTHON,
                    "-m",
                    "benchmarks.memory",
                    "--worker",
                    candidate,
                    "--users",
                    str(users),
                    "--flags",
                    str(flags),
                    "--redis-url",
                    redis.url,
                ],
                clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            )
        results = run_json_concurrently(jobs, timeout_s=120 if quick else 900)
    for candidate, result in results.items():
        log(f"memory: {candidate} grew {result['growth_kb'] / 1024:.1f} MB")
    return {"section": "memory", "date": now_iso(), "quick": quick, "candidates": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=CANDIDATES, required=True)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--flags", type=int, default=10)
    parser.add_argument("--redis-url")
    args = parser.parse_args(argv)
    require_multiprocess_env()
    emit(asyncio.run(_measure(args.worker, args.users, args.flags, args.redis_url)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    c = data["candidates"]
    rows = []
    for key in ("flagmetrics-redis", "flagmetrics-local", "reference"):
        r = c[key]
        extra = f"dropped {r['dropped']:.0f}" if "dropped" in r else f"set sizes {r.get('tracked_users')}"
        rows.append(
            [
                NAMES[key],
                f"{r['users']:,} × {r['flags']}",
                f"{r['events']:,}",
                fmt(r["growth_kb"] / 1024, 1),
                fmt(r["peak_growth_kb"] / 1024, 1),
                fmt(r["baseline_rss_kb"] / 1024, 1),
                f"{r['seconds']:.0f}",
                extra,
            ]
        )
    out = [
        provenance(data),
        "",
        "RSS growth of one worker process (VmRSS after `gc.collect()`, minus VmRSS after a warm-up of "
        "2,000 users); *peak* is VmHWM minus the same baseline. flagmetrics: every user evaluates each of "
        "10 flags; the flusher runs and the loop also flushes every 5,000 users, so the buffer never "
        "overflows. The reference is run with 1 flag: its per-flag user sets grow linearly and are never "
        "trimmed, so 10 flags would be 10× the figure shown. The three run at the same time.",
        "",
        *table(
            [
                "candidate",
                "users × flags",
                "events",
                "RSS growth MiB",
                "peak growth MiB",
                "baseline MiB",
                "seconds",
                "check",
            ],
            rows,
        ),
        "",
    ]
    for key in ("flagmetrics-redis", "flagmetrics-local"):
        growth = c[key]["growth_kb"] / 1024
        verdicts.append(
            [
                f"memory, {NAMES[key]}: ≤ {TARGET_MEMORY_MB} MB growth after {c[key]['users']:,} users × 10 flags",
                f"{growth:.1f} MiB (peak {c[key]['peak_growth_kb'] / 1024:.1f} MiB); reference "
                f"{c['reference']['growth_kb'] / 1024:.0f} MiB for "
                f"{c['reference']['users']:,} users × 1 flag",
                met(growth <= TARGET_MEMORY_MB),
            ]
        )
    fig, ax = charts.plt.subplots(figsize=(7, 3.6))
    for key, color in (("flagmetrics-redis", "#2a7"), ("flagmetrics-local", "#27a"), ("reference", "#c55")):
        pts = c[key]["checkpoints"]
        ax.plot(
            [p[0] for p in pts],
            [p[1] / 1024 for p in pts],
            marker="o",
            ms=3,
            color=color,
            label=f"{NAMES[key].split(' (')[0]} ({c[key]['flags']} flag{'s' if c[key]['flags'] > 1 else ''})",
        )
    ax.axhline(TARGET_MEMORY_MB, color="k", ls="--", lw=1, label=f"target {TARGET_MEMORY_MB} MB")
    ax.set_xlabel("distinct users recorded")
    ax.set_ylabel("RSS growth, MiB")
    ax.legend(fontsize=8)
    out += [charts.save(fig, "memory.png", "RSS growth vs users"), ""]
    return out


if __name__ == "__main__":
    main()
