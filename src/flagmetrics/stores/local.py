"""`LocalStore`: fleet state for one host, in files beside prometheus_client's, shared by every worker.

One file per flag holds its evaluation and error counts, the time of its latest evaluation, a pinned
override and a HyperLogLog sketch with its register-value histogram. Workers apply their batches
under an exclusive lock on the directory's state lock file; a scrape reads every flag's header under
a shared lock. Files outlive the workers that wrote them, so recycled and crashed workers'
contributions stay, and every figure only grows (until `reset`). Without a directory (a single
process) the same layout lives in memory.

The trailing windows live in one SQLite database beside the flag files (`flagmetrics-windows.sqlite`):
a row per flag, variant (empty for the flag as a whole) and user digest with the time it was last
seen, rounded down to the *quantum* (the greatest common divisor of the windows' bucket lengths: 5
minutes for the default windows), which says which bucket of every window the user was last seen
in. A window's figure is an exact count of the distinct users of its buckets (as on Redis: the window
and at most one bucket more) up to 16,384 of them (past that, an adaptive sample of the digests per
window: see `_sample`), computed once per bucket of the window (see `flagmetrics.windows`) by the
first scrape that needs it and kept for the others. Rows no window needs any more are deleted once a
minute: at most about 16,384 rows of some 50 bytes per window, flag and variant.

Writing a user's row costs several microseconds (a B-tree insert; one for the flag and one for the
variant served), against under one for the rest of a flush. So each process remembers which users
of each flag and variant it has written in the current quantum (`_Remembered`: a table of at most
`WRITTEN_SLOTS` 8-byte slots, 8 MiB), and a user seen again within it costs neither a row nor a
sketch update: their row already carries that time, or a later one. What it remembers is forgotten
when the quantum ends and whenever any process resets a flag or computes the figures (both count in
the database), and is never trusted for a batch of an earlier quantum.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import hashlib
import json
import math
import mmap
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Final

from flagmetrics import locks, sketch
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.stores.base import Batch, FlagStats, Snapshot, WindowStats, joined_digests
from flagmetrics.windows import DEFAULT_WINDOWS, Window, parse_windows

__all__ = ["LocalStore"]

_MAGIC: Final = b"FMHLL001"
# Byte offsets in a flag file.
_COUNTS = 16  # total, errors: two unsigned 64-bit integers
_PIN = 32  # pinned flag (u64), unique users (u64), error rate (f64)
_SEEN = 56  # the latest evaluation (f64, Unix seconds; 0: unknown)
_HISTOGRAM = 64  # 64 unsigned 32-bit counts of register values
_KEY = 320  # the flag key, UTF-8, its length at byte 8
_KEY_SPACE = 1024
_REGISTERS = 2048
_FILE_SIZE: Final = _REGISTERS + sketch.REGISTERS
_HEADER = struct.Struct("<8sI4x")
_COUNTS_FMT = struct.Struct("<QQ")
_PIN_FMT = struct.Struct("<QQd")
_SEEN_FMT = struct.Struct("<d")
_DATABASE = "flagmetrics-windows.sqlite"
_PRUNE_INTERVAL_S = 60.0  # how often a writer deletes rows no window needs any more
# A write-ahead log, synced at checkpoints only: a crashed process cannot corrupt the database, and a
# flush does not wait for the disk (the windows are a view of the last days, not the counts).
_PRAGMAS = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
_SCHEMA = """
DROP TABLE IF EXISTS seen;
CREATE TABLE IF NOT EXISTS users (
    flag TEXT NOT NULL, variant TEXT NOT NULL, user INTEGER NOT NULL, t INTEGER NOT NULL,
    PRIMARY KEY (flag, variant, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS levels (
    seconds INTEGER NOT NULL, flag TEXT NOT NULL, variant TEXT NOT NULL, level INTEGER NOT NULL,
    bound INTEGER NOT NULL, PRIMARY KEY (seconds, flag, variant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS figures (
    seconds INTEGER NOT NULL, bucket INTEGER NOT NULL, flag TEXT NOT NULL, variant TEXT NOT NULL,
    users INTEGER NOT NULL, PRIMARY KEY (seconds, flag, variant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS computed (seconds INTEGER PRIMARY KEY, bucket INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS splits (flag TEXT PRIMARY KEY, weights TEXT NOT NULL);
"""
# The `computed` row of seconds 0 counts the times the figures changed (computed or reset), so that
# a process parses them again only then.
_NEXT_GENERATION = (
    "INSERT INTO computed (seconds, bucket) VALUES (0, 1) ON CONFLICT (seconds) DO UPDATE SET bucket = bucket + 1"
)
_UPSERT = (
    "INSERT INTO users (flag, variant, user, t) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (flag, variant, user) DO UPDATE SET t = excluded.t WHERE excluded.t > t"
)
# The users of a window's sample: seen since `t` and in the sample of its level (mask 2^level - 1).
_COUNT_SAMPLE = "SELECT count(*) FROM users WHERE flag = ? AND variant = ? AND t >= ? AND (user & ?) = 0"
WINDOW_SAMPLE_SIZE: Final = 16_384
"""Most users kept per window, flag and variant; past it, an adaptive sample (see `LocalStore`)."""
WRITTEN_SLOTS: Final = 1 << 20
"""Most slots of the table remembering the users written in the current quantum (`_Remembered`): 8 MiB."""
_FIRST_SLOTS: Final = 1 << 16
_U64: Final = (1 << 64) - 1


class _FlagFile:
    """One flag's region: a shared mmap of its file, or a bytearray in memory."""

    __slots__ = ("buffer", "counts", "histogram", "registers")

    def __init__(self, buffer: mmap.mmap | bytearray) -> None:
        self.buffer = buffer
        view = memoryview(buffer)
        self.histogram = view[_HISTOGRAM : _HISTOGRAM + 4 * sketch.HISTOGRAM_SIZE].cast("I")
        self.registers = view[_REGISTERS:_FILE_SIZE]
        self.counts = view[_COUNTS:_PIN].cast("Q")

    def close(self) -> None:
        self.histogram.release()
        self.registers.release()
        self.counts.release()
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()


def _initialise(buffer: mmap.mmap | bytearray, flag_key: str) -> None:
    key = flag_key.encode("utf-8")[:_KEY_SPACE]
    buffer[0 : _HEADER.size] = _HEADER.pack(_MAGIC, len(key))
    buffer[_KEY : _KEY + len(key)] = key
    _clear(buffer)


def _clear(buffer: mmap.mmap | bytearray) -> None:
    buffer[_COUNTS:_HISTOGRAM] = bytes(_HISTOGRAM - _COUNTS)
    histogram = [0] * sketch.HISTOGRAM_SIZE
    histogram[0] = sketch.REGISTERS
    buffer[_HISTOGRAM : _HISTOGRAM + 4 * sketch.HISTOGRAM_SIZE] = struct.pack(f"<{sketch.HISTOGRAM_SIZE}I", *histogram)
    buffer[_REGISTERS:_FILE_SIZE] = bytes(sketch.REGISTERS)


def _parse(
    header: bytes,
    windows: Mapping[str, Mapping[str, WindowStats]],
    no_windows: Mapping[str, WindowStats],
    splits: Mapping[str, Mapping[str, float]],
) -> tuple[str, FlagStats] | None:
    """Read a flag's key and figures from the first `_REGISTERS` bytes of its file, with its windows
    (`no_windows` for a flag without any) and split."""
    if len(header) < _REGISTERS:
        return None
    magic, key_length = _HEADER.unpack_from(header)
    if magic != _MAGIC:
        return None
    total, errors = _COUNTS_FMT.unpack_from(header, _COUNTS)
    pinned, pin_users, pin_rate = _PIN_FMT.unpack_from(header, _PIN)
    (seen,) = _SEEN_FMT.unpack_from(header, _SEEN)
    histogram = struct.unpack_from(f"<{sketch.HISTOGRAM_SIZE}I", header, _HISTOGRAM)
    if not total and not pinned:
        return None
    key = header[_KEY : _KEY + key_length].decode("utf-8", "replace")
    return key, FlagStats(
        windows=windows.get(key, no_windows),
        split=splits.get(key),
        total=total,
        errors=errors,
        unique_users=pin_users if pinned else sketch.estimate(histogram),
        pinned_error_rate=pin_rate if pinned else None,
        last_evaluated_s=seen or None,
    )


class _Remembered:
    """Which users of each flag and variant a process wrote rows for in one quantum: a table of 64-bit keys.

    A key is the user's integer XOR a random salt of the flag and variant; it goes in the first free
    of two slots named by its low and its high bits (0 is free), or else pushes out the first slot's
    key, which then costs a row written again, never a figure. A lookup finds only keys it was given
    (short of a 2^-64 coincidence). The table starts at 512 KiB and quadruples whenever it holds more
    keys than a quarter of its slots, up to `WRITTEN_SLOTS`; forgetting empties it. It lives in an
    anonymous mapping of its own, so that memory a smaller or emptied table no longer uses goes back
    to the system at once (large arrays would stay in the allocator's heap).
    """

    __slots__ = ("_mapping", "_mask", "_salts", "_slots", "_stored", "at")

    def __init__(self) -> None:
        self._mapping, self._slots = _slots(_FIRST_SLOTS)
        self._mask = _FIRST_SLOTS - 1
        self._salts: dict[tuple[str, str], int] = {}
        self._stored = 0
        self.at = (-1, -1)
        """(generation of the figures, quantum) of what is remembered."""

    def forget(self, at: tuple[int, int]) -> None:
        """Forget every user; remember from now on for `at`."""
        if self._stored:
            self._replace(*_slots(len(self._slots)))
        self._salts.clear()
        self._stored = 0
        self.at = at

    def unseen(self, flag_key: str, variant: str, users: list[int]) -> tuple[int, list[int]]:
        """The salt of the flag and variant, and those of `users` it does not remember."""
        salt = self._salts.get((flag_key, variant))
        if salt is None:
            salt = self._salts[flag_key, variant] = secrets.randbits(64) - (1 << 63)
        slots, mask = self._slots, self._mask
        return salt, [
            user for user in users if slots[(key := user ^ salt) & mask] != key and slots[(key >> 32) & mask] != key
        ]

    def note(self, salt: int, users: list[int]) -> None:
        """Remember `users` of the flag and variant with this salt."""
        self._stored += len(users)
        if self._stored > len(self._slots) // 4 and len(self._slots) < WRITTEN_SLOTS:
            self._grow()
        slots, mask = self._slots, self._mask
        for user in users:
            self._put(slots, mask, user ^ salt)

    @staticmethod
    def _put(slots: memoryview, mask: int, key: int) -> None:
        first = key & mask
        if slots[first] in (0, key):
            slots[first] = key
            return
        second = (key >> 32) & mask
        if slots[second] == 0:
            slots[second] = key
        elif slots[second] != key:
            slots[first] = key

    def _grow(self) -> None:
        size = len(self._slots)
        while self._stored > size // 4 and size < WRITTEN_SLOTS:
            size *= 4
        size = min(size, WRITTEN_SLOTS)
        mapping, slots = _slots(size)
        mask = size - 1
        for key in self._slots:
            if key:
                self._put(slots, mask, key)
        self._replace(mapping, slots)
        self._mask = mask

    def _replace(self, mapping: mmap.mmap, slots: memoryview) -> None:
        self._slots.release()
        self._mapping.close()
        self._mapping, self._slots = mapping, slots


def _slots(count: int) -> tuple[mmap.mmap, memoryview]:
    """`count` zeroed 64-bit slots in an anonymous private mapping (pages taken as they are written)."""
    mapping = mmap.mmap(-1, 8 * count, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mapping, memoryview(mapping).cast("q")


class LocalStore:
    """Fleet state of one host in `path` (the multiprocess directory), or in memory when `path` is None."""

    def __init__(
        self,
        path: str | None = None,
        *,
        read_timeout_s: float = locks.READ_TIMEOUT_S,
        write_timeout_s: float = locks.WRITE_TIMEOUT_S,
        windows: str = DEFAULT_WINDOWS,
        clock: Callable[[], float] = time.time,
        window_sample_size: int = WINDOW_SAMPLE_SIZE,
    ) -> None:
        """Keep state in `path`, which must exist; None keeps it in this process only.

        Args:
            read_timeout_s: Longest wait for the directory's lock before a read fails with
                `StoreError`, in seconds (a read waits only while a worker applies a batch).
            write_timeout_s: The same for a write; writes run in the flusher's thread and may wait
                longer behind many workers' batches, but not past the flusher's own timeout.
            windows: The trailing windows of the recent-users figures (`1h,24h,7d`; `off` for none).
            clock: The time (Unix seconds) that decides which users are in a window.
            window_sample_size: Most users kept per window, flag and variant: exact counts up to it,
                an adaptive sample of about that many past it (a standard error near
                `1 / sqrt(window_sample_size / 2)`, 1.1% at the default 16,384).
        """
        if path is not None and not os.path.isdir(path):
            raise StoreError(f"`path` {path!r} is not a directory; create it first", transient=False)
        self._path = path
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._files: dict[str, _FlagFile] = {}
        # The last batch applied per writer. Only this process's buffers push through this object,
        # so remembering it here is enough to apply a batch once when its delivery is retried after
        # a timeout or a cancelled flush whose thread went on and applied it.
        self._applied: dict[str, int] = {}
        self._thread_lock = threading.Lock()
        self._windows = parse_windows(windows)
        self._clock = clock
        if isinstance(window_sample_size, bool) or not isinstance(window_sample_size, int) or window_sample_size < 64:
            raise ConfigurationError(
                f"`window_sample_size` must be a whole number of at least 64, got {window_sample_size!r}"
            )
        self._sample_size = window_sample_size
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._next_prune = 0.0
        self._parsed_figures: tuple[dict[int, int], dict[str, dict[str, WindowStats]]] | None = None
        # Row times are rounded down to the quantum, which divides every window's bucket length.
        self._quantum = math.gcd(*(window.step for window in self._windows)) if self._windows else 1
        # The users this process wrote rows for in the current quantum.
        self._written = _Remembered()

    @property
    def windows(self) -> tuple[Window, ...]:
        """The trailing windows this store keeps figures for."""
        return self._windows

    @property
    def path(self) -> str | None:
        """The directory holding the state, or None in memory."""
        return self._path

    async def push(self, batch: Batch) -> None:
        """Apply `batch` under the directory's exclusive lock (in a thread), once per `(writer, seq)`."""
        await asyncio.to_thread(self._apply, batch)

    async def snapshot(self) -> Snapshot:
        """Read every flag's figures under the directory's shared lock (in a thread)."""
        return await asyncio.to_thread(self.read)

    async def reset(self, flag_key: str | None = None) -> None:
        """Clear one flag's figures, or every flag's."""
        await asyncio.to_thread(self._reset, flag_key)

    async def close(self) -> None:
        """Unmap this process's flag files (in a thread: a write in progress may hold them)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._thread_lock:
            for region in self._files.values():
                region.close()
            self._files.clear()
            if self._db is not None:
                self._db.close()
                self._db = None

    def read(self) -> Snapshot:
        """Read every flag's figures (blocking)."""
        flags: dict[str, FlagStats] = {}
        now = self._clock()
        with self._locked(exclusive=False, timeout_s=self._read_timeout_s):
            if self._path is None:
                headers = [bytes(region.buffer[:_REGISTERS]) for region in self._files.values()]
            else:
                headers = []
                for name in glob.glob(os.path.join(self._path, "flagmetrics-flag-*.bin")):
                    with contextlib.suppress(FileNotFoundError), open(name, "rb") as file:
                        headers.append(file.read(_REGISTERS))
            figures = self._figures(now) if self._windows else None
            splits = self._splits()
        if figures is None and self._windows:
            # A bucket began since the figures were computed: the first reader computes them.
            with self._locked(exclusive=True, timeout_s=self._read_timeout_s):
                figures = self._figures(now, compute=True)
        no_windows = _window_figures(self._windows, {})
        for header in headers:
            parsed = _parse(header, figures or {}, no_windows, splits)
            if parsed is not None:
                flags[parsed[0]] = parsed[1]
        return Snapshot(flags=flags)

    def _figures(self, now: float, *, compute: bool = False) -> dict[str, dict[str, WindowStats]] | None:
        """Every flag's window figures by window label (for the flags that have any), or None when one is
        stale and `compute` is off. Parsed once per bucket: kept until the figures are computed again."""
        db = self._database(create=compute)
        if db is None:
            return {}
        try:
            computed = dict(db.execute("SELECT seconds, bucket FROM computed").fetchall())
            stale = [window for window in self._windows if computed.get(window.seconds) != window.bucket(now)]
            if stale:
                if not compute:
                    return None
                with db:
                    for window in stale:
                        self._compute(db, window, now)
                    db.execute(_NEXT_GENERATION)
                computed = dict(db.execute("SELECT seconds, bucket FROM computed").fetchall())
            if self._parsed_figures is not None and self._parsed_figures[0] == computed:
                return self._parsed_figures[1]
            rows = db.execute("SELECT seconds, flag, variant, users FROM figures").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(
                f"could not read the windows in {self._database_name()!r}: {exc}", transient=False
            ) from exc
        by_flag: dict[str, dict[tuple[int, str], int]] = {}
        for seconds, flag, variant, users in rows:
            by_flag.setdefault(flag, {})[seconds, variant] = users
        figures = {flag: _window_figures(self._windows, counts) for flag, counts in by_flag.items()}
        self._parsed_figures = (computed, figures)
        return figures

    def _splits(self) -> dict[str, dict[str, float]]:
        """Every flag's expected split."""
        db = self._database(create=False)
        if db is None:
            return {}
        try:
            rows = db.execute("SELECT flag, weights FROM splits").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read the splits in {self._database_name()!r}: {exc}", transient=False) from exc
        return {flag: _weights(weights) for flag, weights in rows}

    def _compute(self, db: sqlite3.Connection, window: Window, now: float) -> None:
        db.execute("DELETE FROM figures WHERE seconds = ?", (window.seconds,))
        db.execute(
            "INSERT INTO figures (seconds, bucket, flag, variant, users) "
            "SELECT ?, ?, s.flag, s.variant, count(*) << coalesce(l.level, 0) FROM users AS s "
            "LEFT JOIN levels AS l ON l.seconds = ? AND l.flag = s.flag AND l.variant = s.variant "
            "WHERE s.t >= ? AND (s.user & ((1 << coalesce(l.level, 0)) - 1)) = 0 GROUP BY s.flag, s.variant",
            (window.seconds, window.bucket(now), window.seconds, window.buckets(now)[0] * window.step),
        )
        db.execute(
            "INSERT OR REPLACE INTO computed (seconds, bucket) VALUES (?, ?)", (window.seconds, window.bucket(now))
        )

    def _database_name(self) -> str:
        return ":memory:" if self._path is None else os.path.join(self._path, _DATABASE)

    def _database(self, *, create: bool) -> sqlite3.Connection | None:
        """The windows database (opened once per process), or None when it does not exist and `create` is off."""
        if self._db is not None and self._db_pid == os.getpid():
            return self._db
        name = self._database_name()
        if self._path is not None and not create and not os.path.exists(name):
            return None
        try:
            # Every access happens under the directory's lock and this store's thread lock, so
            # SQLite's own locking never waits and the connection may serve the threads it runs on.
            db = sqlite3.connect(name, timeout=self._write_timeout_s, isolation_level=None, check_same_thread=False)
            db.executescript(_PRAGMAS + _SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"could not open {name!r}: {exc}", transient=False) from exc
        db.isolation_level = "DEFERRED"
        self._db, self._db_pid = db, os.getpid()
        return db

    def _apply(self, batch: Batch) -> None:
        with self._locked(exclusive=True, timeout_s=self._write_timeout_s):
            if batch.seq <= self._applied.get(batch.writer, 0):
                return
            # Open every file and write the windows first: only this can fail, and it changes no
            # count, so a batch is either applied whole or not at all and a retry never counts twice.
            regions = {key: self._region(key) for key in (*batch.flags, *batch.pins)}
            fresh = self._remember(batch) if self._windows or batch.splits else {}
            for key, delta in batch.flags.items():
                region = regions[key]
                region.counts[0] += delta.total
                region.counts[1] += delta.errors
                hashes = fresh.get(key)
                if hashes is None:
                    sketch.add(region.registers, region.histogram, delta.members)
                else:
                    sketch.add_hashes(region.registers, region.histogram, hashes)
                if delta.total and delta.seen > _SEEN_FMT.unpack_from(region.buffer, _SEEN)[0]:
                    _SEEN_FMT.pack_into(region.buffer, _SEEN, delta.seen)
            for key, pin in batch.pins.items():
                _PIN_FMT.pack_into(regions[key].buffer, _PIN, 1, pin.unique_users, pin.error_rate)
            self._applied[batch.writer] = batch.seq

    def _remember(self, batch: Batch) -> dict[str, list[int]]:
        """Record when each user of the batch was seen, per flag and variant served (see `_sample`), and
        the splits; once a minute first delete the rows no window needs, and the levels of windows left
        without users (back to 0).

        Returns, per flag with users, the hashes (unsigned) of those its sketch may not hold yet.
        """
        db = self._database(create=True)
        assert db is not None
        now = self._clock()
        prune = bool(self._windows) and now >= self._next_prune
        fresh: dict[str, list[int]] = {}
        written: list[tuple[int, list[int]]] = []
        try:
            with db:
                if prune:  # first: a window left without users samples the batch's users at level 0
                    self._prune(db, now)
                if self._windows:
                    fresh, written = self._sample(db, batch, now)
                db.executemany(
                    "INSERT OR REPLACE INTO splits (flag, weights) VALUES (?, ?)",
                    [(key, json.dumps(weights)) for key, weights in batch.splits.items()],
                )
        except sqlite3.Error as exc:
            raise StoreError(
                f"could not write the windows in {self._database_name()!r}: {exc}", transient=False
            ) from exc
        if prune:
            self._next_prune = now + _PRUNE_INTERVAL_S
        for salt, users in written:  # committed: remember them
            self._written.note(salt, users)
        return fresh

    def _since(self, window: Window, now: float) -> int:
        """The earliest row time a window may still need: its oldest bucket and one more."""
        return (window.buckets(now)[0] - 1) * window.step

    def _sample(
        self, db: sqlite3.Connection, batch: Batch, now: float
    ) -> tuple[dict[str, list[int]], list[tuple[int, list[int]]]]:
        """Add the batch's users to each window's sample, raising a sample's level past its size.

        A window, flag and variant counts every user until it holds `window_sample_size` of them;
        past that only the users whose digest ends in `level` zero bits (each level halves the
        sample), and its figures are the sample's count times 2^level. A row is kept while some
        window needs it: seen since that window's oldest bucket and in its sample.

        Returns the hashes (unsigned) of each flag's users not written in the current quantum yet, and
        the users to remember as written (by salt) once the transaction is committed.
        """
        keys = [
            (key, variant, _users(served), delta.seen)
            for key, delta in batch.flags.items()
            if delta.seen
            for variant, served in (("", delta.members), *delta.variants.items())
        ]
        if not keys:
            return {}, []
        written = self._unwritten(db, keys)
        fresh = {key: [user & _U64 for user in served] for key, variant, served, _ in keys if not variant}
        levels = {
            (seconds, flag, variant): (level, bound)
            for seconds, flag, variant, level, bound in db.execute("SELECT * FROM levels").fetchall()
        }
        rows: list[tuple[str, str, int, int]] = []
        grown = []
        for key, variant, served, seen in keys:
            current = [levels.get((window.seconds, key, variant), (0, 0)) for window in self._windows]
            lowest = min(level for level, _ in current)
            # A user outside the lowest level's sample is in no window's sample.
            users = [user for user in served if user & ((1 << lowest) - 1) == 0] if lowest else served
            # The quantum, not the time: a user seen again within it is a lookup, not a write.
            t = int(seen // self._quantum) * self._quantum
            rows += [(key, variant, user, t) for user in users]
            for window, (level, bound) in zip(self._windows, current, strict=True):
                mask = (1 << level) - 1
                added = len(users) if level == lowest else sum(1 for user in users if user & mask == 0)
                grown.append((window, key, variant, level, bound + added))
        db.executemany(_UPSERT, rows)
        settled = []
        thinned = set()
        for window, key, variant, level, bound in grown:
            if bound > self._sample_size:  # perhaps too many: count, and halve the sample until it fits
                since = self._since(window, now)
                bound = db.execute(_COUNT_SAMPLE, (key, variant, since, (1 << level) - 1)).fetchone()[0]
                while bound > self._sample_size:
                    level += 1
                    thinned.add((key, variant))
                    bound = db.execute(_COUNT_SAMPLE, (key, variant, since, (1 << level) - 1)).fetchone()[0]
            settled.append((window.seconds, key, variant, level, bound))
        db.executemany("INSERT OR REPLACE INTO levels VALUES (?, ?, ?, ?, ?)", settled)
        if thinned:
            self._drop_unneeded(db, now, thinned)
        return fresh, written

    def _drop_unneeded(self, db: sqlite3.Connection, now: float, keys: Iterable[tuple[str, str]]) -> None:
        """Delete the rows of these flags and variants that no window's sample needs."""
        needed = " OR ".join("(t >= ? AND (user & ?) = 0)" for _ in self._windows)
        for key, variant in keys:
            args: list[Any] = [key, variant]
            for window in self._windows:
                found = db.execute(
                    "SELECT level FROM levels WHERE seconds = ? AND flag = ? AND variant = ?",
                    (window.seconds, key, variant),
                ).fetchone()
                args += (self._since(window, now), (1 << (found[0] if found else 0)) - 1)
            # `needed` repeats a constant condition per window: every value is a parameter.
            db.execute(f"DELETE FROM users WHERE flag = ? AND variant = ? AND NOT ({needed})", args)  # noqa: S608

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        """Delete the rows no window needs, and the levels of windows left without users."""
        db.execute("DELETE FROM users WHERE t < ?", (min(self._since(window, now) for window in self._windows),))
        sampled = db.execute("SELECT DISTINCT flag, variant FROM levels WHERE level > 0").fetchall()
        self._drop_unneeded(db, now, sampled)
        for window in self._windows:
            db.execute(
                "DELETE FROM levels WHERE seconds = ? AND NOT EXISTS (SELECT 1 FROM users AS s "
                "WHERE s.flag = levels.flag AND s.variant = levels.variant AND s.t >= ?)",
                (window.seconds, self._since(window, now)),
            )

    def _unwritten(
        self, db: sqlite3.Connection, keys: list[tuple[str, str, list[int], float]]
    ) -> list[tuple[int, list[int]]]:
        """Remove from `keys` (in place) the users written in the current quantum.

        Returns the users to remember once the batch is committed (by salt): none for a batch of an
        earlier quantum.
        """
        row = db.execute("SELECT bucket FROM computed WHERE seconds = 0").fetchone()
        generation = row[0] if row else 0
        quantum = max(int(seen // self._quantum) for _, _, _, seen in keys)
        remembered = self._written
        if generation != remembered.at[0] or quantum > remembered.at[1]:
            remembered.forget((generation, quantum))
        written = []
        for n, (key, variant, served, seen) in enumerate(keys):
            if int(seen // self._quantum) != remembered.at[1]:
                continue  # an earlier quantum: its rows may be older than what is remembered
            salt, unseen = remembered.unseen(key, variant, served)
            keys[n] = (key, variant, unseen, seen)
            if unseen:
                written.append((salt, unseen))
        return written

    def _reset(self, flag_key: str | None) -> None:
        with self._locked(exclusive=True, timeout_s=self._write_timeout_s):
            db = self._database(create=False)
            if db is not None:
                with db:
                    if flag_key is None:
                        db.execute("DELETE FROM users")
                        db.execute("DELETE FROM levels")
                        db.execute("DELETE FROM figures")
                    else:
                        db.execute("DELETE FROM users WHERE flag = ?", (flag_key,))
                        db.execute("DELETE FROM levels WHERE flag = ?", (flag_key,))
                        db.execute("DELETE FROM figures WHERE flag = ?", (flag_key,))
                    db.execute("DELETE FROM computed WHERE seconds > 0")  # computed again by the next read
                    db.execute(_NEXT_GENERATION)  # and parsed again by every process
            if flag_key is not None:
                _clear(self._region(flag_key).buffer)
                return
            if self._path is not None:
                for name in glob.glob(os.path.join(self._path, "flagmetrics-flag-*.bin")):
                    with open(name, "r+b") as file, mmap.mmap(file.fileno(), _FILE_SIZE) as buffer:
                        _clear(buffer)
            for region in self._files.values():
                _clear(region.buffer)

    def _region(self, flag_key: str) -> _FlagFile:
        """Return the open region of a flag, creating its file (call with the exclusive lock held)."""
        region = self._files.get(flag_key)
        if region is not None:
            return region
        if self._path is None:
            buffer: mmap.mmap | bytearray = bytearray(_FILE_SIZE)
            _initialise(buffer, flag_key)
        else:
            name = hashlib.blake2b(flag_key.encode("utf-8"), digest_size=8).hexdigest()
            filename = os.path.join(self._path, f"flagmetrics-flag-{name}.bin")
            try:
                fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise StoreError(f"could not open {filename!r}: {exc}", transient=False) from exc
            try:
                if os.fstat(fd).st_size < _FILE_SIZE:
                    # Reserve the blocks now so that writing through the map can never fail later.
                    os.posix_fallocate(fd, 0, _FILE_SIZE)
                buffer = mmap.mmap(fd, _FILE_SIZE)
            except OSError as exc:
                raise StoreError(f"could not map {filename!r}: {exc}", transient=False) from exc
            finally:
                os.close(fd)
            if buffer[: len(_MAGIC)] != _MAGIC:
                # New, or left unwritten by a process killed right after creating it.
                _initialise(buffer, flag_key)
        region = self._files[flag_key] = _FlagFile(buffer)
        return region

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool, timeout_s: float) -> Iterator[None]:
        with self._thread_lock:
            if self._path is None:
                yield
                return
            try:
                with locks.hold(self._path, locks.STATE_LOCK, exclusive=exclusive, timeout_s=timeout_s):
                    yield
            except TimeoutError as exc:
                raise StoreError(f"could not lock the state in {self._path!r}: {exc}") from exc
            except OSError as exc:  # the lock file cannot be opened: the directory is gone or unwritable
                raise StoreError(f"could not lock the state in {self._path!r}: {exc}", transient=False) from exc

    def __repr__(self) -> str:
        return f"LocalStore(path={self._path!r})"


def _user(digest: bytes) -> int:
    """A user digest as SQLite's 64-bit integer."""
    return int.from_bytes(digest[:8], "little", signed=True)


def _users(digests: Collection[bytes]) -> list[int]:
    """User digests as SQLite's 64-bit integers (`_user` of each), in one C call for the buffer's 8-byte digests."""
    joined = joined_digests(digests)
    if joined is not None:
        return list(struct.unpack(f"<{len(digests)}q", joined))
    return [_user(digest) for digest in digests]


@functools.lru_cache(maxsize=100_000)
def _weights(text: str) -> dict[str, float]:
    """Expected weights as the database keeps them (JSON)."""
    return {str(variant): float(weight) for variant, weight in json.loads(text).items()}


def _window_figures(windows: tuple[Window, ...], counts: Mapping[tuple[int, str], int]) -> dict[str, WindowStats]:
    """A flag's figures per window label from its counts by (seconds, variant; "" for the flag)."""
    return {
        window.label: WindowStats(
            counts.get((window.seconds, ""), 0),
            {variant: users for (seconds, variant), users in counts.items() if seconds == window.seconds and variant},
        )
        for window in windows
    }
