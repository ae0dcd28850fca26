"""Section 8, trailing windows: what recent users, exposure per variant and the split check cost.

Two stores of each kind hold the same state, filled by real pushes of 4 writers (1,000 flags, 4
variants each, users of every writer in every variant): one with `FLAGMETRICS_WINDOWS=off`, one with
the default `1h,24h,7d`. In one measuring subprocess, round by round and in turns, each is read as a
scrape reads it (the store's snapshot plus writing every fleet gauge, split p-values included):
  - cached: the windows' figures were computed in the current bucket, as for all but one scrape per
    bucket;
  - 15 s later (Redis): the store's clock moved on by a scrape interval, so the flags whose bucket
    boundary passed meanwhile (each flag's boundaries have their own phase) are computed again, as
    for a scrape every 15 s;
  - computed: the cache emptied first (Redis: the groups' window caches deleted; local: the figures
    forgotten), as for the first scrape of all (and on the local store, the first scrape of each
    bucket), which unites every bucket of every window for every flag and variant.
Also measured: one flush of the whole state (4 variants' users per flag) with and without windows,
its round trips, and Redis memory per flag per window (MEMORY USAGE of its bucket keys, its variants'
and its share of the window cache).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from benchmarks._common import PYTHON, clean_env, emit, log, median, now_iso, redis_server, run_json, temp_dir
from benchmarks.page import Charts, Lines, fmt, met, paired, provenance, table
from benchmarks.targets import TARGET_WINDOWS_SCRAPE_MS

WRITERS = 4
VARIANTS = ("a", "b", "c", "d")
WINDOWS = "1h,24h,7d"
SCRAPE_INTERVAL_S = 15.0


def _batch(writer: int, flags: int, users_per_variant: int, seq: int = 1) -> Any:
    from flagmetrics.buffer import digest_users
    from flagmetrics.stores.base import Batch, FlagDelta

    now = time.time()
    deltas = {}
    for f in range(flags):
        served = {
            variant: digest_users([f"w{writer}-{f}-{variant}-{n}" for n in range(users_per_variant)], b"")
            for variant in VARIANTS
        }
        members = frozenset().union(*served.values())
        deltas[f"flag_{f:05d}"] = FlagDelta(len(members), 0, members, now, served)
    splits = {f"flag_{f:05d}": dict.fromkeys(VARIANTS, 25.0) for f in range(flags)}
    return Batch(writer=f"bench-{writer}", seq=seq, flags=deltas, splits=splits)


async def _scrape_ms(store: Any) -> float:
    from flagmetrics.collector import fleet_text

    started = time.perf_counter()
    snapshot = await store.snapshot()
    fleet_text(snapshot, "", openmetrics=False).encode()
    return (time.perf_counter() - started) * 1000


def _forget(store: Any, client: Any) -> None:
    """Empty the windows' cache, so that the next scrape computes every figure."""
    from flagmetrics.stores import LocalStore

    if isinstance(store, LocalStore):
        with sqlite3.connect(Path(store.path or "") / "flagmetrics-windows.sqlite") as db:
            db.execute("DELETE FROM computed WHERE seconds > 0")  # as when every window's bucket ends
    else:
        client.delete(*(store.layout.window_cache(group) for group in range(len(store.layout.tags))))


def _window_memory(client: Any, store: Any, flags: int) -> dict[str, float]:
    """Bytes per flag for one window: its bucket keys, its variants' bucket keys, its cache field."""
    keys = [key for key in client.scan_iter(match=f"{{{store.key_prefix}:*", count=10_000)]
    buckets = variants = index = 0
    for key in keys:
        text = key.decode()
        size = int(client.memory_usage(key, samples=0) or 0)
        if ":wb:3600:" in text:
            buckets += size
        elif ":wv:3600:" in text:
            variants += size
        elif ":wvar:" in text:
            index += size
    cache = sum(int(client.memory_usage(store.layout.window_cache(g), samples=0) or 0) for g in range(16))
    return {
        "buckets_bytes": buckets / flags,
        "variant_buckets_bytes": variants / flags,
        "cache_bytes": cache / flags / 3,
        "variant_index_bytes": index / flags,
    }


