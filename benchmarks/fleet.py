"""Section 7, fleet scale: the fleet gauges on a single Redis node and on a 3-master Redis Cluster.

One redis-server and one Redis Cluster (3 masters, 3 replicas, all on loopback) are filled by real
pushes (4 writers, each flag with users of every writer); then, in one measuring subprocess, each
configuration is read in turn, round by round: the fleet gauges of a scrape are the store's
snapshot plus writing the gauges' text (what a worker adds to its counters). Also measured:
Redis memory per flag (MEMORY USAGE of its keys, sparse and dense HyperLogLog), the scripts one
flush runs on the cluster, and the Redis CPU (used_cpu_user + used_cpu_sys) per 1,000 evaluations
delivered through an exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from typing import Any

from benchmarks._common import PYTHON, clean_env, emit, log, median, now_iso, redis_server, run_json, temp_dir
from benchmarks.page import Charts, Lines, fmt, met, paired, provenance, table
from benchmarks.targets import TARGET_CLUSTER_RATIO, TARGET_TEN_THOUSAND_FLAGS_MS
from tests.processes import RedisCluster

WRITERS = 4
USERS_PER_WRITER = 6


def _info(client: Any, section: str) -> dict[str, Any]:
    return dict(client.info(section))


async def _fill(store: Any, flags: int, users_per_writer: int = USERS_PER_WRITER) -> None:
    """The state WRITERS workers would have flushed for `flags` flags (real digests, real pushes)."""
    from flagmetrics.buffer import digest_users
    from flagmetrics.stores.base import Batch, FlagDelta

    for w in range(WRITERS):
        deltas = {
            f"flag_{f:05d}": FlagDelta(
                total=users_per_writer,
                errors=1 if f % 5 == 0 else 0,
                members=digest_users([f"w{w}-user-{f}-{n}" for n in range(users_per_writer)], b""),
                seen=time.time(),
            )
            for f in range(flags)
        }
        await store.push(Batch(writer=f"bench-fill-{w}", seq=1, flags=deltas))


async def _fleet_gauges_ms(store: Any) -> tuple[float, float, int]:
    """One scrape's fleet gauges: (snapshot ms, render ms, flags)."""
    from flagmetrics.collector import fleet_text

    started = time.perf_counter()
    snapshot = await store.snapshot()
    read = time.perf_counter()
    fleet_text(snapshot, "", openmetrics=False).encode()
    return (read - started) * 1000, (time.perf_counter() - read) * 1000, len(snapshot.flags)


def _memory_per_flag(clients: list[Any], layout: Any, flags: list[str]) -> dict[str, float]:
    """Bytes per flag by MEMORY USAGE: its HyperLogLog, and its share of its group's index and counts."""
    import redis

    def usage(key: str) -> int:
        for client in clients:
            try:
                value = client.memory_usage(key, samples=0)
            except redis.exceptions.ResponseError:  # MOVED: the key lives on another master
                continue
            if value is not None:
                return int(value)
        return 0

    users = [usage(layout.users(f)) for f in flags]
    counts = sum(usage(layout.counts(g)) for g in range(len(layout.tags)))
    index = sum(usage(layout.flags(g)) for g in range(len(layout.tags)))
    return {
        "counts_bytes": counts / len(flags),
        "users_bytes": sum(users) / len(flags),
        "index_bytes": index / len(flags),
        "total_bytes": (counts + sum(users) + index) / len(flags),
    }


def _cpu_s(clients: list[Any]) -> float:
    """CPU seconds the servers have used so far (user and system)."""
    return sum(float(_info(c, "cpu")["used_cpu_user"]) + float(_info(c, "cpu")["used_cpu_sys"]) for c in clients)


