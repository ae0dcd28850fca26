"""`LocalStore`: one host's fleet state in the multiprocess directory, shared by real processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import hashlib
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
from flagmetrics.stores.local import _FILE_SIZE, WRITTEN_SLOTS, LocalStore, _Remembered
from tests.helpers import UNICODE_KEY, batch, run_with, users
from tests.processes import REPO, wait_for

LOCK_FILE = "flagmetrics-state.lock"
FLAG_FILES = "flagmetrics-flag-*.bin"


def reference_estimate(digests: frozenset[bytes]) -> int:
    """The unique-user figure of one in-memory store fed `digests` at once."""

    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"f": FlagDelta(1, 0, digests)}))
        return await store.snapshot()

    snapshot: Snapshot = run_with(LocalStore(None), scenario)
    return snapshot.flags["f"].unique_users


@contextlib.contextmanager
def started(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped by its pid when the block ends."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


# -- exactly once ---------------------------------------------------------------------------------


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
                    [
                        sys.executable,
                        "-m",
                        "tests.workers.pusher",
                        str(directory),
                        str(signals),
                        f"w{p}",
                        str(a),
                        str(b),
                        str(step),
                    ]
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
    with started(
        [sys.executable, "-m", "tests.workers.pusher", str(tmp_path), str(signals), "gone", "0", "1000", "100"]
    ) as proc:
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
    with started([sys.executable, "-m", "tests.workers.lock_holder", str(tmp_path), str(marker)]):
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


# -- users seen again within a bucket --------------------------------------------------------------

T0 = 1_800_000_000.0  # a boundary of every bucket used below


def window_figures(snapshot: Snapshot, flag_key: str) -> dict[str, int]:
    return {label: stats.users for label, stats in snapshot.flags[flag_key].windows.items()}


def test_a_user_seen_again_in_a_quantum_costs_no_row_and_changes_no_figure(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path), clock=lambda: T0)

    async def scenario(store: LocalStore) -> tuple[list[int], Snapshot]:
        statements: list[str] = []
        upserts: list[int] = []
        for seq, members in enumerate((users(0, 1_000), users(0, 1_000), users(500, 1_100)), start=1):
            statements.clear()
            await store.push(batch(seq, {"a": FlagDelta(len(members), 0, members, T0, {"on": members})}))
            upserts.append(sum(1 for statement in statements if statement.startswith("INSERT INTO users")))
            database = store._database(create=False)
            assert database is not None
            database.set_trace_callback(statements.append)  # traced from the second push on
        return upserts[1:], await store.snapshot()

    upserts, snapshot = run_with(store, scenario)
    # A row per user for the flag and one for the variant: 2,000 for the first push. Pushed again:
    # only those of users pushed out of the table by others sharing their slots (a few percent).
    # Then 100 new users: 200 rows, and again a few pushed out.
    assert upserts[0] < 0.05 * 2_000
    assert 200 <= upserts[1] < 200 + 0.05 * 2_000
    assert window_figures(snapshot, "a") == {"1h": 1_100, "24h": 1_100, "7d": 1_100}
    assert snapshot.flags["a"].windows["7d"].variants == {"on": 1_100}
    assert snapshot.flags["a"].total == 2_600
    assert abs(snapshot.flags["a"].unique_users - 1_100) <= 0.03 * 1_100


def test_a_reset_by_another_process_is_not_hidden_by_what_a_store_remembers(tmp_path: Path) -> None:
    async def scenario(writer: LocalStore) -> Snapshot:
        await writer.push(batch(1, {"a": FlagDelta(500, 0, users(0, 500), T0)}))
        other = LocalStore(str(tmp_path), clock=lambda: T0)
        try:
            await other.reset("a")
        finally:
            await other.close()
        await writer.push(batch(2, {"a": FlagDelta(500, 0, users(0, 500), T0)}))
        return await writer.snapshot()

    snapshot = run_with(LocalStore(str(tmp_path), clock=lambda: T0), scenario)
    assert snapshot.flags["a"].total == 500
    assert window_figures(snapshot, "a") == {"1h": 500, "24h": 500, "7d": 500}
    assert abs(snapshot.flags["a"].unique_users - 500) <= 0.03 * 500


def test_users_seen_in_a_later_quantum_are_written_again() -> None:
    now = [T0]
    store = LocalStore(None, windows="1m,2m", clock=lambda: now[0])

    async def scenario(store: LocalStore) -> dict[str, int]:
        await store.push(batch(1, {"a": FlagDelta(100, 0, users(0, 100), now[0])}))
        now[0] += 30  # a later quantum (5 s: the minute's buckets)
        await store.push(batch(2, {"a": FlagDelta(100, 0, users(0, 100), now[0])}))
        now[0] += 50  # the first push has left the minute, the second has not
        return window_figures(await store.snapshot(), "a")

    assert run_with(store, scenario) == {"1m": 100, "2m": 100}


def test_a_batch_of_an_earlier_quantum_is_written_whole_and_not_remembered() -> None:
    now = [T0 + 30]
    store = LocalStore(None, windows="1m,2m", clock=lambda: now[0])

    async def scenario(store: LocalStore) -> dict[str, int]:
        await store.push(batch(1, {"a": FlagDelta(100, 0, users(0, 100), T0 + 30)}))
        # Delivered late: cut 30 s earlier, with users of both kinds.
        await store.push(batch(2, {"a": FlagDelta(200, 0, users(0, 200), T0)}))
        await store.push(batch(3, {"a": FlagDelta(100, 0, users(100, 200), T0 + 30)}))
        now[0] = T0 + 80  # the late batch has left the minute
        return window_figures(await store.snapshot(), "a")

    assert run_with(store, scenario) == {"1m": 200, "2m": 200}


def test_windows_whose_buckets_do_not_nest_keep_row_times_to_a_divisor_of_both() -> None:
    # Steps of 5 s (1m) and 6 s (90s): 5 s and 9 s after T0 share a bucket of the minute, not of 90 s,
    # so rows keep times to the second (their greatest common divisor) and the second push is written.
    now = [T0 + 5]
    store = LocalStore(None, windows="1m,90s", clock=lambda: now[0])

    async def scenario(store: LocalStore) -> dict[str, int]:
        await store.push(batch(1, {"a": FlagDelta(10, 0, users(0, 10), T0 + 5)}))
        await store.push(batch(2, {"a": FlagDelta(10, 0, users(0, 10), T0 + 9)}))
        now[0] = T0 + 97  # the 90 s window holds the second push's bucket, no longer the first's
        return window_figures(await store.snapshot(), "a")

    assert run_with(store, scenario) == {"1m": 0, "90s": 10}


def test_a_store_remembering_users_in_a_tiny_table_keeps_its_figures_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 slots for 300 users: keys push each other out all the time, which may cost rows, never figures.
    monkeypatch.setattr("flagmetrics.stores.local.WRITTEN_SLOTS", 16)
    monkeypatch.setattr("flagmetrics.stores.local._FIRST_SLOTS", 4)
    store = LocalStore(str(tmp_path), clock=lambda: T0)

    async def scenario(store: LocalStore) -> Snapshot:
        for seq, (first, stop) in enumerate(((0, 200), (0, 200), (150, 300)), start=1):
            members = users(first, stop)
            await store.push(batch(seq, {"a": FlagDelta(len(members), 0, members, T0, {"on": members})}))
        return await store.snapshot()

    snapshot = run_with(store, scenario)
    assert window_figures(snapshot, "a") == {"1h": 300, "24h": 300, "7d": 300}
    assert snapshot.flags["a"].windows["1h"].variants == {"on": 300}
    assert abs(snapshot.flags["a"].unique_users - 300) <= 0.03 * 300


def test_what_a_store_remembers_grows_to_its_bound_and_finds_what_it_was_told() -> None:
    remembered = _Remembered()
    told = list(range(1, 100_001))
    salt, unseen = remembered.unseen("a", "", told)
    assert unseen == told
    remembered.note(salt, told)
    assert len(remembered._slots) == WRITTEN_SLOTS  # 65,536 slots at first, quadrupled while it filled
    _, again = remembered.unseen("a", "", told)
    assert len(again) < 0.15 * len(told)  # most remembered; the rest pushed out by others sharing a slot
    _, other_variant = remembered.unseen("a", "on", told[:1_000])
    assert other_variant == told[:1_000]
    remembered.forget((0, 1))
    _, forgotten = remembered.unseen("a", "", told[:1_000])
    assert forgotten == told[:1_000]


def test_digests_longer_than_eight_bytes_count_by_their_first_eight() -> None:
    long_digests = frozenset(digest + b"\x00" * 8 for digest in users(0, 50))
    store = LocalStore(None, clock=lambda: T0)

    async def scenario(store: LocalStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(50, 0, long_digests, T0)}))
        await store.push(batch(2, {"b": FlagDelta(50, 0, users(0, 50), T0)}))
        return await store.snapshot()

    snapshot = run_with(store, scenario)
    assert window_figures(snapshot, "a") == window_figures(snapshot, "b") == {"1h": 50, "24h": 50, "7d": 50}
    assert snapshot.flags["a"].unique_users == snapshot.flags["b"].unique_users
