"""`LocalStore`: one host's fleet state in the multiprocess directory, shared by real processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import hashlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from flagmetrics import PrometheusExporter
from flagmetrics.exceptions import StoreError
from flagmetrics.stores.base import Batch, FlagDelta, Pin, Snapshot
from flagmetrics.stores.local import _FILE_SIZE, LocalStore
from tests.conftest import UNICODE_KEY, batch, run_with, users, wait_for

LOCK_FILE = "flagmetrics-state.lock"
FLAG_FILES = "flagmetrics-flag-*.bin"

# A worker process: hashes users first..stop-1 into batches of `step` (each user evaluated twice,
# one error per batch), waits for the go file, pushes them all into the directory, and exits.
PUSHER = """
import asyncio, os, sys, time
from flagmetrics.buffer import digest_users
from flagmetrics.stores.base import Batch, FlagDelta
from flagmetrics.stores.local import _FILE_SIZE, LocalStore

directory, signals, writer = sys.argv[1:4]
first, stop, step = map(int, sys.argv[4:7])
batches = [
    Batch(writer, seq, {"shared": FlagDelta(2 * len(users), 1, users)})
    for seq, users in enumerate(
        (digest_users((f"user-{i}" for i in range(start, min(stop, start + step))), b"")
         for start in range(first, stop, step)),
        1,
    )
]
open(os.path.join(signals, "ready-" + writer), "w").close()
deadline = time.monotonic() + 20
while not os.path.exists(os.path.join(signals, "go")):
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.001)

async def main():
    store = LocalStore(directory)
    for batch in batches:
        await store.push(batch)
    await store.close()

asyncio.run(main())
"""

# Takes the exclusive lock on the state lock file, says so with a file, and holds it until killed.
LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], "flagmetrics-state.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
while True:
    time.sleep(60)
"""


def reference_estimate(digests: frozenset[bytes]) -> int:
    """The unique-user figure of one in-memory store fed `digests` at once."""

    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"f": FlagDelta(1, 0, digests)}))
        return await store.snapshot()

    return run_with(LocalStore(None), scenario).flags["f"].unique_users


@contextlib.contextmanager
def started(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped by its pid when the block ends."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def finished(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Wait for a child to exit and assert it succeeded."""
    proc.wait(timeout=timeout_s)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert proc.returncode == 0, stderr


@pytest.fixture(params=["directory", "memory"])
def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStore:
    """A store keeping its state in `tmp_path`, or in memory: both must behave the same."""
    return LocalStore(str(tmp_path) if request.param == "directory" else None)


# -- figures ------------------------------------------------------------------------------------------


def test_a_batch_gives_exact_totals_and_errors(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(1234, 56, users(0, 100)), "b": FlagDelta(7, 0, users(0, 3))}))
        return await store.snapshot()

    flags = run_with(local_store, scenario).flags
    assert {key: (stats.total, stats.errors) for key, stats in flags.items()} == {"a": (1234, 56), "b": (7, 0)}
    assert flags["a"].error_rate == 56 / 1234
    assert flags["b"].error_rate == 0.0


def test_a_batch_gives_unique_users_within_2_percent(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(20_000, 0, users(0, 20_000))}))
        return await store.snapshot()

    unique = run_with(local_store, scenario).flags["a"].unique_users
    assert abs(unique - 20_000) <= 0.02 * 20_000, unique


def test_figures_never_decrease_across_pushes(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> list[tuple[int, int, int]]:
        seen = []
        for seq in range(1, 30):
            # Overlapping, sometimes repeated user ranges: the estimate may stay, never go back.
            first = (seq * 397) % 3_000
            await store.push(batch(seq, {"a": FlagDelta(seq, seq % 3, users(first, first + 400))}))
            stats = (await store.snapshot()).flags["a"]
            seen.append((stats.total, stats.errors, stats.unique_users))
        return seen

    seen = run_with(local_store, scenario)
    for before, after in itertools.pairwise(seen):
        assert all(b <= a for b, a in zip(before, after, strict=True)), (before, after)
    assert seen[-1][0] == sum(range(1, 30))


def test_flags_with_no_evaluations_and_no_pin_are_not_reported(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"idle": FlagDelta(0, 0, frozenset()), "busy": FlagDelta(1, 0, users(0, 1))}))
        await store.reset("never-seen")
        return await store.snapshot()

    assert set(run_with(local_store, scenario).flags) == {"busy"}


