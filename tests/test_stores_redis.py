"""`RedisStore` against a real redis-server: exactly-once batches, bounded round trips, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from flagmetrics import PrometheusExporter, RedisStore
from flagmetrics.events import Evaluation
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.stores.base import FlagDelta, Pin, Snapshot
from flagmetrics.stores.redis import GROUPS, KeyLayout
from tests.helpers import UNICODE_KEY, batch, run_with, users
from tests.processes import RedisServer, wait_for

PREFIX = "fm-test"
LAYOUT = KeyLayout(PREFIX)


def store_of(server: RedisServer, **kwargs: Any) -> RedisStore:
    kwargs.setdefault("key_prefix", PREFIX)
    return RedisStore.from_url(server.url, **kwargs)


def counts_of(flag_key: str) -> str:
    """The counts hash of a flag's group."""
    return LAYOUT.counts(LAYOUT.group(flag_key))


def text(key: bytes | str) -> str:
    """A key as redis-py returns it (bytes, without decode_responses), as text."""
    return key.decode() if isinstance(key, bytes) else key


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


def test_a_large_batch_adds_every_member_to_the_hyperloglog(redis_server: RedisServer) -> None:
    # 30,000 members go to PFADD in chunks inside the script; the result must equal one plain PFADD.
    members = users(0, 30_000)
    run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(30_000, 0, members)})))
    client = redis_server.client()
    client.pfadd("scratch", *members)
    assert client.pfcount(LAYOUT.users("a")) == client.pfcount("scratch")


def test_members_of_another_size_than_a_digest_are_refused(redis_server: RedisServer) -> None:
    """The script splits the members it gets end to end every 8 bytes: anything else is refused, not miscounted."""
    odd = frozenset({b"1234567", b"123456789"})  # 16 bytes in all, as two digests would be
    with pytest.raises(StoreError, match="must be 8 bytes each") as refused:
        run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(2, 0, odd)})))
    assert not refused.value.transient


def test_a_batch_whose_reply_was_lost_counts_once(redis_server: RedisServer) -> None:
    client = redis_server.client()
    lost = batch(2, {"a": FlagDelta(10, 2, users(0, 10))})

    def landed() -> bool:
        return client.hget(counts_of("a"), "total:a") == b"11"

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
    keys = [text(key) for key in redis_server.client().keys("*")]
    assert keys
    assert all(key.startswith(f"{{{PREFIX}:") for key in keys), keys


# -- pins and reset -------------------------------------------------------------------------------------


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
    left = [text(key) for key in client.keys(f"{{{PREFIX}:*")]
    # Only the per-writer sequence numbers stay, on purpose and with their expiry: forgetting them
    # would let a batch delivered again after the reset count a second time.
    assert left
    assert all(":seq:" in key for key in left), left
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

    store = store_of(server, key_prefix=f"cost{flags}")
    frozen = time.time()
    store._clock = lambda: frozen  # no window's bucket ends between the warm-up scrape and the one counted
    cost: tuple[int, Counter[str]] = run_with(store, scenario)
    return cost


