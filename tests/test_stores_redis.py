"""`RedisStore` against a real redis-server: exactly-once batches, bounded round trips, failures."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio.connection import AbstractConnection

from flagmetrics import PrometheusExporter, RedisStore
from flagmetrics.events import Evaluation
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.stores.base import FlagDelta, Pin, Snapshot
from tests.conftest import UNICODE_KEY, RedisServer, batch, run_with, users, wait_for

PREFIX = "fm-test"


def store_of(server: RedisServer, **kwargs: Any) -> RedisStore:
    kwargs.setdefault("key_prefix", PREFIX)
    return RedisStore.from_url(server.url, **kwargs)


def figures(snapshot: Snapshot) -> dict[str, tuple[int, int]]:
    return {key: (stats.total, stats.errors) for key, stats in snapshot.flags.items()}


def calls(client: redis.Redis, command: str) -> int:
    """Successful calls of `command` so far (INFO commandstats: calls minus failed calls)."""
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


class RoundTrips:
    """Counts the requests redis-py's asyncio connections send: one per command, one per pipeline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        send = AbstractConnection.send_packed_command

        async def counted(connection: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            await send(connection, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)


# -- figures --------------------------------------------------------------------------------------------


def test_push_then_snapshot_gives_exact_totals_and_errors(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(1234, 56, users(0, 10)), "b": FlagDelta(7, 0, users(0, 2))}))
        await store.push(batch(2, {"a": FlagDelta(6, 4, users(5, 20)), UNICODE_KEY: FlagDelta(3, 3, users(0, 1))}))
        return await store.snapshot()

    snapshot = run_with(store_of(redis_server), scenario)
    assert figures(snapshot) == {"a": (1240, 60), "b": (7, 0), UNICODE_KEY: (3, 3)}
    assert snapshot.flags["a"].error_rate == 60 / 1240


def test_unique_users_are_within_2_percent_for_10k_users(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> Snapshot:
        for seq, start in enumerate(range(0, 10_000, 2_500), 1):
            # Every user twice, in two different batches.
            await store.push(batch(seq, {"a": FlagDelta(2_500, 0, users(start, start + 2_500))}))
            await store.push(batch(seq + 100, {"a": FlagDelta(2_500, 0, users(start, start + 2_500))}))
        return await store.snapshot()

    unique = run_with(store_of(redis_server), scenario).flags["a"].unique_users
    assert abs(unique - 10_000) <= 0.02 * 10_000, unique


def test_a_large_batch_adds_every_member_to_the_hyperloglog(redis_server: RedisServer) -> None:
    # 30,000 members go to PFADD in chunks inside the script; the result must equal one plain PFADD.
    members = users(0, 30_000)
    run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(30_000, 0, members)})))
    client = redis_server.client()
    client.pfadd("scratch", *members)
    assert client.pfcount(f"{PREFIX}:hll:a") == client.pfcount("scratch")


def test_the_same_batch_pushed_twice_is_applied_once(redis_server: RedisServer) -> None:
    same = batch(1, {"a": FlagDelta(10, 2, users(0, 100))})

    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(same)
        await store.push(same)
        return await store.snapshot()

    snapshot = run_with(store_of(redis_server), scenario)
    assert figures(snapshot) == {"a": (10, 2)}


def test_a_new_seq_of_the_same_writer_is_applied(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(10, 2)}))
        await store.push(batch(2, {"a": FlagDelta(5, 1)}))
        return await store.snapshot()

    assert figures(run_with(store_of(redis_server), scenario)) == {"a": (15, 3)}


def test_batches_of_two_writers_with_the_same_seq_are_both_applied(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(10, 2)}, writer="host-1:10:aa"))
        await store.push(batch(1, {"a": FlagDelta(5, 1)}, writer="host-2:10:bb"))
        return await store.snapshot()

    assert figures(run_with(store_of(redis_server), scenario)) == {"a": (15, 3)}