def test_reset_of_one_flag_clears_it_and_keeps_the_others(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50)), "b": FlagDelta(5, 1, users(0, 5))}))
        await store.reset("a")
        cleared = await store.snapshot()
        await store.push(batch(2, {"a": FlagDelta(3, 0, users(1_000, 1_002))}))
        return cleared, await store.snapshot()

    cleared, again = run_with(local_store, scenario)
    assert set(cleared.flags) == {"b"}
    assert (cleared.flags["b"].total, cleared.flags["b"].errors, cleared.flags["b"].unique_users) == (5, 1, 5)
    # After the reset the flag starts from nothing: its old 50 users are gone from the sketch too.
    assert (again.flags["a"].total, again.flags["a"].errors, again.flags["a"].unique_users) == (3, 0, 2)


def test_reset_of_every_flag_clears_them_all(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> tuple[Snapshot, Snapshot]:
        await store.push(
            batch(1, {"a": FlagDelta(10, 2, users(0, 50)), "b": FlagDelta(5, 1, users(0, 5))}, {"c": Pin(9, 0.5)})
        )
        await store.reset()
        cleared = await store.snapshot()
        await store.push(batch(2, {"b": FlagDelta(1, 0, users(7, 8))}))
        return cleared, await store.snapshot()

    cleared, again = run_with(local_store, scenario)
    assert cleared.flags == {}
    assert set(again.flags) == {"b"}
    assert (again.flags["b"].total, again.flags["b"].unique_users) == (1, 1)


# -- exactly once ---------------------------------------------------------------------------------


def test_the_same_batch_pushed_twice_is_applied_once(local_store: LocalStore) -> None:
    same = batch(1, {"a": FlagDelta(10, 2, users(0, 100))})

    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(same)
        await store.push(same)
        return await store.snapshot()

    stats = run_with(local_store, scenario).flags["a"]
    assert (stats.total, stats.errors) == (10, 2)


def test_an_older_seq_is_ignored_and_another_writers_seq_applied(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(2, {"a": FlagDelta(1, 0)}))
        await store.push(batch(1, {"a": FlagDelta(5, 0)}))
        await store.push(batch(1, {"a": FlagDelta(7, 0)}, writer="other"))
        await store.push(batch(3, {"a": FlagDelta(20, 0)}))
        return await store.snapshot()

    assert run_with(local_store, scenario).flags["a"].total == 28


def test_closing_while_a_flush_waits_for_the_lock_applies_the_batch_once(tmp_path: Path) -> None:
    """The flusher is cancelled at close while its thread waits for the lock; the batch lands once."""
    store = LocalStore(str(tmp_path), write_timeout_s=8.0)
    exporter = PrometheusExporter(registry=CollectorRegistry(), store=store, flush_interval_s=0.05)
    event = SimpleNamespace(flag_key="a", reason="STATIC", variant="on", targeting_key="u", latency_ms=1.0)

    async def scenario() -> None:
        await exporter.start()
        with lock_held(tmp_path):
            await exporter.record(event)
            # The periodic flush has cut the batch and its thread is now blocked on the lock.
            await asyncio.to_thread(wait_for, lambda: exporter._buffer.in_flight is not None, 10, "a flush")
            closing = asyncio.create_task(exporter.close(timeout_s=5))
            # close() cancels the periodic flush (whose thread goes on waiting) and sends the batch again.
            cancelled = lambda: exporter._flusher._task is None  # noqa: E731
            await asyncio.to_thread(wait_for, cancelled, 10, "close() to cancel the periodic flush")
            assert not closing.done()  # its delivery waits for the lock too
        await closing

    asyncio.run(scenario())
    stats = LocalStore(str(tmp_path)).read().flags["a"]
    assert (stats.total, stats.errors, stats.unique_users) == (1, 0, 1)


def test_reset_by_one_store_clears_flags_another_store_wrote(tmp_path: Path) -> None:
    async def scenario(writer: LocalStore) -> Snapshot:
        await writer.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50))}))
        other = LocalStore(str(tmp_path))
        try:
            await other.reset()
        finally:
            await other.close()
        return await writer.snapshot()

    assert run_with(LocalStore(str(tmp_path)), scenario).flags == {}


def test_a_pin_replaces_the_computed_figures(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50))}))
        await store.push(batch(2, {}, {"a": Pin(unique_users=7, error_rate=0.5), "pinned-only": Pin(3, 0.25)}))
        await store.push(batch(3, {"a": FlagDelta(1, 0, users(50, 60))}))
        return await store.snapshot()

    flags = run_with(local_store, scenario).flags
    assert (flags["a"].total, flags["a"].errors, flags["a"].unique_users, flags["a"].error_rate) == (11, 2, 7, 0.5)
    assert (flags["pinned-only"].total, flags["pinned-only"].unique_users) == (0, 3)
    assert flags["pinned-only"].error_rate == 0.25


