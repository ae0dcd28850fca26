"""`RedisStore` on a real Redis Cluster (3 masters, 3 replicas): one slot per group, no cross-slot
command, one script per group a flush touches, and the cluster client's own routing."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from redis.crc import key_slot

from flagmetrics.config import Settings
from flagmetrics.stores import default_store
from flagmetrics.stores.base import FlagDelta, Pin, Snapshot
from flagmetrics.stores.redis import GROUPS, RedisStore
from tests.helpers import UNICODE_KEY, batch, run_with, users
from tests.processes import RedisCluster

pytestmark = pytest.mark.redis

AWKWARD_KEYS = ["{a}", "a{b}c", "{", "}", "}{", "a:b", "x y", "ключ", "🚩", UNICODE_KEY, "{flagmetrics:0}:flags"]
"""Flag keys that would move a key to another slot, or look like a group's own key, if the layout let them."""


def store_of(cluster: RedisCluster, prefix: str, **kwargs: Any) -> RedisStore:
    return RedisStore.from_url(cluster.url, cluster=True, key_prefix=prefix, **kwargs)


def figures(snapshot: Snapshot) -> dict[str, tuple[int, int, int]]:
    return {key: (stats.total, stats.errors, stats.unique_users) for key, stats in snapshot.flags.items()}


def evalsha_calls(cluster: RedisCluster) -> int:
    """EVALSHA calls so far on every master (INFO commandstats)."""
    total = 0
    for node in cluster.master_nodes():
        for line in node.command("INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_evalsha:"):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


def test_awkward_flag_keys_are_kept_apart_exactly_once(redis_cluster: RedisCluster, cluster_prefix: str) -> None:
    """Braces, colons, spaces and a flag named like a group key: every flag its own figures, applied once."""
    flags = {key: FlagDelta(n + 1, n % 2, users(n * 10, n * 10 + 10)) for n, key in enumerate(AWKWARD_KEYS)}

    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, flags, {"pinned{x}": Pin(9, 0.5)}))
        await store.push(batch(1, flags))  # delivered again: applied once
        return await store.snapshot()

    snapshot = run_with(store_of(redis_cluster, cluster_prefix), scenario)
    expected = {key: (delta.total, delta.errors, 10) for key, delta in flags.items()}
    assert figures(snapshot) == {**expected, "pinned{x}": (0, 0, 9)}


def test_reset_of_one_awkward_flag_and_of_all(redis_cluster: RedisCluster, cluster_prefix: str) -> None:
    async def scenario(store: RedisStore) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {key: FlagDelta(1, 0, users(0, 3)) for key in AWKWARD_KEYS}))
        await store.reset("{a}")
        one = await store.snapshot()
        await store.reset()
        return one, await store.snapshot()

    one, none = run_with(store_of(redis_cluster, cluster_prefix), scenario)
    assert set(one.flags) == set(AWKWARD_KEYS) - {"{a}"}
    assert none.flags == {}


def test_a_flush_runs_one_script_per_group_it_touches(redis_cluster: RedisCluster, cluster_prefix: str) -> None:
    """200 flags over 16 groups: 16 scripts, whatever the number of flags; 3 flags: at most 3."""

    async def scenario(store: RedisStore) -> tuple[int, int]:
        await store.push(batch(1, {"warm-up": FlagDelta(1, 0)}))  # connects and loads the script
        before = evalsha_calls(redis_cluster)
        await store.push(batch(2, {f"flag-{n}": FlagDelta(1, 0, users(n, n + 1)) for n in range(200)}))
        many = evalsha_calls(redis_cluster) - before
        before = evalsha_calls(redis_cluster)
        await store.push(batch(3, {f"flag-{n}": FlagDelta(1, 0) for n in range(3)}))
        return many, evalsha_calls(redis_cluster) - before

    many, few = run_with(store_of(redis_cluster, cluster_prefix), scenario)
    assert many == GROUPS
    assert 1 <= few <= 3


def test_the_groups_spread_over_every_master(redis_cluster: RedisCluster, cluster_prefix: str) -> None:
    async def scenario(store: RedisStore) -> list[int]:
        await store.push(batch(1, {f"flag-{n}": FlagDelta(1, 0, users(n, n + 1)) for n in range(200)}))
        return sorted({key_slot(store.layout.flags(group).encode()) for group in range(GROUPS)})

    slots = run_with(store_of(redis_cluster, cluster_prefix), scenario)
    assert len(slots) == GROUPS
    keys_per_master = Counter(
        node.port for node in redis_cluster.master_nodes() for _ in range(int(node.command("DBSIZE").split(b":")[1]))
    )
    assert len(keys_per_master) == 3  # every master holds some group


def test_the_default_store_is_a_cluster_store_when_the_settings_say_so(
    redis_cluster: RedisCluster, cluster_prefix: str
) -> None:
    settings = Settings(redis_url=redis_cluster.url, redis_cluster=True, key_prefix=cluster_prefix)
    store = default_store(settings, None)
    assert isinstance(store, RedisStore)
    assert store.cluster

    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(2, 1, users(0, 2))}))
        return await store.snapshot()

    assert figures(run_with(store, scenario)) == {"a": (2, 1, 2)}


def test_a_unix_socket_url_cannot_name_a_cluster() -> None:
    with pytest.raises(Exception, match="redis:// or rediss://"):
        RedisStore.from_url("unix:///run/redis.sock", cluster=True)


def test_a_node_that_is_not_a_cluster_node_fails_as_a_store_error(redis_server: Any) -> None:
    """Pointed at a plain redis-server with `cluster=True`, reads fail with a StoreError, not a crash."""
    from flagmetrics.exceptions import StoreError

    with pytest.raises(StoreError):
        run_with(RedisStore.from_url(redis_server.url, cluster=True), lambda store: store.snapshot())


def test_concurrent_writers_add_up(redis_cluster: RedisCluster, cluster_prefix: str) -> None:
    """Eight writers flushing at once into the same groups: every count lands once."""

    async def scenario() -> Snapshot:
        stores = [store_of(redis_cluster, cluster_prefix) for _ in range(8)]
        try:
            await asyncio.gather(
                *(
                    store.push(batch(1, {"a": FlagDelta(5, 1, users(w * 100, w * 100 + 100))}, writer=f"w{w}"))
                    for w, store in enumerate(stores)
                )
            )
            return await stores[0].snapshot()
        finally:
            for store in stores:
                await store.close()

    snapshot = asyncio.run(scenario())
    assert (snapshot.flags["a"].total, snapshot.flags["a"].errors) == (40, 8)
    assert abs(snapshot.flags["a"].unique_users - 800) <= 16