def test_a_batch_whose_reply_was_lost_counts_once(redis_server: RedisServer) -> None:
    client = redis_server.client()
    lost = batch(2, {"a": FlagDelta(10, 2, users(0, 10))})

    def landed() -> bool:
        return client.hget(f"{PREFIX}:totals", "a") == b"11"

    async def scenario(store: RedisStore) -> tuple[StoreError, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(1, 0)}))  # loads the script
        # Frozen, the server accepts the request but cannot answer in time: the client gives up,
        # then the server, thawed, applies the batch. The worker will deliver it again.
        redis_server.pause()
        try:
            with pytest.raises(StoreError) as raised:
                await store.push(lost)
        finally:
            redis_server.resume()
        wait_for(landed, 10, "the batch sent before the timeout to be applied")
        await store.push(lost)
        return raised.value, await store.snapshot()

    error, snapshot = run_with(store_of(redis_server, timeout_s=0.3, retries=0), scenario)
    assert error.transient is True
    assert figures(snapshot) == {"a": (11, 2)}
    assert snapshot.flags["a"].unique_users == 10


def test_every_key_is_under_the_key_prefix(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> None:
        await store.push(batch(1, {"a": FlagDelta(3, 1, users(0, 3)), UNICODE_KEY: FlagDelta(1, 0, users(0, 1))}))
        await store.push(batch(2, {"b": FlagDelta(1, 1)}, {"c": Pin(4, 0.5)}))
        await store.snapshot()
        await store.reset("a")

    run_with(store_of(redis_server), scenario)
    keys = [key.decode() for key in redis_server.client().keys("*")]
    assert keys
    assert all(key.startswith(f"{PREFIX}:") for key in keys), keys


# -- pins and reset -------------------------------------------------------------------------------------


def test_a_pin_replaces_the_computed_figures(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50))}))
        await store.push(batch(2, {}, {"a": Pin(unique_users=7, error_rate=0.5), "pinned-only": Pin(3, 0.25)}))
        return await store.snapshot()

    flags = run_with(store_of(redis_server), scenario).flags
    assert (flags["a"].total, flags["a"].errors, flags["a"].unique_users, flags["a"].error_rate) == (10, 2, 7, 0.5)
    assert (flags["pinned-only"].total, flags["pinned-only"].unique_users) == (0, 3)
    assert flags["pinned-only"].error_rate == 0.25


def test_reset_of_a_flag_clears_its_figures_and_its_pin(redis_server: RedisServer) -> None:
    async def scenario(store: RedisStore) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50)), "b": FlagDelta(1, 0)}, {"a": Pin(7, 0.5)}))
        await store.reset("a")
        cleared = await store.snapshot()
        await store.push(batch(2, {"a": FlagDelta(4, 1, users(100, 120))}))
        return cleared, await store.snapshot()

    cleared, again = run_with(store_of(redis_server), scenario)
    assert figures(cleared) == {"b": (1, 0)}
    stats = again.flags["a"]
    # From nothing: neither the pin nor the 50 earlier users are left.
    assert (stats.total, stats.errors, stats.unique_users, stats.pinned_error_rate) == (4, 1, 20, None)


def test_reset_removes_every_flag_key_of_the_prefix_and_nothing_else(redis_server: RedisServer) -> None:
    client = redis_server.client()
    unrelated = {"other:totals": b"1", f"{PREFIX}x:totals": b"2", PREFIX: b"3", f"x{PREFIX}:hll:a": b"4"}
    for key, value in unrelated.items():
        client.set(key, value)

    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(3, 1, users(0, 3)), UNICODE_KEY: FlagDelta(1, 0, users(0, 1))}))
        await store.push(batch(2, {"b": FlagDelta(1, 1, users(0, 1))}, {"c": Pin(4, 0.5)}))
        await store.reset()
        return await store.snapshot()

    assert run_with(store_of(redis_server), scenario).flags == {}
    assert {key: client.get(key) for key in unrelated} == unrelated
    left = [key.decode() for key in client.keys(f"{PREFIX}:*")]
    # Only the per-writer sequence numbers stay, on purpose and with their expiry: forgetting them
    # would let a batch delivered again after the reset count a second time.
    assert all(key.startswith(f"{PREFIX}:seq:") for key in left), left
    assert all(client.ttl(key) > 0 for key in left)


# -- cost -----------------------------------------------------------------------------------------------


def command_counts(client: redis.Redis) -> Counter[str]:
    """Successful calls of every command so far, from INFO commandstats (this INFO itself left out)."""
    counts: Counter[str] = Counter()
    for name, stats in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_")
        if command != "info":
            counts[command] = int(stats["calls"]) - int(stats.get("failed_calls", 0))
    return counts


