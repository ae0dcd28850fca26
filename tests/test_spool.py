"""The spool on its own: the file format and its checks, the byte limit, adoption of a stopped writer's
batches (one deliverer at a time), a failed write, and the size of a spooled batch."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import os
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from flagmetrics import RedisStore, StoreError
from flagmetrics.buffer import Buffer
from flagmetrics.spool import Spool, SpoolCorrupt, decode, encode, spool_directory, spool_usage
from flagmetrics.stores.base import Batch, FlagDelta, Pin, Snapshot
from tests.helpers import DownStore, ev, make_exporter, run, sample_value, summary, users

TARGET = "redis:127.0.0.1:6379/0:flagmetrics"


class SpooledDownStore(DownStore):
    """A store that cannot be reached, naming the target its batches are spooled for."""

    spool_target = TARGET


class PointedStore(RedisStore):
    """A Redis store (on fakeredis) that takes the batches spooled for TARGET."""

    @property
    def spool_target(self) -> str:
        return TARGET


def a_batch(seq: int, first: int = 0, count: int = 100, writer: str = "host:1:abcd") -> Batch:
    members = users(first, first + count)
    half = frozenset(sorted(members)[: count // 2])
    return Batch(
        writer,
        seq,
        {"f": FlagDelta(count, 3, members, 1_700_000_000.5, {"on": half}), "g": FlagDelta(2, 0)},
        pins={"p": Pin(7, 0.25)},
        splits={"f": {"on": 0.5, "off": 0.5}},
    )


def test_a_batch_survives_the_round_trip() -> None:
    batch = a_batch(4)
    assert decode(encode(batch, "t")) == (batch, "t")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated: a crash mid-write, a full disk
        lambda data: data[:-1],
        lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:],  # a flipped bit
        lambda data: b"",
        lambda data: b"not a spool file at all",
    ],
)
def test_a_damaged_file_is_detected(damage: object) -> None:
    with pytest.raises(SpoolCorrupt):
        decode(damage(encode(a_batch(1), "t")))  # type: ignore[operator]


def test_damaged_files_are_set_aside_counted_and_skipped(tmp_path: Path) -> None:
    corrupt: list[str] = []
    spool = Spool(str(tmp_path), TARGET, "w1", on_corrupt=lambda path, why: corrupt.append(why))
    spool.write(a_batch(1, writer="w1"))
    spool.write(a_batch(2, writer="w1"))
    first = sorted(tmp_path.glob("*.batch"))[0]
    first.write_bytes(first.read_bytes()[:-10])
    assert spool.read_own(1) is None
    assert spool.read_own(2) == a_batch(2, writer="w1")
    assert len(corrupt) == 1
    assert "truncated" in corrupt[0]
    assert [p.name.endswith(".corrupt") for p in tmp_path.glob("*~*")].count(True) == 1
    assert spool_usage(str(tmp_path))[0] == 1  # the damaged file no longer counts as waiting


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), TARGET, "w1")
    spool.write(a_batch(1, writer="w1"))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        f"w1~{1:012d}~{spool.target}.batch"
    ]


def test_over_the_limit_the_oldest_lose_their_users_counted_exactly_and_keep_their_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    one = len(encode(a_batch(1), "x"))
    spool = Spool(str(tmp_path), TARGET, "w1", max_bytes=int(one * 2.5), on_dropped=dropped.append)
    for seq in range(1, 5):
        spool.write(a_batch(seq, first=seq * 1000, writer="w1"))
    batches = [spool.read_own(seq) for seq in range(1, 5)]
    assert all(b is not None for b in batches)
    kept = [b.members for b in batches if b is not None]
    assert kept == [0, 0, 100, 100]  # the two oldest stripped, the newest two whole
    assert sum(dropped) == 200  # exactly the user digests removed
    assert [b.flags["f"].total for b in batches if b is not None] == [100] * 4  # counts kept
    assert [b.flags["f"].errors for b in batches if b is not None] == [3] * 4
    assert spool_usage(str(tmp_path))[1] <= spool.max_bytes


def _adopt_in_child(directory: str, ready: Any, done: Any) -> None:
    spool = Spool(directory, TARGET, "other")
    with spool.adopt("gone") as batches:
        assert batches is not None
        ready.set()
        done.wait(30)


def test_two_processes_never_deliver_one_writers_batches_at_once(tmp_path: Path) -> None:
    """While one process holds a stopped writer's batches, another gets none; after it, the rest."""
    gone = Spool(str(tmp_path), TARGET, "gone")
    gone.write(a_batch(1, writer="gone"))
    live = Spool(str(tmp_path), TARGET, "live")
    with live.adopt("gone") as batches:
        assert batches is None  # the writer is alive: its own lock is held
    gone.close()  # the writer stops (its lock goes with it, as at SIGKILL)

    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=_adopt_in_child, args=(str(tmp_path), ready, done))
    child.start()
    try:
        assert ready.wait(30)
        with live.adopt("gone") as batches:
            assert batches is None  # the other process is delivering them
    finally:
        done.set()
        child.join(30)
    assert child.exitcode == 0
    with live.adopt("gone") as batches:
        assert batches is not None
        assert [batch for _, batch in batches] == [a_batch(1, writer="gone")]


