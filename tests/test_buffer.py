"""flagmetrics.buffer: the per-worker buffer, its room accounting and the batch in flight."""

from __future__ import annotations

import asyncio

import pytest

from flagmetrics.buffer import DIGEST_SIZE, Buffer, digest_users
from flagmetrics.stores.base import Batch, Pin, joined_digests


def record(buffer: Buffer, flag_key: str, user: str | None = None, *, error: bool = False) -> None:
    """Do to the buffer what `PrometheusExporter.record()` does for one evaluation."""
    flag = buffer.flag(flag_key)
    flag.total += 1
    if error:
        flag.errors += 1
    if user is not None and user not in flag.users and buffer.room > 0:
        flag.users.add(user)
        buffer.room -= 1


# -- cut -------------------------------------------------------------------------------------------


def test_cut_of_empty_buffer_is_none() -> None:
    assert Buffer(10).cut() is None


def test_cut_of_empty_buffer_puts_nothing_in_flight() -> None:
    buffer = Buffer(10)
    buffer.cut()
    assert buffer.in_flight is None


def test_cut_of_flag_without_evaluations_is_none() -> None:
    buffer = Buffer(10)
    buffer.flag("idle")
    assert buffer.cut() is None


def test_cut_moves_counts_into_the_batch() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    record(buffer, "a", "u2", error=True)
    record(buffer, "b")
    batch = buffer.cut()
    assert batch is not None
    assert {key: (d.total, d.errors, len(d.members)) for key, d in batch.flags.items()} == {
        "a": (2, 1, 2),
        "b": (1, 0, 0),
    }


def test_cut_counts_events_and_members() -> None:
    buffer = Buffer(10)
    for user in ("u1", "u2", "u2"):
        record(buffer, "a", user)
    record(buffer, "b", "u1")
    batch = buffer.cut()
    assert batch is not None
    assert (batch.events, batch.members) == (4, 3)


def test_cut_empties_the_flag_buffers() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1", error=True)
    buffer.cut()
    flag = buffer.flags["a"]
    assert (flag.total, flag.errors, flag.users) == (0, 0, set())


def test_cut_leaves_out_flags_without_new_evaluations() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    record(buffer, "b", "u1")
    buffer.cut()
    buffer.delivered()
    record(buffer, "b", "u2")
    batch = buffer.cut()
    assert batch is not None
    assert set(batch.flags) == {"b"}


def test_batch_carries_the_writer_of_the_buffer() -> None:
    buffer = Buffer(10)
    record(buffer, "a")
    batch = buffer.cut()
    assert batch is not None
    assert batch.writer == buffer.writer


def test_two_buffers_have_different_writers() -> None:
    """Same host and pid, so the random token is what tells them apart."""
    assert Buffer(1).writer != Buffer(1).writer


def test_sequence_numbers_increase() -> None:
    buffer = Buffer(10)
    seqs = []
    for user in ("u1", "u2", "u3"):
        record(buffer, "a", user)
        batch = buffer.cut()
        assert batch is not None
        seqs.append(batch.seq)
        buffer.delivered()
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3


def test_empty_cut_does_not_consume_a_sequence_number() -> None:
    buffer = Buffer(10)
    record(buffer, "a")
    first = buffer.cut()
    buffer.delivered()
    assert buffer.cut() is None
    record(buffer, "a")
    second = buffer.cut()
    assert first is not None
    assert second is not None
    assert second.seq == first.seq + 1


# -- one batch in flight ---------------------------------------------------------------------------


def test_cut_batch_is_in_flight() -> None:
    buffer = Buffer(10)
    record(buffer, "a")
    batch = buffer.cut()
    assert buffer.in_flight is batch


def test_only_one_batch_in_flight() -> None:
    buffer = Buffer(10)
    record(buffer, "a")
    buffer.cut()
    record(buffer, "a")
    with pytest.raises(RuntimeError, match="already in flight"):
        buffer.cut()


def test_delivered_clears_the_batch_in_flight() -> None:
    buffer = Buffer(10)
    record(buffer, "a")
    buffer.cut()
    buffer.delivered()
    assert buffer.in_flight is None


def test_evaluations_accumulate_while_a_batch_is_in_flight() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    first = buffer.cut()
    record(buffer, "a", "u2")
    record(buffer, "a", "u3")
    assert first is not None
    assert first.events == 1
    buffer.delivered()
    second = buffer.cut()
    assert second is not None
    assert (second.events, second.members) == (2, 2)


def test_pins_only_batch() -> None:
    buffer = Buffer(10)
    buffer.pin("a", Pin(unique_users=5, error_rate=0.5))
    batch = buffer.cut()
    assert batch is not None
    assert (dict(batch.flags), dict(batch.pins)) == ({}, {"a": Pin(unique_users=5, error_rate=0.5)})