def snapshot_cost(server: RedisServer, monkeypatch: pytest.MonkeyPatch, flags: int) -> tuple[int, Counter[str]]:
    """Round trips and commands run by one snapshot of `flags` flags (after a warm-up one)."""
    client = server.client()

    async def scenario(store: RedisStore) -> tuple[int, Counter[str]]:
        await store.push(batch(1, {f"flag-{i}": FlagDelta(1, 0, users(i, i + 1)) for i in range(flags)}))
        await store.snapshot()  # connects and loads any script, so that only a scrape's own cost is counted
        before = command_counts(client)
        trips = RoundTrips(monkeypatch)
        snapshot = await store.snapshot()
        monkeypatch.undo()
        assert len(snapshot.flags) == flags
        return trips.count, command_counts(client) - before

    return run_with(store_of(server, key_prefix=f"cost{flags}"), scenario)


def test_snapshot_takes_the_same_round_trips_for_10_and_500_flags(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_trips, small = snapshot_cost(redis_server, monkeypatch, 10)
    large_trips, large = snapshot_cost(redis_server, monkeypatch, 500)
    # A MULTI/EXEC block of three HGETALLs, then one request counting every flag's users.
    assert small_trips == large_trips == 2
    assert (small["multi"], small["exec"], small["hgetall"]) == (1, 1, 3)
    assert (small["pfcount"], large["pfcount"]) == (10, 500)
    # Only the PFCOUNTs grow with the number of flags.
    assert large - small == Counter({"pfcount": 490})
    assert small - large == Counter()


def test_push_is_one_evalsha_per_batch_whatever_its_size(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    sizes = [1, 1_000, 20_000]

    async def scenario(store: RedisStore) -> tuple[int, int, int]:
        await store.push(batch(1, {"warm-up": FlagDelta(1, 0)}))  # connects and loads the script
        before = calls(client, "evalsha")
        trips = RoundTrips(monkeypatch)
        for seq, size in enumerate(sizes, 2):
            flags = {f"f{n}": FlagDelta(size, 1, users(n * size, (n + 1) * size)) for n in range(3)}
            await store.push(batch(seq, flags, {"p": Pin(1, 0.0)}))
        monkeypatch.undo()
        return calls(client, "evalsha") - before, trips.count, calls(client, "eval")

    evalshas, round_trips, evals = run_with(store_of(redis_server), scenario)
    assert (evalshas, round_trips, evals) == (len(sizes), len(sizes), 0)
    assert int(client.hget(f"{PREFIX}:totals", "f2") or 0) == sum(sizes)


# -- failures -------------------------------------------------------------------------------------------


def test_push_raises_a_transient_store_error_while_redis_is_stopped(redis_server: RedisServer) -> None:
    redis_server.stop()
    with pytest.raises(StoreError) as raised:
        run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(1, 0)})))
    assert raised.value.transient is True


def test_snapshot_raises_store_error_while_redis_is_stopped(redis_server: RedisServer) -> None:
    redis_server.stop()
    with pytest.raises(StoreError, match="could not read"):
        run_with(store_of(redis_server), lambda store: store.snapshot())


def test_a_key_of_the_wrong_type_makes_push_raise_a_permanent_store_error(redis_server: RedisServer) -> None:
    redis_server.client().set(f"{PREFIX}:totals", "not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE") as raised:
        run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(1, 0)})))
    assert raised.value.transient is False


def test_a_refused_batch_changes_nothing(redis_server: RedisServer) -> None:
    """A counts hash of the wrong type is found before anything is written."""
    client = redis_server.client()
    client.rpush(f"{PREFIX}:errors", "not a hash")
    refused = batch(1, {"a": FlagDelta(10, 1, users(0, 10)), "b": FlagDelta(5, 0, users(0, 5))})

    async def scenario(store: RedisStore) -> None:
        for _ in range(3):  # the flusher's attempts before it drops the batch
            with pytest.raises(StoreError):
                await store.push(refused)

    run_with(store_of(redis_server), scenario)
    assert client.hgetall(f"{PREFIX}:totals") == {}
    assert client.exists(f"{PREFIX}:hll:a") == 0


