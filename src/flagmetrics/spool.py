"""Internal: the spool: batches a worker could not deliver, written to disk for any worker of the host to deliver later.

A batch goes to the spool when a flush fails (the store is down or hanging) and when a stopping worker
cannot reach the store. From then on the file is the batch: the worker frees its memory, and delivers
its spooled batches first, oldest first, when the store answers again, so the store's `(writer, seq)`
check still sees each writer's batches in order.

Files, in the spool directory (0700):

- `<writer>~<seq>~<target>.batch`: one batch, written atomically (temporary file, fsync, rename);
  `<target>` names the store it is for, so apps sharing a directory never deliver each other's.
- `<writer>.lock`: held (flock) for life by the process that writes as `<writer>`. A process that can
  take another writer's lock knows that writer is gone (its lock died with it, SIGKILL included), and
  holds the lock while it delivers that writer's batches, in order: two processes never deliver one
  writer's batches at once. A process killed while delivering releases the lock; the next one
  delivers what is left, and the store skips what had landed.
- `<name>.corrupt`: a batch file that failed its checks (truncated, bit rot), set aside and counted.

A batch file: `FMSPOOL1`, the body's length and CRC-32 (4 bytes each, big-endian), then the body: the
length of a JSON header (4 bytes), the header (writer, seq, target, each flag's counts, pins and
splits), and the user digests, 8 bytes each, in the header's order.

Past `max_bytes` in the directory, the oldest batches this process may touch (its own, and those of
writers that are gone) lose their user digests, counted as dropped; their evaluation and error counts
are always kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from flagmetrics.buffer import DIGEST_SIZE
from flagmetrics.config import DEFAULT_SPOOL_MAX_BYTES
from flagmetrics.environment import lasting_spool_dir
from flagmetrics.stores.base import Batch, FlagDelta, Pin

__all__ = ["Spool", "SpoolCorrupt", "decode", "encode", "spool_directory", "spool_usage"]


MAGIC: Final = b"FMSPOOL1"
_HEAD = struct.Struct(">II")  # body length, CRC-32 of the body
_LENGTH = struct.Struct(">I")
_SUFFIX: Final = ".batch"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SpoolCorrupt(ValueError):
    """A spool file that fails its checks: truncated, altered, or not a spool file."""


def spool_directory(setting: str | None, multiprocess_dir: str | None) -> str | None:
    """The spool directory: `setting` (FLAGMETRICS_SPOOL_DIR; None for `off`), else `spool` in the
    multiprocess directory, else `lasting_spool_dir()`."""
    if setting:
        return None if setting.strip().lower() == "off" else setting
    if multiprocess_dir:
        return os.path.join(multiprocess_dir, "spool")
    return lasting_spool_dir()


def _private(directory: str) -> None:
    """Create `directory` (0700); check that no other user can write to it or replace it (its parent)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for path in (directory, os.path.dirname(os.path.abspath(directory))):
        info = os.stat(path)
        owners = (os.getuid(),) if path == directory else (os.getuid(), 0)
        if path != directory and info.st_mode & stat.S_ISVTX:
            continue  # a sticky shared directory such as /var/tmp: others cannot replace ours
        if info.st_uid not in owners or info.st_mode & 0o022:
            raise OSError(f"{path!r} is not this user's alone (owner {info.st_uid}, mode {oct(info.st_mode & 0o777)})")


def target_name(target: str) -> str:
    """The short name of a store in file names."""
    return hashlib.sha256(target.encode()).hexdigest()[:16]


def encode(batch: Batch, target: str) -> bytes:
    """A batch as a spool file's bytes."""
    flags: dict[str, list[Any]] = {}
    digests: list[bytes] = []
    for key, delta in batch.flags.items():
        members = sorted(delta.members)
        digests += members
        variants = {}
        for variant, served in delta.variants.items():
            variants[variant] = len(served)
            digests += sorted(served)
        flags[key] = [delta.total, delta.errors, delta.seen, len(members), variants]
    header = json.dumps(
        {
            "writer": batch.writer,
            "seq": batch.seq,
            "target": target,
            "flags": flags,
            "pins": {key: [pin.unique_users, pin.error_rate] for key, pin in batch.pins.items()},
            "splits": {key: dict(weights) for key, weights in batch.splits.items()},
        },
        separators=(",", ":"),
    ).encode()
    body = _LENGTH.pack(len(header)) + header + b"".join(digests)
    return MAGIC + _HEAD.pack(len(body), zlib.crc32(body)) + body