def test_a_stopped_workers_batches_are_delivered_by_another_exactly_once(
    server: fakeredis.FakeServer, private_spool: Path
) -> None:
    """Worker A spools while the store is down and stops; worker B delivers A's batches, once."""
    a, _ = make_exporter(server, store=SpooledDownStore())

    async def stop_during_outage() -> None:
        await a.record(ev(user="u1"))
        await a.record(ev(user="u2", error_code="GENERAL", reason="ERROR"))

    run(a, stop_during_outage)  # close(): the flush fails, the batches are spooled
    assert len(list(private_spool.glob("*.batch"))) == 1

    store = RedisStore(fakeredis.aioredis.FakeRedis(server=server))
    b, _registry = make_exporter(server, store=store)
    b_store_target = store.spool_target
    assert b_store_target != TARGET

    # B writes to another store: it leaves A's batch alone.
    run(b, b.flush)
    assert len(list(private_spool.glob("*.batch"))) == 1

    c_store = PointedStore(fakeredis.aioredis.FakeRedis(server=server))
    c, c_registry = make_exporter(server, store=c_store)

    async def deliver_twice() -> Snapshot:
        await c.flush()
        await c.flush()
        return await c_store.snapshot()

    snapshot = run(c, deliver_twice)
    assert summary(snapshot)["f"][:3] == (2, 1, 2)
    assert list(private_spool.glob("*.batch")) == []
    assert sample_value(c_registry, "flagmetrics_spool_deliveries_total") == 1.0


def test_a_failed_spool_write_is_counted_and_keeps_the_batch_in_memory(
    server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the write fails, is counted, the temporary file goes, and the batch stays in flight."""
    exporter, registry = make_exporter(server, store=SpooledDownStore())
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)

    async def scenario() -> None:
        await exporter.record(ev(user="u1"))
        with pytest.raises(Exception, match="flush failed"):
            await exporter.flush()
        assert exporter._buffer.in_flight is not None

    run(exporter, scenario)
    assert sample_value(registry, "flagmetrics_spool_errors_total", operation="write") >= 1.0
    directory = exporter.spool_path
    assert directory is not None
    assert [name for name in os.listdir(directory) if not name.endswith(".lock")] == []
    # At close the write fails again: the evaluation is counted as dropped, never silently lost.
    assert sample_value(registry, "flagmetrics_dropped_events_total") == 1.0


def test_the_spool_directory_setting() -> None:
    assert spool_directory("off", "/m") is None
    assert spool_directory("/data/spool", "/m") == "/data/spool"
    assert spool_directory(None, "/m") == "/m/spool"
    assert spool_directory(None, None) == os.path.join("/var", "tmp", f"flagmetrics-{os.getuid()}", "spool")


def test_a_directory_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OSError, match="not this user's alone"):
        Spool(str(shared), TARGET, "w").write(a_batch(1, writer="w"))


def test_spool_size_per_10000_events(tmp_path: Path) -> None:
    """The size of spooled batches: 10,000 evaluations of 10 flags by 5,000 distinct users, 2 variants."""
    buffer = Buffer(1_000_000)
    for i in range(10_000):
        flag = buffer.flag(f"flag_{i % 10}")
        buffer.add(flag, i % 50 == 0, f"user-{i % 5000}", None if i % 50 == 0 else ("on" if i % 2 else "off"))
    batch = buffer.cut(b"")
    assert batch is not None
    assert batch.events == 10_000
    size = len(encode(batch, "t"))
    print(f"spool: {size} bytes for 10,000 events ({batch.members} user digests)")
    assert size < 250_000


class StubbornStore(SpooledDownStore):
    """A store whose client holds on to cancellations for 3 s before it gives up, as a client may."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def push(self, batch: Batch) -> None:
        self.entered.set()
        deadline = asyncio.get_running_loop().time() + 3.0
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        raise StoreError("gave up")


def test_close_is_bounded_even_when_the_store_holds_a_cancellation(
    server: fakeredis.FakeServer, private_spool: Path
) -> None:
    """A stopping worker spools and returns within its bounds, whatever the store client does."""
    store = StubbornStore()
    exporter, registry = make_exporter(server, store=store, flush_interval_s=0.05)

    async def scenario() -> float:
        await exporter.start()
        await exporter.record(ev(user="u1"))
        async with asyncio.timeout(10):
            await store.entered.wait()  # the periodic flush is now stuck in push
        await exporter.record(ev(user="u2"))
        started = asyncio.get_running_loop().time()
        await exporter.close(timeout_s=5.0)
        return asyncio.get_running_loop().time() - started

    took = run(exporter, scenario)
    assert took < 2.0, f"close took {took:.2f} s"  # CANCEL_WAIT_S + SHUTDOWN_TRY_S + STORE_CLOSE_S at most
    assert sum(decode(p.read_bytes())[0].events for p in private_spool.glob("*.batch")) == 2
    assert sample_value(registry, "flagmetrics_dropped_events_total") == 0.0