def test_a_pin_vanishes_on_reset(local_store: LocalStore) -> None:
    async def scenario(store: LocalStore) -> tuple[Snapshot, Snapshot]:
        await store.push(batch(1, {"a": FlagDelta(10, 2, users(0, 50))}, {"a": Pin(7, 0.5), "b": Pin(3, 0.25)}))
        await store.reset("a")
        await store.reset("b")
        cleared = await store.snapshot()
        await store.push(batch(2, {"a": FlagDelta(4, 1, users(0, 20))}))
        return cleared, await store.snapshot()

    cleared, again = run_with(local_store, scenario)
    assert cleared.flags == {}
    stats = again.flags["a"]
    assert (stats.total, stats.errors, stats.unique_users, stats.pinned_error_rate) == (4, 1, 20, None)
    assert stats.error_rate == 0.25


def test_a_unicode_flag_key_of_200_characters_round_trips(tmp_path: Path) -> None:
    assert len(UNICODE_KEY) == 200

    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {UNICODE_KEY: FlagDelta(3, 1, users(0, 3))}))
        return await store.snapshot()

    assert list(run_with(LocalStore(None), scenario).flags) == [UNICODE_KEY]
    assert list(run_with(LocalStore(str(tmp_path)), scenario).flags) == [UNICODE_KEY]
    # A fresh store reads the key back from the file.
    assert {key: stats.total for key, stats in LocalStore(str(tmp_path)).read().flags.items()} == {UNICODE_KEY: 3}


def test_memory_mode_gives_the_same_snapshots_as_directory_mode(tmp_path: Path) -> None:
    steps: list[Batch | str | None] = [
        batch(1, {"a": FlagDelta(100, 3, users(0, 300)), "b": FlagDelta(5, 5, users(0, 2))}),
        batch(2, {"a": FlagDelta(50, 0, users(200, 900))}, {"c": Pin(12, 0.125)}),
        "a",
        batch(3, {"a": FlagDelta(1, 1, users(0, 1)), UNICODE_KEY: FlagDelta(2, 0, users(5, 9))}),
        None,
        batch(4, {"b": FlagDelta(9, 1, users(0, 40))}),
    ]

    async def scenario(store: LocalStore) -> list[Snapshot]:
        seen = []
        for step in steps:
            if isinstance(step, Batch):
                await store.push(step)
            else:
                await store.reset(step)
            seen.append(await store.snapshot())
        return seen

    in_directory = run_with(LocalStore(str(tmp_path)), scenario)
    in_memory = run_with(LocalStore(None), scenario)
    assert in_memory == in_directory
    assert in_memory[-1].flags != {}


# -- several processes ----------------------------------------------------------------------------------


def test_concurrent_processes_give_exact_totals_and_the_estimate_of_the_union(tmp_path: Path) -> None:
    directory, signals = tmp_path / "multiproc", tmp_path / "signals"
    directory.mkdir()
    signals.mkdir()
    # Four workers with overlapping users (each shares half its range with the next), 20 per batch.
    ranges = [(p * 2_500, p * 2_500 + 5_000) for p in range(4)]
    step = 20
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                started(
                    [sys.executable, "-c", PUSHER, str(directory), str(signals), f"w{p}", str(a), str(b), str(step)]
                )
            )
            for p, (a, b) in enumerate(ranges)
        ]
        wait_for(lambda: len(list(signals.glob("ready-*"))) == len(procs), 20, "every pusher to start")
        (signals / "go").touch()
        for proc in procs:
            finished(proc)

    snapshot = LocalStore(str(directory)).read()
    union = users(ranges[0][0], ranges[-1][1])
    expected_total = sum(2 * (b - a) for a, b in ranges)
    expected_errors = sum(len(range(a, b, step)) for a, b in ranges)
    assert (snapshot.flags["shared"].total, snapshot.flags["shared"].errors) == (expected_total, expected_errors)
    assert snapshot.flags["shared"].unique_users == reference_estimate(union)
    assert abs(snapshot.flags["shared"].unique_users - len(union)) <= 0.02 * len(union)