def test_pins_are_sent_once() -> None:
    buffer = Buffer(10)
    buffer.pin("a", Pin(unique_users=5, error_rate=0.5))
    buffer.cut()
    buffer.delivered()
    assert buffer.cut() is None


def test_later_pin_replaces_earlier_pin() -> None:
    buffer = Buffer(10)
    buffer.pin("a", Pin(unique_users=5, error_rate=0.5))
    buffer.pin("a", Pin(unique_users=6, error_rate=0.25))
    batch = buffer.cut()
    assert batch is not None
    assert batch.pins == {"a": Pin(unique_users=6, error_rate=0.25)}


# -- room accounting -------------------------------------------------------------------------------


def test_new_buffer_has_full_room() -> None:
    buffer = Buffer(7)
    assert (buffer.capacity, buffer.room) == (7, 7)


def test_room_stays_reserved_while_the_batch_is_in_flight() -> None:
    buffer = Buffer(5)
    record(buffer, "a", "u1")
    record(buffer, "b", "u2")
    buffer.cut()
    assert buffer.room == 3


def test_delivered_frees_the_room_of_the_batch() -> None:
    buffer = Buffer(5)
    record(buffer, "a", "u1")
    record(buffer, "b", "u2")
    buffer.cut()
    record(buffer, "a", "u3")
    buffer.delivered()
    assert buffer.room == 4


def test_delivered_without_batch_in_flight_changes_nothing() -> None:
    buffer = Buffer(5)
    record(buffer, "a", "u1")
    buffer.delivered()
    assert (buffer.room, buffer.flags["a"].users) == (4, {"u1"})


def test_abandon_reports_what_was_lost() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    record(buffer, "a", "u2")
    buffer.cut()
    record(buffer, "a", "u3")
    record(buffer, "b")
    assert buffer.abandon() == (4, 3)


def test_abandon_empties_everything_and_frees_all_room() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    buffer.cut()
    record(buffer, "a", "u2")
    buffer.pin("a", Pin(unique_users=1, error_rate=0.0))
    buffer.abandon()
    assert (buffer.in_flight, buffer.room, buffer.cut()) == (None, 10, None)


def test_abandon_of_empty_buffer_loses_nothing() -> None:
    assert Buffer(3).abandon() == (0, 0)


def test_discard_one_flag_returns_its_room() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    record(buffer, "a", "u2")
    record(buffer, "b", "u1")
    buffer.discard("a")
    assert buffer.room == 9


def test_discard_one_flag_keeps_the_others() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    record(buffer, "b", "u1", error=True)
    buffer.pin("a", Pin(unique_users=1, error_rate=0.0))
    buffer.pin("b", Pin(unique_users=2, error_rate=0.0))
    buffer.discard("a")
    batch = buffer.cut()
    assert batch is not None
    assert (set(batch.flags), set(batch.pins)) == ({"b"}, {"b"})
    assert (batch.flags["b"].total, batch.flags["b"].errors) == (1, 1)


def test_discard_all_empties_every_flag_and_pin() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    record(buffer, "b", "u2")
    buffer.pin("c", Pin(unique_users=1, error_rate=0.0))
    buffer.discard()
    assert (buffer.room, buffer.cut()) == (10, None)


def test_discard_of_unknown_flag_changes_nothing() -> None:
    buffer = Buffer(10)
    record(buffer, "a", "u1")
    buffer.discard("nope")
    assert (buffer.room, buffer.flags["a"].total) == (9, 1)


# -- digests ---------------------------------------------------------------------------------------


def test_digests_are_eight_bytes() -> None:
    digests = digest_users(["u1", "a-much-longer-user-identifier@example.com", "\u2603"], b"")
    assert DIGEST_SIZE == 8
    assert {len(d) for d in digests} == {8}


@pytest.mark.parametrize("hash_key", [b"", b"secret"])
def test_digest_never_equals_the_raw_id(hash_key: bytes) -> None:
    """Eight-byte ids would fit a digest exactly: they must still be hashed."""
    users = ["abcdefgh", "12345678", "user0001", "\x00" * 8]
    digests = digest_users(users, hash_key)
    assert digests.isdisjoint(user.encode() for user in users)


def test_distinct_users_get_distinct_digests() -> None:
    users = [f"user-{i}" for i in range(1000)]
    assert len(digest_users(users, b"")) == 1000


def test_digests_are_deterministic() -> None:
    """Every worker must hash a user id alike, or the fleet would count it twice."""
    assert digest_users(["u1"], b"k") == digest_users(["u1"], b"k")


def test_hash_key_changes_digests() -> None:
    assert digest_users(["u1"], b"") != digest_users(["u1"], b"secret")


def test_different_hash_keys_give_different_digests() -> None:
    assert digest_users(["u1"], b"one") != digest_users(["u1"], b"two")


def test_lone_surrogate_user_id_is_digested() -> None:
    assert len(next(iter(digest_users(["bad\ud800id"], b"")))) == 8


