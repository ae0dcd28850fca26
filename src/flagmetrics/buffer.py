"""The per-worker buffer between `record()` and the store: counts, raw user ids, and the batch in flight."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Iterable

from flagmetrics.stores.base import Batch, FlagDelta, Pin

__all__ = ["DIGEST_SIZE", "Buffer", "FlagBuffer", "digest_users"]

DIGEST_SIZE = 8
"""Bytes of a user-id digest: 64 bits, the same width Redis's HyperLogLog hashes to."""


def digest_users(keys: Iterable[str], hash_key: bytes) -> frozenset[bytes]:
    """Hash user ids to fixed-length digests (BLAKE2b, keyed with `hash_key` when given)."""
    blake = hashlib.blake2b
    return frozenset(
        blake(key.encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE, key=hash_key).digest()
        for key in keys
    )


class FlagBuffer:
    """One flag's evaluations since the last cut; `record()` updates it in place."""

    __slots__ = ("errors", "total", "users")

    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.users: set[str] = set()


class Buffer:
    """Everything a worker has recorded but not yet delivered to the store.

    `room` counts the user ids that may still be buffered, undelivered batches included; `record()`
    decrements it and counts a drop when it is zero. One batch at most is in flight: while it is
    undelivered, new evaluations keep accumulating in the flag buffers.
    """

    __slots__ = ("_in_flight", "_pins", "_seq", "capacity", "flags", "room", "writer")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.room = capacity
        self.flags: dict[str, FlagBuffer] = {}
        self._pins: dict[str, Pin] = {}
        self._seq = 0
        self._in_flight: tuple[Batch, int] | None = None
        # Identifies this process's batches in the store: host, pid and a random token, so neither
        # another host with the same pid nor a later process reusing the pid is mistaken for it.
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def flag(self, flag_key: str) -> FlagBuffer:
        """Return the buffer of a flag, creating it."""
        buf = self.flags.get(flag_key)
        if buf is None:
            buf = self.flags[flag_key] = FlagBuffer()
        return buf

    def pin(self, flag_key: str, pin: Pin) -> None:
        """Queue figures that replace a flag's computed gauges."""
        self._pins[flag_key] = pin

    def discard(self, flag_key: str | None = None) -> None:
        """Forget what is buffered for one flag, or for all, returning its room."""
        for key, buf in self.flags.items():
            if flag_key is None or key == flag_key:
                self.room += len(buf.users)
                buf.total = buf.errors = 0
                buf.users = set()
        if flag_key is None:
            self._pins.clear()
        else:
            self._pins.pop(flag_key, None)

    @property
    def in_flight(self) -> Batch | None:
        """The batch cut but not yet delivered."""
        return self._in_flight[0] if self._in_flight else None

    def cut(self, hash_key: bytes = b"") -> Batch | None:
        """Move the buffered evaluations into a new in-flight batch, user ids hashed; None if empty."""
        if self._in_flight is not None:
            raise RuntimeError("a batch is already in flight; deliver it before cutting another")
        deltas: dict[str, FlagDelta] = {}
        users = 0
        for key, buf in self.flags.items():
            if buf.total or buf.users:
                deltas[key] = FlagDelta(buf.total, buf.errors, digest_users(buf.users, hash_key))
                users += len(buf.users)
                buf.total = buf.errors = 0
                buf.users = set()
        if not deltas and not self._pins:
            return None
        self._seq += 1
        batch = Batch(writer=self.writer, seq=self._seq, flags=deltas, pins=self._pins)
        self._pins = {}
        self._in_flight = (batch, users)
        return batch

    def delivered(self) -> None:
        """Mark the in-flight batch applied by the store, freeing its room."""
        if self._in_flight is not None:
            self.room += self._in_flight[1]
            self._in_flight = None

    def abandon(self) -> tuple[int, int]:
        """Drop everything undelivered (at close, with the store unreachable).

        Returns (evaluations, user ids) lost, for the caller to count.
        """
        events = users = 0
        if self._in_flight is not None:
            events += self._in_flight[0].events
            users += self._in_flight[1]
            self._in_flight = None
        for buf in self.flags.values():
            events += buf.total
            users += len(buf.users)
        self.discard()
        self.room = self.capacity
        return events, users