def test_contributions_survive_the_process_that_wrote_them(tmp_path: Path) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    (signals / "go").touch()
    with started([sys.executable, "-c", PUSHER, str(tmp_path), str(signals), "gone", "0", "1000", "100"]) as proc:
        finished(proc)
    assert proc.returncode == 0

    stats = LocalStore(str(tmp_path)).read().flags["shared"]
    assert (stats.total, stats.errors) == (2_000, 10)
    assert stats.unique_users == reference_estimate(users(0, 1_000))


def test_file_size_per_flag_does_not_grow_with_the_number_of_users(tmp_path: Path) -> None:
    sizes = {}
    for count in (10, 100_000):
        directory = tmp_path / str(count)
        directory.mkdir()

        async def scenario(store: LocalStore, count: int = count) -> None:
            for start in range(0, count, 25_000):
                await store.push(batch(start + 1, {"f": FlagDelta(1, 0, users(start, min(count, start + 25_000)))}))

        run_with(LocalStore(str(directory)), scenario)
        (flag_file,) = glob.glob(str(directory / FLAG_FILES))
        sizes[count] = os.path.getsize(flag_file)
    assert sizes[10] == sizes[100_000]
    assert sizes[10] <= 32 * 1024  # 16 KiB of registers and a header


def test_each_flag_has_one_file_named_by_a_hash_of_its_key(tmp_path: Path) -> None:
    async def scenario(store: LocalStore) -> None:
        await store.push(batch(1, {UNICODE_KEY: FlagDelta(1, 0, users(0, 1)), "b/../../x": FlagDelta(1, 0)}))

    run_with(LocalStore(str(tmp_path)), scenario)
    expected = {
        f"flagmetrics-flag-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.bin"
        for key in (UNICODE_KEY, "b/../../x")
    }
    assert {Path(name).name for name in glob.glob(str(tmp_path / FLAG_FILES))} == expected


# -- failures -------------------------------------------------------------------------------------------


def test_a_missing_directory_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a directory") as raised:
        LocalStore(str(tmp_path / "missing"))
    assert raised.value.transient is False


def test_a_directory_removed_after_construction_raises_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    store = LocalStore(str(directory))
    directory.rmdir()
    with pytest.raises(StoreError):
        run_with(store, lambda s: s.push(batch(1, {"a": FlagDelta(1, 0)})))


@contextlib.contextmanager
def lock_held(directory: Path) -> Iterator[None]:
    """Hold the exclusive lock on the directory's state lock file from an fd of this test."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_snapshot_raises_store_error_within_the_lock_timeout_while_another_process_holds_the_lock(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "locked"
    with started([sys.executable, "-c", LOCK_HOLDER, str(tmp_path), str(marker)]):
        wait_for(marker.exists, 20, "the other process to take the lock")
        store = LocalStore(str(tmp_path), read_timeout_s=0.2, write_timeout_s=0.2)
        began = time.monotonic()
        with pytest.raises(StoreError) as raised:
            run_with(store, lambda s: s.snapshot())
        elapsed = time.monotonic() - began
    assert raised.value.transient is True
    assert 0.2 <= elapsed < 1.0, elapsed


def test_push_raises_store_error_within_the_lock_timeout_and_applies_nothing(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path), read_timeout_s=0.2, write_timeout_s=0.2)
    with lock_held(tmp_path):
        began = time.monotonic()
        with pytest.raises(StoreError):
            run_with(store, lambda s: s.push(batch(1, {"a": FlagDelta(5, 1, users(0, 5))})))
        elapsed = time.monotonic() - began
    assert 0.2 <= elapsed < 1.0, elapsed
    assert LocalStore(str(tmp_path)).read().flags == {}


def test_the_store_works_again_once_the_lock_is_released(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path), read_timeout_s=0.2, write_timeout_s=0.2)
    with lock_held(tmp_path), pytest.raises(StoreError):
        store.read()

    async def scenario(s: LocalStore) -> Snapshot:
        await s.push(batch(1, {"a": FlagDelta(5, 1, users(0, 5))}))
        return await s.snapshot()

    assert run_with(store, scenario).flags["a"].total == 5


def test_a_flag_file_left_zero_filled_by_a_crash_is_initialised_on_next_use(tmp_path: Path) -> None:
    # What a worker killed right after posix_fallocate (before writing the header) leaves behind.
    name = hashlib.blake2b(b"a", digest_size=8).hexdigest()
    (tmp_path / f"flagmetrics-flag-{name}.bin").write_bytes(bytes(_FILE_SIZE))

    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(3, 1, users(0, 3))}))
        return await store.snapshot()

    stats = run_with(LocalStore(str(tmp_path)), scenario).flags["a"]
    assert (stats.total, stats.errors, stats.unique_users) == (3, 1, 3)