async def _measure(redis_url: str, directory: str, quick: bool) -> dict[str, Any]:
    import redis

    from flagmetrics import LocalStore, RedisStore

    flags = 100 if quick else 1000
    users_per_variant = 5 if quick else 10
    rounds = 3 if quick else 11
    client = redis.Redis.from_url(redis_url)
    stores: dict[str, Any] = {}
    for windows in ("off", WINDOWS):
        name = "windows" if windows != "off" else "none"
        stores[f"redis-{name}"] = RedisStore.from_url(redis_url, key_prefix=f"w-{name}", windows=windows, timeout_s=30)
        path = Path(directory) / name
        path.mkdir()
        stores[f"local-{name}"] = LocalStore(str(path), windows=windows, write_timeout_s=60, read_timeout_s=60)

    # One flush of the whole state per writer, timed, with and without windows.
    push_ms: dict[str, list[float]] = {name: [] for name in stores}
    for writer in range(WRITERS):
        batch = _batch(writer, flags, users_per_variant)
        for name, store in stores.items():
            started = time.perf_counter()
            await store.push(batch)
            push_ms[name].append((time.perf_counter() - started) * 1000)
    for store in stores.values():
        await _scrape_ms(store)  # connect, load the scripts, compute the windows once

    cached: dict[str, list[float]] = {name: [] for name in stores}
    computed: dict[str, list[float]] = {name: [] for name in stores if name.endswith("-windows")}
    later: list[float] = []
    shift = [0.0]
    stores["redis-windows"]._clock = lambda: time.time() + shift[0]
    for r in range(rounds):
        names = list(stores)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            cached[name].append(await _scrape_ms(stores[name]))
            if name == "redis-windows":
                shift[0] += SCRAPE_INTERVAL_S
                later.append(await _scrape_ms(stores[name]))
            if name in computed:
                _forget(stores[name], client)
                computed[name].append(await _scrape_ms(stores[name]))
    snapshot = await stores["redis-windows"].snapshot()
    sample = snapshot.flags["flag_00000"].windows["1h"]
    memory = _window_memory(client, stores["redis-windows"], flags)
    for store in stores.values():
        await store.close()
    return {
        "rounds": rounds,
        "flags": flags,
        "variants": len(VARIANTS),
        "users_per_flag": WRITERS * users_per_variant * len(VARIANTS),
        "windows": WINDOWS,
        "cached_ms": cached,
        "computed_ms": computed,
        "later_ms": later,
        "push_ms": push_ms,
        "memory": memory,
        "sample": {"users": sample.users, "variants": dict(sample.variants)},
    }


TITLE = "8. Trailing windows: recent users, exposure per variant, split checks"
"""The heading of this section on the page."""


def run(*, quick: bool) -> dict[str, Any]:
    """Start a redis-server, measure in a subprocess, stop it by its pid."""
    with redis_server() as redis, temp_dir("windows") as directory:
        log("windows: 1,000 flags x 4 variants, windows off and 1h,24h,7d, Redis and local")
        args = [PYTHON, "-m", "benchmarks.windows", "--worker", "--redis-url", redis.url, "--dir", str(directory)]
        if quick:
            args.append("--quick")
        data = run_json(args, env=clean_env(), timeout_s=900)
    return {"section": "windows", "date": now_iso(), "quick": quick, **data}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    emit(asyncio.run(_measure(args.redis_url, args.dir, args.quick)))


# -- the page ------------------------------------------------------------------------------------------