def decode(data: bytes) -> tuple[Batch, str]:
    """The batch and target of a spool file's bytes; raise `SpoolCorrupt` when they fail a check."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEAD.size:
        raise SpoolCorrupt("not a spool file, or cut before its header")
    length, crc = _HEAD.unpack_from(data, len(MAGIC))
    body = data[len(MAGIC) + _HEAD.size :]
    if len(body) != length:
        raise SpoolCorrupt(f"{len(body)} bytes of a {length}-byte body: truncated")
    if zlib.crc32(body) != crc:
        raise SpoolCorrupt("checksum mismatch")
    try:
        (size,) = _LENGTH.unpack_from(body)
        header = json.loads(body[_LENGTH.size : _LENGTH.size + size])
        blob = memoryview(body)[_LENGTH.size + size :]
        at = 0

        def take(count: int) -> frozenset[bytes]:
            nonlocal at
            end = at + count * DIGEST_SIZE
            if count < 0 or end > len(blob):
                raise SpoolCorrupt("fewer user digests than the header says")
            chunk = bytes(blob[at:end])
            at = end
            return frozenset(chunk[i : i + DIGEST_SIZE] for i in range(0, len(chunk), DIGEST_SIZE))

        flags = {}
        for key, (total, errors, seen, members, variants) in header["flags"].items():
            taken = take(int(members))
            served = {str(variant): take(int(n)) for variant, n in variants.items()}
            flags[str(key)] = FlagDelta(int(total), int(errors), taken, float(seen), served)
        if at != len(blob):
            raise SpoolCorrupt("more user digests than the header says")
        batch = Batch(
            writer=str(header["writer"]),
            seq=int(header["seq"]),
            flags=flags,
            pins={str(k): Pin(int(users), float(rate)) for k, (users, rate) in header["pins"].items()},
            splits={str(k): {str(v): float(w) for v, w in weights.items()} for k, weights in header["splits"].items()},
        )
        return batch, str(header["target"])
    except SpoolCorrupt:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
        raise SpoolCorrupt(f"unreadable header: {exc}") from exc


def stripped(batch: Batch) -> Batch:
    """`batch` without its user digests: the counts, pins and splits only."""
    flags = {key: FlagDelta(d.total, d.errors, frozenset(), d.seen, {}) for key, d in batch.flags.items()}
    return Batch(batch.writer, batch.seq, flags, batch.pins, batch.splits)


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    writer: str
    seq: int
    size: int
    mtime_ns: int


def _scan(directory: str, target: str | None = None) -> list[_File]:
    """The batch files of `directory` (of one target when given), oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(_SUFFIX) or entry.name.startswith("."):
                continue
            parts = entry.name[: -len(_SUFFIX)].split("~")
            if len(parts) != 3 or not parts[1].isdigit() or (target is not None and parts[2] != target):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                found.append(_File(entry.path, parts[0], int(parts[1]), stat.st_size, stat.st_mtime_ns))
    found.sort(key=lambda f: (f.mtime_ns, f.writer, f.seq))
    return found


def spool_usage(directory: str) -> tuple[int, int]:
    """Batches and bytes waiting in a spool directory (every store's)."""
    files = _scan(directory)
    return len(files), sum(f.size for f in files)