async def _measure(redis_url: str, cluster_url: str, master_urls: list[str], quick: bool) -> dict[str, Any]:
    import redis
    from prometheus_client import CollectorRegistry

    from flagmetrics import PrometheusExporter, RedisStore
    from flagmetrics.events import Evaluation

    rounds = 3 if quick else 15
    thousand, ten_thousand = (100, 1000) if quick else (1000, 10_000)
    sizes = {
        "single-1000": (redis_url, False, thousand),
        "cluster-1000": (cluster_url, True, thousand),
        "single-10000": (redis_url, False, ten_thousand),
    }
    stores = {
        name: RedisStore.from_url(url, cluster=cluster, key_prefix=f"fleet-{name}", timeout_s=10)
        for name, (url, cluster, _) in sizes.items()
    }
    for name, store in stores.items():
        await _fill(store, sizes[name][2])
        await _fleet_gauges_ms(store)  # connect and load the scripts: not part of the timing
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
    for r in range(rounds):
        order = list(stores)[r % len(stores) :] + list(stores)[: r % len(stores)]
        for name in order:
            read_ms, render_ms, flags = await _fleet_gauges_ms(stores[name])
            assert flags == sizes[name][2], (name, flags)
            samples[name].append((read_ms, render_ms))

    # The scripts one flush runs on the cluster: one per group it touches, whatever the number of flags.
    masters = [redis.Redis.from_url(url) for url in master_urls]

    def evalsha_calls() -> int:
        return sum(int(_info(c, "commandstats").get("cmdstat_evalsha", {}).get("calls", 0)) for c in masters)

    flush_scripts: dict[str, int] = {}
    cluster_store = stores["cluster-1000"]
    for flags in (3, 100, 1000):
        before = evalsha_calls()
        await _fill(cluster_store, flags, users_per_writer=1)
        flush_scripts[str(flags)] = (evalsha_calls() - before) // WRITERS

    # Memory per flag: the 1,000 sparse flags above, and 20 flags with 5,000 users each (dense).
    single = redis.Redis.from_url(redis_url)
    sparse_flags = [f"flag_{f:05d}" for f in range(sizes["single-1000"][2])]
    sparse = _memory_per_flag([single], stores["single-1000"].layout, sparse_flags)
    dense_store = RedisStore.from_url(redis_url, key_prefix="fleet-dense", timeout_s=10)
    await _fill(dense_store, 20, users_per_writer=1250)
    dense = _memory_per_flag([single], dense_store.layout, [f"flag_{f:05d}" for f in range(20)])
    await dense_store.close()

    # Redis CPU per 1,000 evaluations delivered through an exporter: 100 flags, 20,000 users.
    events = 20_000 if quick else 200_000
    cpu: dict[str, float] = {}
    for name, url, cluster, clients in (
        ("single", redis_url, False, [single]),
        ("cluster", cluster_url, True, masters),
    ):
        store = RedisStore.from_url(url, cluster=cluster, key_prefix=f"cpu-{name}", timeout_s=10)
        exporter = PrometheusExporter(CollectorRegistry(), store=store, flush_interval_s=3600)
        cpu_before = _cpu_s(clients)
        for i in range(events):
            exporter.record_sync(Evaluation(f"cpu_{i % 100}", "SPLIT", "on", f"user-{i % 20_000}", 0.2))
            if i % 10_000 == 9_999:
                await exporter.flush()
        await exporter.flush()
        cpu[name] = (_cpu_s(clients) - cpu_before) * 1e6 / (events / 1000)  # µs of Redis CPU per 1,000 evaluations
        await exporter.close()

    for store in stores.values():
        await store.close()
    return {
        "rounds": rounds,
        "flags": {name: size for name, (_, _, size) in sizes.items()},
        "samples": samples,
        "flush_scripts": flush_scripts,
        "memory": {
            "sparse": sparse,
            "dense": dense,
            "dense_users": WRITERS * 1250,
            "sparse_users": WRITERS * USERS_PER_WRITER,
        },
        "cpu_us_per_1000": cpu,
        "events_for_cpu": events,
    }