def render(data: dict[str, Any], charts: Charts, verdicts: list[list[str]]) -> Lines:
    """This section's part of docs/benchmarks.md, from its saved results; adds its rows to `verdicts`."""
    cached, computed, push = data["cached_ms"], data["computed_ms"], data["push_ms"]
    rows = []
    added: dict[str, float] = {}
    for kind, label in (("redis", "Redis (single node)"), ("local", "local store")):
        none, windows = cached[f"{kind}-none"], cached[f"{kind}-windows"]
        added[kind] = median([w - n for w, n in zip(windows, none, strict=True)])
        rows.append(
            [
                label,
                fmt(median(none)),
                fmt(median(windows)),
                fmt(added[kind]),
                fmt(paired(windows, none)),
                fmt(median(computed[f"{kind}-windows"])),
                fmt(median(push[f"{kind}-none"])),
                fmt(median(push[f"{kind}-windows"])),
            ]
        )
    scale = f"{data['flags']:,} flags × 3 windows × {data['variants']} variants"
    for kind, label in (("redis", "Redis"), ("local", "the local store")):
        verdicts.append(
            [
                f"windows add ≤ {TARGET_WINDOWS_SCRAPE_MS:g} ms to a scrape at {scale} ({label})",
                f"{added[kind]:.1f} ms (median of paired differences)",
                met(added[kind] <= TARGET_WINDOWS_SCRAPE_MS),
            ]
        )
    memory = data["memory"]
    out = [
        provenance(data),
        "",
        f"{scale}, {data['users_per_flag']} users per flag from {WRITERS} writers, an expected split on "
        f"every flag (so every scrape computes {data['flags'] * 3:,} p-values). Medians of {data['rounds']} "
        "rounds, the stores read in turn. *Scrape* is the store's snapshot plus writing every fleet gauge. "
        "*Cached*: every window's figures were computed earlier in their current bucket, by any "
        "worker or host; *computed*: none were, "
        "which unites every bucket of every window for every flag and variant (on Redis only the first "
        "scrape of all: each flag's bucket boundaries have their own phase, so a scrape computes again "
        "only the flags whose boundary passed since the last one, once for the whole fleet as the "
        "figures are kept in the store; on the local store, the first scrape of each bucket of each "
        f"window). A Redis scrape {SCRAPE_INTERVAL_S:g} s after the last one, with the flags whose "
        f"boundary passed meanwhile computed again: {fmt(median(data['later_ms']))} ms.",
        "",
        *table(
            [
                "store",
                "scrape ms, no windows",
                "scrape ms, windows (cached)",
                "added ms",
                "× (paired)",
                "scrape ms, windows computed",
                "flush ms, no windows",
                "flush ms, windows",
            ],
            rows,
        ),
        "",
        "A flush runs the same scripts with or without windows (one per group of flags it touches, in one "
        "pipeline on a single node): windows add no round trip, only work inside them (the users' "
        "digests go to each window's current bucket, and each variant's).",
        "",
        "Redis memory per flag for one window (the 1h window's bucket keys, sparse HyperLogLogs of "
        f"{data['users_per_flag']} users): "
        f"{fmt(memory['buckets_bytes'], 0)} B of the flag's buckets, "
        f"{fmt(memory['variant_buckets_bytes'], 0)} B of its variants' buckets, "
        f"{fmt(memory['cache_bytes'], 0)} B of cached figures; plus {fmt(memory['variant_index_bytes'], 0)} B "
        "per flag for its variants' index, shared by the windows. Bucket keys expire by themselves one step "
        "after their window has passed. A dense HyperLogLog is 12 KiB: a flag with thousands of users in "
        "every bucket holds up to 13 dense buckets per window and variant.",
        "",
    ]
    fig, ax = charts.plt.subplots(figsize=(7, 3.0))
    names = ["redis-none", "redis-windows", "local-none", "local-windows"]
    ax.boxplot([cached[n] for n in names], tick_labels=names, vert=False)
    ax.set_xlabel("scrape (snapshot + fleet gauges), ms")
    out += [charts.save(fig, "windows.png", "scrape cost with and without windows"), ""]
    return out


if __name__ == "__main__":
    main()