class Spool:
    """One process's view of a spool directory, for the store named `target`.

    Every method raises only `OSError` (the directory cannot be used); bad files are reported to
    `on_corrupt` and set aside, digests dropped over the limit to `on_dropped`.
    """

    def __init__(
        self,
        directory: str,
        target: str,
        writer: str,
        *,
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        on_corrupt: Callable[[str, str], None] = lambda path, why: None,
        on_dropped: Callable[[int], None] = lambda digests: None,
    ) -> None:
        self.directory = directory
        self.target = target_name(target)
        self.max_bytes = max_bytes
        self._writer = _UNSAFE.sub("_", writer)
        self._on_corrupt = on_corrupt
        self._on_dropped = on_dropped
        self._lock_fd: int | None = None
        self.pending: list[int] = []
        """Seqs of this process's batches waiting in the spool, oldest first."""

    # -- this process's batches --------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Write `batch` to the spool atomically, making room past the limit; raise `OSError` when it cannot."""
        self._own_lock()
        data = encode(batch, self.target)
        over = self._used() + len(data) - self.max_bytes
        if over > 0:
            over -= self._make_room(over)
            if over > 0 and batch.members:
                self._on_dropped(batch.members)
                batch = stripped(batch)
                data = encode(batch, self.target)
        _write_atomically(self._path(self._writer, batch.seq), data)
        self.pending.append(batch.seq)

    def read_own(self, seq: int) -> Batch | None:
        """This process's spooled batch `seq`; None (and set aside) when its file is damaged or gone."""
        return self._read(self._path(self._writer, seq))

    def remove_own(self, seq: int) -> None:
        """Forget this process's batch `seq`, delivered."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(self._writer, seq))
        if seq in self.pending:
            self.pending.remove(seq)

    def discard(self, flag_key: str | None = None) -> None:
        """Take one flag, or every flag, out of this process's spooled batches (a reset)."""
        for seq in list(self.pending):
            batch = self.read_own(seq) if flag_key is not None else None
            if batch is None:
                self.remove_own(seq)
                continue
            flags = {k: d for k, d in batch.flags.items() if k != flag_key}
            pins = {k: p for k, p in batch.pins.items() if k != flag_key}
            _write_atomically(
                self._path(self._writer, seq), encode(Batch(batch.writer, seq, flags, pins, batch.splits), self.target)
            )

    def close(self) -> None:
        """Release this process's lock (its spooled batches become anyone's to deliver)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- batches of writers that are gone ----------------------------------------------------------

    def orphans(self) -> list[str]:
        """Writers of this target's batches, other than this process, oldest batch first."""
        writers: list[str] = []
        for file in _scan(self.directory, self.target):
            if file.writer != self._writer and file.writer not in writers:
                writers.append(file.writer)
        return writers

    @contextlib.contextmanager
    def adopt(self, writer: str) -> Iterator[Iterator[tuple[str, Batch | None]] | None]:
        """Hold `writer`'s lock and give its batches in order, as (path, batch or None if damaged),
        each read when it is reached (an hour's spool need not fit in memory at once).

        Gives None when the writer is alive or another process delivers its batches. The lock file
        goes when no batch of any target is left.
        """
        fd = _try_lock(self._lock_path(writer))
        if fd is None:
            yield None
            return
        try:
            files = sorted((f for f in _scan(self.directory, self.target) if f.writer == writer), key=lambda f: f.seq)
            yield ((f.path, self._read(f.path)) for f in files)
            if not any(f.writer == writer for f in _scan(self.directory)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self._lock_path(writer))
        finally:
            os.close(fd)

    # -- internals ---------------------------------------------------------------------------------

    def _path(self, writer: str, seq: int) -> str:
        return os.path.join(self.directory, f"{writer}~{seq:012d}~{self.target}{_SUFFIX}")

    def _lock_path(self, writer: str) -> str:
        return os.path.join(self.directory, f"{writer}.lock")

    def _own_lock(self) -> None:
        if self._lock_fd is None:
            _private(self.directory)
            fd = _try_lock(self._lock_path(self._writer))
            if fd is None:
                raise OSError(f"the spool lock of {self._writer} in {self.directory!r} is held by another process")
            self._lock_fd = fd

    def _used(self) -> int:
        return sum(f.size for f in _scan(self.directory))

    def _read(self, path: str) -> Batch | None:
        try:
            with open(path, "rb") as file:
                batch, target = decode(file.read())
            if target != self.target:
                raise SpoolCorrupt(f"written for store {target}, found under {self.target}")
            return batch
        except FileNotFoundError:
            return None
        except SpoolCorrupt as exc:
            with contextlib.suppress(OSError):
                os.replace(path, path + ".corrupt")
            self._on_corrupt(path, str(exc))
            return None

    def _make_room(self, needed: int) -> int:
        """Strip the digests of the oldest batches this process may touch; return the bytes freed."""
        freed = 0
        for file in _scan(self.directory):
            if freed >= needed:
                break
            if file.writer == self._writer:
                freed += self._strip(file)
                continue
            fd = _try_lock(self._lock_path(file.writer))
            if fd is not None:
                try:
                    freed += self._strip(file)
                finally:
                    os.close(fd)
        return freed

    def _strip(self, file: _File) -> int:
        try:
            with open(file.path, "rb") as handle:
                batch, target = decode(handle.read())
        except FileNotFoundError:
            return 0
        except SpoolCorrupt:
            return 0  # its reader sets it aside
        if not batch.members:
            return 0
        data = encode(stripped(batch), target)
        _write_atomically(file.path, data)
        self._on_dropped(batch.members)
        return file.size - len(data)


def _try_lock(path: str) -> int | None:
    """An fd holding `path`'s exclusive lock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the whole of it or nothing, and it survives a crash."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