def test_snapshot_takes_the_same_round_trips_for_10_and_500_flags(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_trips, small = snapshot_cost(redis_server, monkeypatch, 10)
    large_trips, large = snapshot_cost(redis_server, monkeypatch, 500)
    # Two pipelines: one script per group listing its flags, then one per group reading them.
    assert small_trips == large_trips == 2
    assert small["evalsha"] <= large["evalsha"] == 2 * GROUPS
    assert small["zrangebyscore"] == large["zrangebyscore"] == GROUPS
    # Only the reads of each flag grow with the number of flags; the window figures computed by the
    # warm-up scrape are read with the counts (two HGETALLs per group), not computed again.
    assert small["hgetall"] == large["hgetall"] == 2 * GROUPS
    assert (small["pfcount"], large["pfcount"]) == (10, 500)
    assert set(large - small) == {"evalsha", "pfcount"}


def test_push_is_one_round_trip_per_batch_whatever_its_size(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client()
    sizes = [1, 1_000, 20_000]

    async def scenario(store: RedisStore) -> tuple[int, int, int]:
        await store.push(batch(1, {"warm-up": FlagDelta(1, 0)}))  # connects and loads the script
        before = calls(client, "evalsha")
        trips = RoundTrips(monkeypatch)
        for seq, size in enumerate(sizes, 2):
            # With the time of the evaluations and variants: every window's buckets are written too.
            served = {n: users(n * size, n * size + size // 2 + 1) for n in range(3)}
            flags = {
                f"f{n}": FlagDelta(size, 1, users(n * size, (n + 1) * size), time.time(), {"on": served[n]})
                for n in range(3)
            }
            await store.push(batch(seq, flags, {"p": Pin(1, 0.0)}))
        monkeypatch.undo()
        return calls(client, "evalsha") - before, trips.count, calls(client, "eval")

    evalshas, round_trips, evals = run_with(store_of(redis_server), scenario)
    groups = len({LAYOUT.group(flag) for flag in ("f0", "f1", "f2", "p")})
    assert (evalshas, round_trips, evals) == (groups * len(sizes), len(sizes), 0)
    assert int(client.hget(counts_of("f2"), "total:f2") or 0) == sum(sizes)


def test_window_keys_live_in_their_flags_slot_and_expire_by_themselves(redis_server: RedisServer) -> None:
    client = redis_server.client()
    flags = {key: FlagDelta(3, 0, users(0, 3), time.time(), {"on": users(0, 2)}) for key in ("a", "b{x}", UNICODE_KEY)}
    run_with(store_of(redis_server), lambda store: store.push(batch(1, flags)))
    windows = {":wb:": 0, ":wv:": 0, ":wvar:": 0}
    for raw in client.scan_iter(match=f"{{{PREFIX}:*", count=1000):
        key = raw.decode()
        kind = next((kind for kind in windows if kind in key), None)
        if kind is None:
            continue
        windows[kind] += 1
        flag = next(flag for flag in flags if key.endswith(f":{flag}"))
        assert key_slot(raw) == key_slot(LAYOUT.users(flag).encode()), key
        ttl = client.ttl(raw)
        # The longest default window is 7 days, in 14-hour buckets: gone within the window and two buckets.
        assert 0 < ttl <= 7 * 86_400 + 2 * 50_400 + 1, (key, ttl)
    # Three windows for each of the three flags, and for its one variant; one variant index each.
    assert windows == {":wb:": 9, ":wv:": 9, ":wvar:": 3}


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
    redis_server.client().set(counts_of("a"), "not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE") as raised:
        run_with(store_of(redis_server), lambda store: store.push(batch(1, {"a": FlagDelta(1, 0)})))
    assert raised.value.transient is False


def test_a_refused_batch_changes_nothing(redis_server: RedisServer) -> None:
    """A counts hash of the wrong type is found before anything is written."""
    client = redis_server.client()
    assert LAYOUT.group("a") == LAYOUT.group("e")  # so that one script refuses both
    client.rpush(counts_of("e"), "not a hash")
    refused = batch(1, {"a": FlagDelta(10, 1, users(0, 10)), "e": FlagDelta(5, 0, users(0, 5))})

    async def scenario(store: RedisStore) -> None:
        for _ in range(3):  # the flusher's attempts before it drops the batch
            with pytest.raises(StoreError):
                await store.push(refused)

    run_with(store_of(redis_server), scenario)
    assert client.exists(LAYOUT.users("a"), LAYOUT.users("e"), LAYOUT.flags(LAYOUT.group("a"))) == 0


def test_a_batch_refused_by_a_corrupt_hyperloglog_adds_no_count(redis_server: RedisServer) -> None:
    """A string that is not a HyperLogLog fails at PFADD: no count is added, however often it is retried."""
    client = redis_server.client()
    client.set(LAYOUT.users("e"), "not a HyperLogLog")
    refused = batch(1, {"a": FlagDelta(10, 1, users(0, 10)), "e": FlagDelta(5, 0, users(0, 5))})

    async def scenario(store: RedisStore) -> None:
        for _ in range(3):
            with pytest.raises(StoreError) as raised:
                await store.push(refused)
            assert raised.value.transient is False

    run_with(store_of(redis_server), scenario)
    assert client.exists(counts_of("a"), LAYOUT.flags(LAYOUT.group("a"))) == 0


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
    layout = KeyLayout("flagmetrics")
    refusing = layout.counts(layout.group("f"))
    client.set(refusing, "not a hash")
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
            client.delete(refusing)
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
    assert client.pfadd(LAYOUT.users("a"), hashlib.blake2b(b"user-0", digest_size=8).digest()) == 0
    assert client.pfadd(LAYOUT.users("a"), b"user-0") == 1


# -- key layout -----------------------------------------------------------------------------------------

FLAG_KEYS = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"], include_characters="{}:"), min_size=1, max_size=200
)


def test_each_group_has_a_tag_in_its_own_share_of_the_slots() -> None:
    """The groups spread evenly over a cluster's 16,384 slots, whatever the prefix."""
    for prefix in (PREFIX, "flagmetrics", "a"):
        layout = KeyLayout(prefix)
        slots = [key_slot(layout.flags(group).encode()) for group in range(GROUPS)]
        assert [slot * GROUPS // 16384 for slot in slots] == list(range(GROUPS))


@given(flag_key=FLAG_KEYS)
def test_every_key_of_a_flag_is_in_its_groups_slot(flag_key: str) -> None:
    """Braces, colons or spaces in a flag key never move its keys out of its group's slot."""
    group = LAYOUT.group(flag_key)
    slot = key_slot(LAYOUT.flags(group).encode())
    keys = (LAYOUT.users(flag_key), LAYOUT.counts(group), LAYOUT.seq(group, "host:1:ab"))
    assert {key_slot(key.encode()) for key in keys} == {slot}


@given(first=FLAG_KEYS, second=FLAG_KEYS)
def test_keys_of_two_flags_never_collide_with_each_other_or_with_a_groups_keys(first: str, second: str) -> None:
    shared = {LAYOUT.flags(group) for group in range(GROUPS)} | {LAYOUT.counts(group) for group in range(GROUPS)}
    shared |= {LAYOUT.seq(group, first) for group in range(GROUPS)}
    one, other = {LAYOUT.users(first)}, {LAYOUT.users(second)}
    assert not one & shared
    assert first == second or not one & other


@pytest.mark.parametrize("prefix", ["", "fm{x}", "{fm", "fm}"])
def test_a_key_prefix_with_braces_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="`key_prefix`"):
        KeyLayout(prefix)


# -- upgrading from the layout of flagmetrics 0.1 ------------------------------------------------------

# The flush script of flagmetrics 0.1, which kept every flag's counts in three hashes and its users in
# one HyperLogLog outside any hash tag (so it could not run on a cluster).
OLD_FLUSH_LUA = """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if seq <= last then return 0 end
for k = 2, 4 do
  local kind = redis.call('TYPE', KEYS[k]).ok
  if kind ~= 'none' and kind ~= 'hash' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a hash')
  end
end
local i = 5
for f = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[i + 3])
  i = i + 4
  local done = 0
  while done < n do
    local step = math.min(n - done, 512)
    redis.call('PFADD', KEYS[4 + f], unpack(ARGV, i + done, i + done + step - 1))
    done = done + step
  end
  i = i + n
end
i = 5
for f = 1, tonumber(ARGV[3]) do
  local flag, total, errors, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  if total > 0 then redis.call('HINCRBY', KEYS[2], flag, total) end
  if errors > 0 then redis.call('HINCRBY', KEYS[3], flag, errors) end
  i = i + 4 + n
end
for p = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[1], seq, 'EX', tonumber(ARGV[2]))
return 1
"""


def write_old_layout(client: redis.Redis, writer: str, seq: int, flags: dict[str, FlagDelta]) -> None:
    """Apply a batch as flagmetrics 0.1 did."""
    keys = [f"{PREFIX}:seq:{writer}", f"{PREFIX}:totals", f"{PREFIX}:errors", f"{PREFIX}:pins"]
    args: list[Any] = [seq, 86_400, len(flags), 0]
    for flag_key, delta in flags.items():
        keys.append(f"{PREFIX}:hll:{flag_key}")
        args += (flag_key, delta.total, delta.errors, len(delta.members), *delta.members)
    client.eval(OLD_FLUSH_LUA, len(keys), *keys, *args)


def test_flags_of_the_old_layout_are_moved_into_their_groups_once(redis_server: RedisServer) -> None:
    """An upgraded store moves 0.1's keys in, adds to them, and keeps moving what workers not yet
    upgraded (a rolling deploy) still write the old way."""
    client = redis_server.client()
    write_old_layout(client, "old:1:aa", 1, {"a": FlagDelta(10, 2, users(0, 50)), UNICODE_KEY: FlagDelta(4, 0)})
    client.hset(f"{PREFIX}:pins", "pinned", json.dumps([7, 0.5]))

    async def scenario(store: RedisStore) -> tuple[Snapshot, Snapshot, Snapshot]:
        moved = await store.snapshot()
        await store.push(batch(1, {"a": FlagDelta(5, 1, users(40, 60))}))
        after_push = await store.snapshot()
        write_old_layout(client, "old:1:aa", 2, {"a": FlagDelta(3, 3, users(100, 110))})  # an old worker, still up
        store._next_layout_check = 0.0  # the next minutely look
        return moved, after_push, await store.snapshot()

    moved, after_push, later = run_with(store_of(redis_server), scenario)
    assert figures(moved) == {"a": (10, 2), UNICODE_KEY: (4, 0), "pinned": (0, 0)}
    assert (moved.flags["a"].unique_users, moved.flags["pinned"].unique_users) == (50, 7)
    assert moved.flags["pinned"].error_rate == 0.5
    assert figures(after_push)["a"] == (15, 3)
    assert after_push.flags["a"].unique_users == 60
    assert figures(later)["a"] == (18, 6)
    assert later.flags["a"].unique_users == 70
    assert client.keys(f"{PREFIX}:hll:*") == []
    assert client.hlen(f"{PREFIX}:totals") == client.hlen(f"{PREFIX}:pins") == 0


# -- retention ------------------------------------------------------------------------------------------


def test_a_flag_nobody_writes_to_expires_after_the_retention(redis_server: RedisServer) -> None:
    client = redis_server.client()

    async def scenario(store: RedisStore) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {"gone": FlagDelta(3, 1, users(0, 3)), "kept": FlagDelta(1, 0)}))
        first = await store.snapshot()
        assert 0 < client.ttl(LAYOUT.users("gone")) <= 2

        async def pushed_and_gone() -> bool:
            await store.push(batch(int(time.time() * 1000), {"kept": FlagDelta(1, 0)}))
            return "gone" not in (await store.snapshot()).flags

        deadline = time.monotonic() + 10
        while not await pushed_and_gone():
            assert time.monotonic() < deadline, "the retention never let the flag go"
            await asyncio.sleep(0.2)
        return first, await store.snapshot()

    first, later = run_with(store_of(redis_server, retention_s=2), scenario)
    assert set(first.flags) == {"gone", "kept"}
    assert set(later.flags) == {"kept"}
    assert client.exists(LAYOUT.users("gone")) == 0
    assert client.hget(counts_of("gone"), "total:gone") is None
    assert client.zscore(LAYOUT.flags(LAYOUT.group("gone")), "gone") is None


def test_retention_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="`retention_s`"):
        RedisStore.from_url("redis://127.0.0.1:1/0", retention_s=0)


# -- a batch refused in part ----------------------------------------------------------------------------


def test_a_batch_refused_by_one_group_applies_the_others_once_and_says_what_was_refused(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    assert LAYOUT.group("a") != LAYOUT.group("c")
    client.set(counts_of("c"), "not a hash")
    refused = batch(1, {"a": FlagDelta(10, 1, users(0, 10)), "c": FlagDelta(5, 2, users(0, 5))})

    async def scenario(store: RedisStore) -> tuple[list[int | None], Snapshot]:
        seen = []
        for _ in range(3):
            with pytest.raises(StoreError) as raised:
                await store.push(refused)
            assert raised.value.transient is False
            seen.append(raised.value.refused_events)
        client.delete(counts_of("c"))  # the operator mends the key; what was refused is gone
        return seen, await store.snapshot()

    refused_events, snapshot = run_with(store_of(redis_server), scenario)
    assert refused_events == [5, 5, 5]
    assert figures(snapshot) == {"a": (10, 1)}