def test_a_batch_refused_by_a_corrupt_hyperloglog_adds_no_count(redis_server: RedisServer) -> None:
    """A string that is not a HyperLogLog fails at PFADD: no count is added, however often it is retried."""
    client = redis_server.client()
    client.set(f"{PREFIX}:hll:b", "not a HyperLogLog")
    refused = batch(1, {"a": FlagDelta(10, 1, users(0, 10)), "b": FlagDelta(5, 0, users(0, 5))})

    async def scenario(store: RedisStore) -> None:
        for _ in range(3):
            with pytest.raises(StoreError) as raised:
                await store.push(refused)
            assert raised.value.transient is False

    run_with(store_of(redis_server), scenario)
    assert client.hgetall(f"{PREFIX}:totals") == {}
    assert client.hgetall(f"{PREFIX}:errors") == {}


def test_push_works_after_a_restart_empties_the_script_cache(redis_server: RedisServer) -> None:
    client = redis_server.client()

    async def scenario(store: RedisStore) -> tuple[int, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 10))}))
        redis_server.stop()
        redis_server.start()
        cached = client.info("memory")["number_of_cached_scripts"]
        await store.push(batch(2, {"a": FlagDelta(5, 1, users(10, 15))}))
        return cached, await store.snapshot()

    cached, snapshot = run_with(store_of(redis_server), scenario)
    assert cached == 0  # so the push after the restart met NOSCRIPT
    assert figures(snapshot) == {"a": (15, 3)}
    assert snapshot.flags["a"].unique_users == 15


def test_a_batch_applied_before_a_restart_is_not_applied_again(redis_server: RedisServer) -> None:
    applied = batch(1, {"a": FlagDelta(10, 2, users(0, 10))})

    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(applied)
        redis_server.kill()
        redis_server.start()
        await store.push(applied)
        return await store.snapshot()

    assert figures(run_with(store_of(redis_server), scenario)) == {"a": (10, 2)}


# -- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://user:s3cretpw@localhost:6379/0",
        "redis://:s3cretpw@/0",
        "redis://user:s3cretpw@:6379/0",
        "rediss:///0?password=s3cretpw",
    ],
    ids=["http-scheme", "no-host", "port-but-no-host", "no-host-password-in-query"],
)
def test_from_url_rejects_a_bad_url_without_showing_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisStore.from_url(url)
    assert "s3cretpw" not in str(raised.value)
    assert "***" in str(raised.value)


# -- the flusher in front of a real Redis --------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_a_refused_batch_is_dropped_after_3_attempts_and_later_batches_are_delivered(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    client.set("flagmetrics:totals", "not a hash")
    registry = CollectorRegistry()

    def dropped() -> float | None:
        return registry.get_sample_value("flagmetrics_dropped_events_total")

    async def scenario() -> tuple[list[float | None], Snapshot]:
        exporter = PrometheusExporter(
            registry=registry, store=RedisStore.from_url(redis_server.url), flush_interval_s=3600
        )
        try:
            for i in range(5):
                await exporter.record(Evaluation("f", "STATIC", "on", f"user-{i}", 1.0))
            seen = []
            for _ in range(3):
                with pytest.raises(StoreError):
                    await exporter.flush()
                seen.append(dropped())
            client.delete("flagmetrics:totals")
            for i in range(7):
                await exporter.record(Evaluation("f", "ERROR" if i < 2 else "STATIC", "on", f"user-{100 + i}", 1.0))
            await exporter.flush()
            return seen, await exporter.store.snapshot()
        finally:
            await exporter.close()

    seen, snapshot = asyncio.run(scenario())
    assert seen == [0.0, 0.0, 5.0]
    assert dropped() == 5.0
    assert figures(snapshot) == {"f": (7, 2)}
    assert snapshot.flags["f"].unique_users == 7


def test_redis_holds_digests_of_the_user_ids_never_the_ids(redis_server: RedisServer) -> None:
    # The HyperLogLog already holds the BLAKE2b digest of the id, and not the raw id.
    client = redis_server.client()
    run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(1, 0, users(0, 1))})))
    assert client.pfadd(f"{PREFIX}:hll:a", hashlib.blake2b(b"user-0", digest_size=8).digest()) == 0
    assert client.pfadd(f"{PREFIX}:hll:a", b"user-0") == 1
