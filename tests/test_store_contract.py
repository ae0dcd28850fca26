"""The contract every fleet store keeps, run against each implementation.

A new store joins by one line in `STORES`: a name and a function that builds it (and tells what it
holds, for the check that no raw user id is ever stored).
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from flagmetrics.stores import LocalStore, RedisStore
from flagmetrics.stores.base import Batch, FlagDelta, Pin, Snapshot, Store, WindowStats
from tests.helpers import UNICODE_KEY, batch, redis_contents, users
from tests.processes import RedisCluster, RedisServer

RAW_ID = b"raw-user-id-7f3a@example.com"
WINDOWS = "20s,1h"


class Clock:
    """A settable clock for the stores' windows, from the real time on (Redis expires keys by its own)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class StoreUnderTest:
    """A store, and a way to read every byte it holds."""

    store: Store
    contents: Callable[[], Awaitable[bytes]]


def local_directory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    def read() -> bytes:
        return b"".join(Path(name).read_bytes() for name in sorted(glob.glob(os.path.join(tmp_path, "*"))))

    async def contents() -> bytes:
        return await asyncio.to_thread(read)

    return StoreUnderTest(LocalStore(str(tmp_path), windows=WINDOWS, clock=request.getfixturevalue("clock")), contents)


def local_memory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    store = LocalStore(None, windows=WINDOWS, clock=request.getfixturevalue("clock"))

    async def contents() -> bytes:
        return b"".join(bytes(region.buffer) for region in store._files.values())

    return StoreUnderTest(store, contents)


def redis_fake(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    client = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer())
    store = RedisStore(client, windows=WINDOWS, clock=request.getfixturevalue("clock"))
    return StoreUnderTest(store, lambda: redis_contents(store.client))


def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    server: RedisServer = request.getfixturevalue("redis_server")
    store = RedisStore.from_url(server.url, windows=WINDOWS)
    store._clock = request.getfixturevalue("clock")
    return StoreUnderTest(store, lambda: redis_contents(store.client))


def redis_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    prefix: str = request.getfixturevalue("cluster_prefix")
    store = RedisStore.from_url(cluster.url, cluster=True, key_prefix=prefix, windows=WINDOWS)
    store._clock = request.getfixturevalue("clock")

    async def contents() -> bytes:
        found = []
        for node in cluster.master_nodes():
            client = aioredis.Redis.from_url(node.url)
            try:
                found.append(await redis_contents(client, match=f"{{{prefix}:*"))
            finally:
                await client.aclose()
        return b"\n".join(found)

    return StoreUnderTest(store, contents)


