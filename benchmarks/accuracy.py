"""Section 6, accuracy: unique-user estimates against the truth, for each store.

Everything goes through the real path: litestar-flags events into `await exporter.record()`,
`await exporter.flush()` every 50,000 events (the flusher also runs), then the estimate read back
with `await exporter.fleet_snapshot()` as a scrape would. One subprocess per store, with a fresh
PROMETHEUS_MULTIPROC_DIR (and key prefix for Redis). Each trial uses its own flag and its own user
ids. One more case per store checks the fleet merge: two exporters (two writers, as two workers)
each record 60% of 100,000 users, overlapping by 20,000, so the truth is 100,000 and a sum would be
120,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from benchmarks._common import (
    PYTHON,
    clean_env,
    counter_total,
    emit,
    log,
    now_iso,
    redis_server,
    require_multiprocess_env,
    run_json_concurrently,
    temp_dir,
)
from benchmarks.page import Charts, Lines, fmt, provenance, table
from benchmarks.targets import HLL_STANDARD_ERROR_PCT

FLUSH_EVERY = 50_000


async def _measure(store_name: str, redis_url: str | None, sizes: list[tuple[int, int]]) -> dict[str, Any]:
    from litestar_flags.analytics.models import FlagEvaluationEvent
    from litestar_flags.types import EvaluationReason
    from prometheus_client import CollectorRegistry

    from flagmetrics import LocalStore, PrometheusExporter, RedisStore

    def make_store() -> Any:
        if store_name == "redis":
            assert redis_url
            return RedisStore.from_url(redis_url, key_prefix=f"acc{os.getpid()}")
        return LocalStore(os.environ["PROMETHEUS_MULTIPROC_DIR"])

    now = datetime.now(UTC)

    def event(flag_key: str) -> Any:
        return FlagEvaluationEvent(
            timestamp=now,
            flag_key=flag_key,
            value=True,
            reason=EvaluationReason.SPLIT,
            variant="on",
            targeting_key=None,
            context_attributes={},
            evaluation_duration_ms=0.2,
        )

    async def feed(exporter: Any, flag_key: str, users: range, tag: str) -> None:
        ev = event(flag_key)
        for n, i in enumerate(users):
            ev.targeting_key = f"{tag}-user-{i}"
            await exporter.record(ev)
            if n % FLUSH_EVERY == FLUSH_EVERY - 1:
                await exporter.flush()
        await exporter.flush()

    exporter = PrometheusExporter(CollectorRegistry(), store=make_store(), max_flags=1000)
    await exporter.start()
    trials: list[dict[str, Any]] = []
    for size, count in sizes:
        for t in range(count):
            flag_key = f"acc_{size}_{t}"
            await feed(exporter, flag_key, range(size), f"{store_name}{size}t{t}")
            trials.append({"truth": size, "trial": t, "flag_key": flag_key})
    snapshot = await exporter.fleet_snapshot()
    assert snapshot is not None
    for trial in trials:
        estimate = snapshot.flags[trial["flag_key"]].unique_users
        trial["estimate"] = estimate
        trial["error_pct"] = (estimate - trial["truth"]) / trial["truth"] * 100

    # Two writers sharing the store, overlapping users: the estimate must be the union.
    second = PrometheusExporter(CollectorRegistry(), store=make_store(), max_flags=1000)
    await second.start()
    first_users, second_users = range(0, 60_000), range(40_000, 100_000)
    await feed(exporter, "acc_merge", first_users, "merge")
    await feed(second, "acc_merge", second_users, "merge")
    truth = len(set(first_users) | set(second_users))
    snapshot = await exporter.fleet_snapshot()
    assert snapshot is not None
    merged = snapshot.flags["acc_merge"]
    merge = {
        "truth": truth,
        "sum_of_workers": len(first_users) + len(second_users),
        "estimate": merged.unique_users,
        "error_pct": (merged.unique_users - truth) / truth * 100,
        "evaluations": merged.total,
    }
    dropped = counter_total(exporter.metrics.dropped_events)
    await second.close()
    await exporter.close()
    return {"store": store_name, "trials": trials, "merge": merge, "dropped": dropped}


TITLE = "6. Accuracy of unique users"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    """Both stores at once, each in its own subprocess (accuracy does not depend on CPU share)."""
    sizes = [(10_000, 1)] if quick else [(10_000, 5), (100_000, 3), (1_000_000, 1)]
    with redis_server() as redis, temp_dir("acc-redis") as redis_dir, temp_dir("acc-local") as local_dir:
        log(f"accuracy: both stores, (users, trials) {sizes}, plus the two-writer merge")
        jobs = {
            store: (
                [
                    PYTHON,
                    "-m",
                    "benchmarks.accuracy",
                    "--worker",
                    store,
                    "--redis-url",
                    redis.url,
                    "--sizes",
                    ",".join(f"{s}x{c}" for s, c in sizes),
                ],
                clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            )
            for store, directory in (("redis", redis_dir), ("local", local_dir))
        }
        stores = run_json_concurrently(jobs, timeout_s=600)
    return {"section": "accuracy", "date": now_iso(), "quick": quick, "stores": stores}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=("redis", "local"), required=True)
    parser.add_argument("--redis-url")
    parser.add_argument("--sizes", default="10000x5,100000x3,1000000x1")
    args = parser.parse_args(argv)
    require_multiprocess_env()
    sizes = [(int(a), int(b)) for a, b in (item.split("x") for item in args.sizes.split(","))]
    emit(asyncio.run(_measure(args.worker, args.redis_url, sizes)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    rows = []
    worst = 0.0
    for store, r in data["stores"].items():
        by_size: dict[int, list[dict[str, Any]]] = {}
        for t in r["trials"]:
            by_size.setdefault(t["truth"], []).append(t)
        for size, trials in sorted(by_size.items()):
            errs = [t["error_pct"] for t in trials]
            worst = max(worst, max(abs(e) for e in errs))
            rows.append(
                [
                    "RedisStore" if store == "redis" else "LocalStore",
                    f"{size:,}",
                    str(len(trials)),
                    ", ".join(f"{t['estimate']:,}" for t in trials),
                    ", ".join(f"{e:+.2f}" for e in errs),
                    fmt(sum(abs(e) for e in errs) / len(errs)),
                ]
            )
        m = r["merge"]
        rows.append(
            [
                "RedisStore" if store == "redis" else "LocalStore",
                f"{m['truth']:,} (2 writers, {m['sum_of_workers'] - m['truth']:,} shared)",
                "1",
                f"{m['estimate']:,} (sum of workers: {m['sum_of_workers']:,})",
                f"{m['error_pct']:+.2f}",
                fmt(abs(m["error_pct"])),
            ]
        )
    out = [
        provenance(data),
        "",
        "Distinct users recorded through `await exporter.record()` + `await exporter.flush()` and read back "
        "with `await exporter.fleet_snapshot()`, each trial with its own flag and user ids. Both stores keep "
        f"a HyperLogLog with 2^14 registers: standard error {HLL_STANDARD_ERROR_PCT:.2f}%, so about 95% of "
        f"estimates fall within ±{2 * HLL_STANDARD_ERROR_PCT:.1f}%. No target was set for this section.",
        "",
        *table(["store", "distinct users", "trials", "estimates", "error %", "mean |error| %"], rows),
        "",
    ]
    verdicts.append(
        [
            "accuracy (no target; HLL standard error 0.81%)",
            f"worst |error| {worst:.2f}% over all single-writer trials",
            "–",
        ]
    )
    fig, ax = charts.plt.subplots(figsize=(7, 3.4))
    for store, marker, color in (("redis", "o", "#2a7"), ("local", "s", "#27a")):
        trials = data["stores"][store]["trials"]
        ax.plot(
            [t["truth"] for t in trials],
            [t["error_pct"] for t in trials],
            marker,
            color=color,
            label="RedisStore" if store == "redis" else "LocalStore",
            alpha=0.8,
        )
    for k in (1, 2):
        ax.axhspan(-k * HLL_STANDARD_ERROR_PCT, k * HLL_STANDARD_ERROR_PCT, color="#ccc", alpha=0.25)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("distinct users")
    ax.set_ylabel("estimate error %")
    ax.legend(fontsize=8)
    out += [charts.save(fig, "accuracy.png", "unique-user estimate error"), ""]
    return out


if __name__ == "__main__":
    main()