TITLE = "7. Fleet scale: Redis Cluster and 10,000 flags"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    """Start a redis-server and a Redis Cluster, measure in a subprocess, stop both by their pids."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are not installed (apt-get install redis-server)")
    with redis_server() as redis, temp_dir("cluster") as directory:
        cluster = RedisCluster(binary=server, cli=cli, directory=directory)
        cluster.start()
        try:
            log(f"fleet: a redis-server and a cluster of {len(cluster.master_nodes())} masters")
            args = [
                PYTHON,
                "-m",
                "benchmarks.fleet",
                "--worker",
                "--redis-url",
                redis.url,
                "--cluster-url",
                cluster.url,
                "--masters",
                ",".join(node.url for node in cluster.master_nodes()),
            ]
            if quick:
                args.append("--quick")
            data = run_json(args, env=clean_env(), timeout_s=900)
        finally:
            cluster.stop()
    return {"section": "fleet", "date": now_iso(), "quick": quick, **data}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--cluster-url", required=True)
    parser.add_argument("--masters", required=True, help="the URLs of the cluster's masters, comma-separated")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    emit(asyncio.run(_measure(args.redis_url, args.cluster_url, args.masters.split(","), args.quick)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    names = {
        "single-1000": "single node",
        "cluster-1000": "3-master cluster",
        "single-10000": "single node",
    }
    totals = {name: [read + render for read, render in rows] for name, rows in data["samples"].items()}
    rows = []
    for name in names:
        rows_ms = data["samples"][name]
        rows.append(
            [
                names[name],
                f"{data['flags'][name]:,}",
                fmt(median([read for read, _ in rows_ms])),
                fmt(median([render for _, render in rows_ms])),
                fmt(median(totals[name])),
                fmt(paired(totals[name], totals["single-1000"])),
            ]
        )
    ratio = paired(totals["cluster-1000"], totals["single-1000"])
    ten_thousand = median(totals["single-10000"])
    verdicts.append(
        [
            f"fleet gauges at {data['flags']['cluster-1000']:,} flags on a 3-master cluster ≤ "
            f"{TARGET_CLUSTER_RATIO:g}× the single node",
            f"{ratio:.2f}× ({median(totals['cluster-1000']):.1f} vs {median(totals['single-1000']):.1f} ms, paired)",
            met(ratio <= TARGET_CLUSTER_RATIO),
        ]
    )
    verdicts.append(
        [
            f"fleet gauges at {data['flags']['single-10000']:,} flags on a single node add ≤ "
            f"{TARGET_TEN_THOUSAND_FLAGS_MS:g} ms to a scrape",
            f"{ten_thousand:.1f} ms",
            met(ten_thousand <= TARGET_TEN_THOUSAND_FLAGS_MS),
        ]
    )
    memory = data["memory"]
    cpu = data["cpu_us_per_1000"]
    scripts = data["flush_scripts"]
    out = [
        provenance(data),
        "",
        f"The store is filled by real pushes of {WRITERS} writers; every figure is the median of "
        f"{data['rounds']} rounds, the configurations read in turn within each round. *Fleet gauges* are "
        "what a scrape adds to the workers' counters: the store's snapshot (two rounds of one script per "
        "group: in one pipeline on a single node, concurrently on the cluster) and rendering the gauges.",
        "",
        *table(
            ["Redis", "flags", "snapshot ms", "render ms", "fleet gauges ms", "× single node (paired)"],
            rows,
        ),
        "",
        "Scripts one flush runs on the cluster (one per group of flags it touches, sent at once, each to "
        "its group's master), by the number of flags in the flush: "
        + ", ".join(f"{int(flags):,} flags: {scripts[flags]}" for flags in sorted(scripts, key=int))
        + ". On a single node the same scripts go in one pipeline: one round trip.",
        "",
        *table(
            [
                "a flag with",
                "its HyperLogLog B",
                "its share of the counts hashes B",
                "of the groups' index B",
                "total B",
            ],
            [
                [
                    f"{memory[kind + '_users']:,} users ({kind})",
                    fmt(memory[kind]["users_bytes"], 0),
                    fmt(memory[kind]["counts_bytes"], 0),
                    fmt(memory[kind]["index_bytes"], 0),
                    fmt(memory[kind]["total_bytes"], 0),
                ]
                for kind in ("sparse", "dense")
            ],
        ),
        "",
        f"Redis CPU per 1,000 evaluations delivered ({data['events_for_cpu']:,} evaluations of 100 flags by "
        "20,000 users, flushed every 10,000): "
        f"{cpu['single']:.0f} µs on the single node, {cpu['cluster']:.0f} µs over the cluster's masters.",
        "",
    ]
    fig, ax = charts.plt.subplots(figsize=(7, 3.0))
    labels = [f"{names[n]}\n{data['flags'][n]:,} flags" for n in names]
    ax.boxplot([totals[n] for n in names], tick_labels=labels, vert=False)
    ax.axvline(TARGET_TEN_THOUSAND_FLAGS_MS, color="k", ls="--", lw=1, label=f"{TARGET_TEN_THOUSAND_FLAGS_MS:g} ms")
    ax.set_xlabel("fleet gauges per scrape, ms")
    ax.legend(fontsize=8)
    out += [charts.save(fig, "fleet.png", "fleet gauges per scrape"), ""]
    return out


if __name__ == "__main__":
    main()
