"""Internal: the per-worker buffer between `record()` and the store: counts, raw user ids, and the batch in flight."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from flagmetrics.stores.base import Batch, FlagDelta, Pin

__all__ = ["DIGEST_SIZE", "Buffer", "FlagBuffer", "digest_users"]

DIGEST_SIZE = 8
"""Bytes of a user-id digest: 64 bits, the same width Redis's HyperLogLog hashes to."""


def digest_users(keys: Iterable[str], hash_key: bytes) -> frozenset[bytes]:
    """Hash user ids to fixed-length digests (BLAKE2b, keyed with `hash_key` when given)."""
    return frozenset(_digests(keys, hash_key).values())


def _digests(keys: Iterable[str], hash_key: bytes) -> dict[str, bytes]:
    # Copying a keyed hasher is about 30% cheaper per user than building one (no arguments to parse).
    base = _hashers.get(hash_key)
    if base is None:
        base = _hashers[hash_key] = hashlib.blake2b(digest_size=DIGEST_SIZE, key=hash_key)
    digests = {}
    for key in keys:
        hasher = base.copy()
        hasher.update(key.encode("utf-8", "surrogatepass"))
        digests[key] = hasher.digest()
    return digests


_hashers: dict[bytes, Any] = {}
"""An empty keyed BLAKE2b hasher per hash key, copied for each user id."""


def _delta(
    total: int, errors: int, users: set[str], variants: dict[str, set[str]], digests: dict[str, bytes], now: float
) -> FlagDelta:
    """A flag's share of a batch, its users' and each variant's digests taken from `digests`."""
    exposed = {variant: frozenset([digests[user] for user in served]) for variant, served in variants.items()}
    return FlagDelta(total, errors, frozenset([digests[user] for user in users]), now if total else 0.0, exposed)


class FlagBuffer:
    """One flag's evaluations since the last cut; `record()` updates it in place."""

    __slots__ = ("errors", "total", "users", "variants")

    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.users: set[str] = set()
        self.variants: dict[str, set[str]] = {}
        """The users served each variant (a subset of `users`; no ERROR or variant-less evaluation)."""