STORES = [
    pytest.param(local_directory, id="local-directory"),
    pytest.param(local_memory, id="local-memory"),
    pytest.param(redis_fake, id="redis-fakeredis"),
    pytest.param(redis_server, id="redis-server", marks=pytest.mark.redis),
    pytest.param(redis_cluster, id="redis-cluster", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORES)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    """Each store implementation in turn."""
    make: Callable[[pytest.FixtureRequest, Path], StoreUnderTest] = request.param
    return make(request, tmp_path)


def run(subject: StoreUnderTest, scenario: Callable[[Store], Awaitable[Any]]) -> Any:
    """Run `scenario` against the store on a fresh loop, then close the store."""

    async def main() -> Any:
        try:
            return await scenario(subject.store)
        finally:
            await subject.store.close()

    return asyncio.run(main())


def figures(snapshot: Snapshot) -> dict[str, tuple[int, int]]:
    return {key: (stats.total, stats.errors) for key, stats in snapshot.flags.items()}


def pushed(*batches: Batch) -> Callable[[Store], Awaitable[Snapshot]]:
    """A scenario that pushes `batches` in order, then reads a snapshot."""

    async def scenario(store: Store) -> Snapshot:
        for each in batches:
            await store.push(each)
        return await store.snapshot()

    return scenario


def test_an_empty_store_has_no_flags(subject: StoreUnderTest) -> None:
    assert run(subject, lambda store: store.snapshot()).flags == {}


def test_totals_and_errors_are_exact(subject: StoreUnderTest) -> None:
    snapshot = run(subject, pushed(batch(1, {"a": FlagDelta(1234, 56, users(0, 100)), "b": FlagDelta(7, 0)})))
    assert figures(snapshot) == {"a": (1234, 56), "b": (7, 0)}
    assert snapshot.flags["a"].error_rate == 56 / 1234
    assert snapshot.flags["b"].error_rate == 0.0


def test_unique_users_are_within_2_percent(subject: StoreUnderTest) -> None:
    snapshot = run(subject, pushed(batch(1, {"a": FlagDelta(10_000, 0, users(0, 10_000))})))
    assert abs(snapshot.flags["a"].unique_users - 10_000) <= 200


def test_a_batch_of_30_000_users_of_one_flag_counts_them_all(subject: StoreUnderTest) -> None:
    snapshot = run(subject, pushed(batch(1, {"a": FlagDelta(30_000, 0, users(0, 30_000))})))
    assert abs(snapshot.flags["a"].unique_users - 30_000) <= 600


def test_figures_add_up_and_never_decrease_across_pushes(subject: StoreUnderTest) -> None:
    async def scenario(store: Store) -> list[tuple[int, int, int]]:
        seen = []
        for seq in range(1, 6):
            await store.push(batch(seq, {"a": FlagDelta(10, 1, users(seq * 100, seq * 100 + 100))}))
            stats = (await store.snapshot()).flags["a"]
            seen.append((stats.total, stats.errors, stats.unique_users))
        return seen

    seen = run(subject, scenario)
    assert [(total, errors) for total, errors, _ in seen] == [(10 * n, n) for n in range(1, 6)]
    assert [users for _, _, users in seen] == sorted(users for _, _, users in seen)


def test_a_flag_with_no_evaluation_and_no_pin_is_not_reported(subject: StoreUnderTest) -> None:
    snapshot = run(subject, pushed(batch(1, {"a": FlagDelta(1, 0), "nothing": FlagDelta(0, 0)})))
    assert set(snapshot.flags) == {"a"}


def test_the_same_batch_delivered_twice_is_applied_once(subject: StoreUnderTest) -> None:
    again = batch(1, {"a": FlagDelta(10, 2, users(0, 10))})
    snapshot = run(subject, pushed(again, again))
    assert figures(snapshot) == {"a": (10, 2)}
    assert snapshot.flags["a"].unique_users == 10


def test_an_older_seq_of_a_writer_is_ignored(subject: StoreUnderTest) -> None:
    snapshot = run(subject, pushed(batch(2, {"a": FlagDelta(1, 0)}), batch(1, {"a": FlagDelta(5, 0)})))
    assert figures(snapshot) == {"a": (1, 0)}


def test_the_same_seq_of_another_writer_is_applied(subject: StoreUnderTest) -> None:
    first = batch(1, {"a": FlagDelta(1, 0)}, writer="host-1:10:aa")
    second = batch(1, {"a": FlagDelta(2, 1)}, writer="host-2:10:bb")
    assert figures(run(subject, pushed(first, second))) == {"a": (3, 1)}


def test_a_pin_replaces_the_computed_figures_and_a_pinned_flag_is_reported(subject: StoreUnderTest) -> None:
    snapshot = run(
        subject,
        pushed(
            batch(1, {"a": FlagDelta(10, 2, users(0, 50))}),
            batch(2, {}, {"a": Pin(unique_users=7, error_rate=0.5), "pinned-only": Pin(3, 0.25)}),
        ),
    )
    a, pinned = snapshot.flags["a"], snapshot.flags["pinned-only"]
    assert (a.total, a.errors, a.unique_users, a.error_rate) == (10, 2, 7, 0.5)
    assert (pinned.total, pinned.unique_users, pinned.error_rate) == (0, 3, 0.25)


def test_reset_of_one_flag_clears_it_and_its_pin_and_keeps_the_others(subject: StoreUnderTest) -> None:
    async def scenario(store: Store) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50)), "b": FlagDelta(1, 0)}, {"a": Pin(7, 0.5)}))
        await store.reset("a")
        cleared = await store.snapshot()
        await store.push(batch(2, {"a": FlagDelta(4, 1, users(100, 120))}))
        return cleared, await store.snapshot()

    cleared, again = run(subject, scenario)
    assert figures(cleared) == {"b": (1, 0)}
    stats = again.flags["a"]  # from nothing: neither the pin nor the 50 earlier users are left
    assert (stats.total, stats.errors, stats.unique_users, stats.pinned_error_rate) == (4, 1, 20, None)


def test_reset_of_every_flag_clears_them_all(subject: StoreUnderTest) -> None:
    async def scenario(store: Store) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(3, 1, users(0, 3)), "b": FlagDelta(1, 1)}, {"c": Pin(4, 0.5)}))
        await store.reset()
        cleared = await store.snapshot()
        await store.push(batch(2, {"a": FlagDelta(1, 0, users(0, 1))}))
        return cleared, await store.snapshot()

    cleared, again = run(subject, scenario)
    assert cleared.flags == {}
    assert figures(again) == {"a": (1, 0)}
    assert again.flags["a"].unique_users == 1


def test_a_200_character_non_ascii_flag_key_round_trips(subject: StoreUnderTest) -> None:
    snapshot = run(subject, pushed(batch(1, {UNICODE_KEY: FlagDelta(3, 1, users(0, 3))})))
    assert figures(snapshot) == {UNICODE_KEY: (3, 1)}