def test_cut_uses_the_hash_key() -> None:
    plain, keyed = Buffer(5), Buffer(5)
    for buffer in (plain, keyed):
        record(buffer, "a", "u1")
    plain_batch, keyed_batch = plain.cut(), keyed.cut(b"secret")
    assert plain_batch is not None
    assert keyed_batch is not None
    assert plain_batch.flags["a"].members == digest_users(["u1"], b"")
    assert keyed_batch.flags["a"].members == digest_users(["u1"], b"secret")
    assert plain_batch.flags["a"].members != keyed_batch.flags["a"].members


def test_batch_members_never_hold_raw_ids() -> None:
    buffer = Buffer(5)
    record(buffer, "a", "abcdefgh")
    batch = buffer.cut()
    assert batch is not None
    assert b"abcdefgh" not in batch.flags["a"].members


# -- cut_in_steps ----------------------------------------------------------------------------------


def filled(users: int = 2_500) -> Buffer:
    """A buffer with two flags: `a` evaluated by `users` users, `b` by the first 10."""
    buffer = Buffer(100_000)
    for n in range(users):
        record(buffer, "a", f"u{n}")
    for n in range(10):
        record(buffer, "b", f"u{n}")
    return buffer


def started_cut(buffer: Buffer, loop: asyncio.AbstractEventLoop, step: int = 1_000) -> asyncio.Task[Batch | None]:
    """A `cut_in_steps` that has hashed its first step and let the loop run."""
    task = loop.create_task(buffer.cut_in_steps(step=step))
    loop.run_until_complete(asyncio.sleep(0))  # the task runs its first step and yields
    assert not task.done()
    return task


def test_cut_in_steps_gives_the_batch_cut_gives_and_lets_the_loop_run_between_steps() -> None:
    async def scenario() -> tuple[Batch | None, Batch | None, int]:
        ticks = 0

        async def other_task() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.get_running_loop().create_task(other_task())
        await asyncio.sleep(0)
        stepped = filled()
        batch = await stepped.cut_in_steps(step=500)
        seen = ticks
        ticker.cancel()
        return batch, filled().cut(), seen

    stepped, whole, ticks = asyncio.run(scenario())
    assert stepped is not None
    assert whole is not None
    assert {key: (d.total, d.members) for key, d in stepped.flags.items()} == {
        key: (d.total, d.members) for key, d in whole.flags.items()
    }
    assert ticks >= 5  # 2,500 users in steps of 500: the other task ran after each


def test_a_cancelled_cut_in_steps_leaves_every_evaluation_it_took_in_flight() -> None:
    loop = asyncio.new_event_loop()
    try:
        buffer = filled()
        task = started_cut(buffer, loop)
        record(buffer, "a", "late")  # after the cut began: for the next batch
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        loop.close()
    batch = buffer.in_flight
    assert batch is not None
    assert (batch.events, batch.members) == (2_510, 2_510)
    assert buffer.flags["a"].users == {"late"}


def test_cut_completes_a_cut_in_steps_under_way_which_then_returns_none() -> None:
    loop = asyncio.new_event_loop()
    try:
        buffer = filled()
        task = started_cut(buffer, loop)
        record(buffer, "b", "late")
        batch = buffer.cut()  # as spooling at shutdown does
        assert batch is not None
        assert (batch.events, batch.members) == (2_510, 2_510)
        assert loop.run_until_complete(task) is None  # the batch is the spooler's to deliver
    finally:
        loop.close()
    assert buffer.in_flight is batch
    buffer.delivered()
    following = buffer.cut()
    assert following is not None
    assert following.seq == batch.seq + 1
    assert following.events == 1


def test_a_flag_discarded_during_a_cut_in_steps_leaves_its_batch_and_returns_its_room() -> None:
    loop = asyncio.new_event_loop()
    try:
        buffer = filled()
        task = started_cut(buffer, loop)
        buffer.discard("a")
        batch = loop.run_until_complete(task)
    finally:
        loop.close()
    assert batch is not None
    assert set(batch.flags) == {"b"}
    assert batch.events == 10
    assert buffer.room == 100_000 - 10


def test_abandon_during_a_cut_in_steps_counts_what_it_took_and_leaves_nothing_in_flight() -> None:
    loop = asyncio.new_event_loop()
    try:
        buffer = filled()
        task = started_cut(buffer, loop)
        assert buffer.abandon() == (2_510, 2_510)
        assert loop.run_until_complete(task) is None
    finally:
        loop.close()
    assert buffer.in_flight is None
    assert buffer.room == 100_000


def test_joined_digests_joins_eight_byte_digests_and_refuses_any_other_size() -> None:
    assert joined_digests([b"a" * 8, b"b" * 8]) in (b"a" * 8 + b"b" * 8, b"b" * 8 + b"a" * 8)
    assert joined_digests([]) == b""
    assert joined_digests([b"a" * 7, b"b" * 9]) is None  # the right total length, not the right sizes
    assert joined_digests([b"a" * 16]) is None