class Buffer:
    """Everything a worker has recorded but not yet delivered to the store.

    `room` counts the user ids that may still be buffered, undelivered batches included; `add`
    takes from it and reports a drop when it is empty. One batch at most is in flight: while it is
    undelivered, new evaluations keep accumulating in the flag buffers. A lock guards the state, as
    `record()` may be called from threads (sync OpenFeature evaluations) while the flusher cuts.
    """

    __slots__ = ("_in_flight", "_lock", "_pins", "_seq", "_splits", "capacity", "flags", "room", "writer")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.room = capacity
        self.flags: dict[str, FlagBuffer] = {}
        self._pins: dict[str, Pin] = {}
        self._splits: dict[str, dict[str, float]] = {}
        self._seq = 0
        self._in_flight: tuple[Batch, int] | None = None
        self._lock = threading.Lock()
        # Identifies this process's batches in the store: host, pid and a random token, so neither
        # another host with the same pid nor a later process reusing the pid is mistaken for it.
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def flag(self, flag_key: str) -> FlagBuffer:
        """Return the buffer of a flag, creating it."""
        with self._lock:
            buf = self.flags.get(flag_key)
            if buf is None:
                buf = self.flags[flag_key] = FlagBuffer()
            return buf

    def add(self, flag: FlagBuffer, error: bool, user: str | None, variant: str | None = None) -> bool:
        """Count one evaluation of `flag` and buffer its user (and the variant it was served, if any).

        False when the user had to be dropped.
        """
        with self._lock:
            flag.total += 1
            if error:
                flag.errors += 1
            if user is None:
                return True
            if user not in flag.users:
                if self.room <= 0:
                    return False
                flag.users.add(user)
                self.room -= 1
            if variant is not None:
                served = flag.variants.get(variant)
                if served is None:
                    served = flag.variants[variant] = set()
                served.add(user)
            return True

    def pin(self, flag_key: str, pin: Pin) -> None:
        """Queue figures that replace a flag's computed gauges."""
        with self._lock:
            self._pins[flag_key] = pin

    def expect(self, flag_key: str, weights: dict[str, float]) -> None:
        """Queue the expected weights of a flag's variants."""
        with self._lock:
            self._splits[flag_key] = weights

    def discard(self, flag_key: str | None = None) -> None:
        """Forget what is buffered for one flag, or for all, returning its room."""
        with self._lock:
            self._discard(flag_key)

    def _discard(self, flag_key: str | None) -> None:
        if self._in_flight is not None:
            # Strip the flag from the undelivered batch too (same seq: if the store applied the
            # original already, the reset that follows removes it there).
            batch, users = self._in_flight
            kept = {k: d for k, d in batch.flags.items() if flag_key is not None and k != flag_key}
            pins = {k: p for k, p in batch.pins.items() if flag_key is not None and k != flag_key}
            dropped = users - sum(len(d.members) for d in kept.values())
            self.room += dropped
            self._in_flight = (Batch(batch.writer, batch.seq, kept, pins, batch.splits), users - dropped)
        for key, buf in self.flags.items():
            if flag_key is None or key == flag_key:
                self.room += len(buf.users)
                buf.total = buf.errors = 0
                buf.users = set()
                buf.variants = {}
        if flag_key is None:
            self._pins.clear()
        else:
            self._pins.pop(flag_key, None)

    @property
    def in_flight(self) -> Batch | None:
        """The batch cut but not yet delivered."""
        in_flight = self._in_flight
        return in_flight[0] if in_flight else None

    def cut(self, hash_key: bytes = b"") -> Batch | None:
        """Move the buffered evaluations into a new in-flight batch, user ids hashed; None if empty."""
        taken: list[tuple[str, int, int, set[str], dict[str, set[str]]]] = []
        with self._lock:
            if self._in_flight is not None:
                raise RuntimeError("a batch is already in flight; deliver it before cutting another")
            for key, buf in self.flags.items():
                if buf.total or buf.users:
                    taken.append((key, buf.total, buf.errors, buf.users, buf.variants))
                    buf.total = buf.errors = 0
                    buf.users = set()
                    buf.variants = {}
            pins, self._pins = self._pins, {}
            splits, self._splits = self._splits, {}
            if not taken and not pins and not splits:
                return None
            self._seq += 1
            seq = self._seq
        # Hash outside the lock: the sets taken are no longer reachable from record(). Each user once,
        # however many flags they evaluated (a request often evaluates several for the same user).
        now = time.time()
        digests = _digests(set().union(*(users for _, _, _, users, _ in taken)), hash_key)
        deltas = {key: _delta(t, e, users, variants, digests, now) for key, t, e, users, variants in taken}
        batch = Batch(writer=self.writer, seq=seq, flags=deltas, pins=pins, splits=splits)
        with self._lock:
            self._in_flight = (batch, sum(len(users) for _, _, _, users, _ in taken))
        return batch

    def delivered(self) -> None:
        """Mark the in-flight batch applied by the store, freeing its room."""
        with self._lock:
            if self._in_flight is not None:
                self.room += self._in_flight[1]
                self._in_flight = None

    def drop_in_flight(self) -> None:
        """Give up the in-flight batch (the store refuses it), freeing its room."""
        self.delivered()

    def abandon(self) -> tuple[int, int]:
        """Drop everything undelivered (at close, with the store unreachable).

        Returns (evaluations, user ids) lost, for the caller to count.
        """
        with self._lock:
            events = users = 0
            if self._in_flight is not None:
                events += self._in_flight[0].events
                users += self._in_flight[1]
                self._in_flight = None
            for buf in self.flags.values():
                events += buf.total
                users += len(buf.users)
            self._discard(None)
            self.room = self.capacity
            return events, users