def test_flag_keys_with_braces_colons_and_spaces_are_kept_apart(subject: StoreUnderTest) -> None:
    keys = ["{a}", "a{b}c", "{", "}", "a:b", "a", "b", "x y", "ключ", "flags", "f:a"]
    deltas = {key: FlagDelta(n + 1, n % 2, users(n * 10, n * 10 + n + 1)) for n, key in enumerate(keys)}
    snapshot = run(subject, pushed(batch(1, deltas)))
    assert figures(snapshot) == {key: (delta.total, delta.errors) for key, delta in deltas.items()}
    assert {key: stats.unique_users for key, stats in snapshot.flags.items()} == {
        key: len(delta.members) for key, delta in deltas.items()
    }


def test_no_raw_user_id_is_ever_stored(subject: StoreUnderTest) -> None:
    """Every byte the store holds is free of the user ids; the same read finds text the store does keep."""

    async def scenario(store: Store) -> tuple[bytes, bytes]:
        await store.push(batch(1, {"a": FlagDelta(2, 0, users(0, 2))}))
        clean = await subject.contents()
        # The check can fail: a flag key is kept as it is, so one that looks like a user id is found.
        await store.push(batch(2, {RAW_ID.decode(): FlagDelta(1, 0)}))
        return clean, await subject.contents()

    clean, control = run(subject, scenario)
    assert clean
    assert b"user-0" not in clean
    assert b"user-1" not in clean
    assert RAW_ID in control


def near(value: int, expected: int) -> bool:
    """Within 2% (a HyperLogLog's count; the local store counts windows exactly)."""
    return abs(value - expected) <= max(1, expected * 0.02)


def test_windows_count_the_users_of_their_last_seconds_in_all_and_per_variant(
    subject: StoreUnderTest, clock: Clock
) -> None:
    def delta(first: int, stop: int, on: int) -> FlagDelta:
        served = {"on": users(first, first + on), "off": users(first + on, stop)}
        return FlagDelta(stop - first, 0, users(first, stop), clock.now, served)

    async def scenario(store: Store) -> list[Snapshot]:
        start = clock.now
        await store.push(batch(1, {"a": delta(0, 300, 100)}))
        first = await store.snapshot()
        clock.now = start + 30  # past the 20s window and its bucket, inside the hour
        await store.push(batch(2, {"a": delta(1000, 1200, 150)}))
        later = await store.snapshot()
        clock.now = start + 30 + 301  # a bucket of the hour later: its figure is computed again
        return [first, later, await store.snapshot()]

    first, later, hour_later = (snapshot.flags["a"] for snapshot in run(subject, scenario))
    for stats, window in ((first, "20s"), (first, "1h"), (later, "20s")):
        expected = (300, 100, 200) if stats is first else (200, 150, 50)
        figures_ = stats.windows[window]
        assert near(figures_.users, expected[0]), (window, figures_)
        assert near(figures_.variants["on"], expected[1])
        assert near(figures_.variants["off"], expected[2])
    assert near(later.unique_users, 500)
    # The hour's figure lags by at most one bucket (5 min): computed again once the next one began.
    assert later.windows["1h"].users in (first.windows["1h"].users, hour_later.windows["1h"].users)
    assert near(hour_later.windows["1h"].users, 500)
    assert near(hour_later.windows["1h"].variants["on"], 250)
    assert hour_later.windows["20s"] == WindowStats(0, hour_later.windows["20s"].variants)
    assert all(users == 0 for users in hour_later.windows["20s"].variants.values())


def test_the_last_evaluation_is_the_latest_of_every_writer(subject: StoreUnderTest, clock: Clock) -> None:
    snapshot = run(
        subject,
        pushed(
            batch(1, {"a": FlagDelta(1, 0, users(0, 1), clock.now + 5)}, writer="w1"),
            batch(1, {"a": FlagDelta(1, 0, users(1, 2), clock.now + 2)}, writer="w2"),
            batch(1, {"b": FlagDelta(1, 0)}, writer="w3"),
        ),
    )
    assert snapshot.flags["a"].last_evaluated_s == pytest.approx(clock.now + 5)
    assert snapshot.flags["b"].last_evaluated_s is None


def test_an_expected_split_is_kept_and_outlives_a_reset_that_clears_the_windows(
    subject: StoreUnderTest, clock: Clock
) -> None:
    async def scenario(store: Store) -> tuple[Snapshot, Snapshot]:
        served = {"on": users(0, 60), "off": users(60, 100)}
        split = Batch(
            "w", 1, {"a": FlagDelta(100, 0, users(0, 100), clock.now, served)}, splits={"a": {"on": 1, "off": 1}}
        )
        await store.push(split)
        before = await store.snapshot()
        await store.reset("a")
        await store.push(batch(2, {"a": FlagDelta(1, 0)}))
        return before, await store.snapshot()

    before, after = run(subject, scenario)
    assert before.flags["a"].split == {"on": 1.0, "off": 1.0}
    assert near(before.flags["a"].windows["20s"].variants["off"], 40)
    assert after.flags["a"].split == {"on": 1.0, "off": 1.0}
    assert after.flags["a"].windows["20s"].users == 0
    assert after.flags["a"].windows["1h"].users == 0
