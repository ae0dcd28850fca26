"""Internal: the per-worker buffer between `record()` and the store: counts, raw user ids, and the batch in flight."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flagmetrics.stores.base import DIGEST_SIZE, Batch, FlagDelta, Pin

__all__ = ["DIGEST_SIZE", "Buffer", "FlagBuffer", "digest_users"]

CUT_STEP = 1_000
"""User ids `Buffer.cut_in_steps` hashes before letting the event loop run (well under a millisecond)."""


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
    for delta in _delta_steps(total, errors, users, variants, digests, now, step=0):
        if delta is not None:
            return delta
    raise AssertionError("unreachable")


def _delta_steps(
    total: int,
    errors: int,
    users: set[str],
    variants: dict[str, set[str]],
    digests: dict[str, bytes],
    now: float,
    step: int,
) -> Iterator[FlagDelta | None]:
    """`_delta`, yielding None after every `step` user ids looked up (never with 0), then the delta."""
    looked_up: list[frozenset[bytes]] = []
    for served in (users, *variants.values()):
        if not step or len(served) <= step:
            looked_up.append(frozenset([digests[user] for user in served]))
            continue
        found: list[bytes] = []
        it = iter(served)
        while chunk := [digests[user] for user in itertools.islice(it, step)]:
            found += chunk
            yield None
        looked_up.append(frozenset(found))
    yield FlagDelta(total, errors, looked_up[0], now if total else 0.0, dict(zip(variants, looked_up[1:], strict=True)))


class FlagBuffer:
    """One flag's evaluations since the last cut; `record()` updates it in place."""

    __slots__ = ("errors", "total", "users", "variants")

    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.users: set[str] = set()
        self.variants: dict[str, set[str]] = {}
        """The users served each variant (a subset of `users`; no ERROR or variant-less evaluation)."""


class _Cut:
    """Evaluations taken from the flag buffers and being hashed into the next batch in flight."""

    __slots__ = ("batch", "deltas", "digests", "dropped", "now", "seq", "taken", "users")

    def __init__(self, seq: int, taken: list[tuple[str, int, int, set[str], dict[str, set[str]]]]) -> None:
        self.seq = seq
        self.taken = taken
        # Each user once, however many flags they evaluated (a request often evaluates several for the same user).
        self.users = list(set().union(*(users for _, _, _, users, _ in taken)))
        self.digests: dict[str, bytes] = {}
        self.deltas: dict[str, FlagDelta] = {}
        self.now = 0.0
        self.batch: Batch | None = None
        self.dropped = False


class Buffer:
    """Everything a worker has recorded but not yet delivered to the store.

    `room` counts the user ids that may still be buffered, undelivered batches included; `add`
    takes from it and reports a drop when it is empty. One batch at most is in flight: while it is
    undelivered, new evaluations keep accumulating in the flag buffers. A lock guards the state, as
    `record()` may be called from threads (sync OpenFeature evaluations) while the flusher cuts.
    """

    __slots__ = ("_cutting", "_in_flight", "_pins", "_seq", "_splits", "capacity", "flags", "lock", "room", "writer")

    def __init__(self, capacity: int, lock: Any | None = None) -> None:
        """`lock` guards the buffer (a new one by default); in a multiprocess worker the exporter passes
        prometheus_client's write lock, so that `record()` updates its values and the buffer under one
        acquisition."""
        self.capacity = capacity
        self.room = capacity
        self.flags: dict[str, FlagBuffer] = {}
        self._pins: dict[str, Pin] = {}
        self._splits: dict[str, dict[str, float]] = {}
        self._seq = 0
        self._in_flight: tuple[Batch, int] | None = None
        self._cutting: _Cut | None = None
        self.lock = lock if lock is not None else threading.Lock()
        # Identifies this process's batches in the store: host, pid and a random token, so neither
        # another host with the same pid nor a later process reusing the pid is mistaken for it.
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def flag(self, flag_key: str) -> FlagBuffer:
        """Return the buffer of a flag, creating it."""
        with self.lock:
            buf = self.flags.get(flag_key)
            if buf is None:
                buf = self.flags[flag_key] = FlagBuffer()
            return buf

    def add(self, flag: FlagBuffer, error: bool, user: str | None, variant: str | None = None) -> bool:
        """Count one evaluation of `flag` and buffer its user (and the variant it was served, if any).

        False when the user had to be dropped.
        """
        with self.lock:
            return self.add_locked(flag, error, user, variant)

    def add_locked(self, flag: FlagBuffer, error: bool, user: str | None, variant: str | None = None) -> bool:
        """`add`, for a caller holding `lock`."""
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
        with self.lock:
            self._pins[flag_key] = pin

    def expect(self, flag_key: str, weights: dict[str, float]) -> None:
        """Queue the expected weights of a flag's variants."""
        with self.lock:
            self._splits[flag_key] = weights

    def discard(self, flag_key: str | None = None) -> None:
        """Forget what is buffered for one flag, or for all, returning its room."""
        with self.lock:
            self._discard(flag_key)

    def _discard(self, flag_key: str | None) -> None:
        cutting = self._cutting
        if cutting is not None:
            kept_taken = [entry for entry in cutting.taken if flag_key is not None and entry[0] != flag_key]
            self.room += sum(len(entry[3]) for entry in cutting.taken) - sum(len(entry[3]) for entry in kept_taken)
            cutting.taken = kept_taken
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
        """Move the buffered evaluations into a new in-flight batch, user ids hashed; None if empty.

        Completes a `cut_in_steps` under way instead, if there is one.
        """
        cut = self._cutting or self._take()
        return self._complete(cut, hash_key) if cut is not None else None

    async def cut_in_steps(self, hash_key: bytes = b"", step: int = CUT_STEP) -> Batch | None:
        """`cut`, letting the event loop run after every `step` user ids hashed.

        Cancelled, it still leaves every evaluation it took in the batch in flight: none is lost.
        Returns None when `cut` (spooling at shutdown, say) completed the batch meanwhile: it is that
        caller's to deliver.
        """
        cut = self._cutting or self._take()
        if cut is None:
            return None
        try:
            while cut.batch is None and len(cut.digests) < len(cut.users):
                done = len(cut.digests)
                cut.digests.update(_digests(cut.users[done : done + step], hash_key))
                await asyncio.sleep(0)
            cut.now = time.time()
            for key, total, errors, users, variants in cut.taken:
                if cut.batch is not None:
                    break
                for delta in _delta_steps(total, errors, users, variants, cut.digests, cut.now, step):
                    if delta is None:
                        await asyncio.sleep(0)
                    else:
                        cut.deltas[key] = delta
        finally:
            ours = cut.batch is None
            batch = self._complete(cut, hash_key)
        return batch if ours else None

    def _take(self) -> _Cut | None:
        """Empty the flag buffers, pins and splits into a new cut (None when there is nothing)."""
        taken: list[tuple[str, int, int, set[str], dict[str, set[str]]]] = []
        with self.lock:
            if self._in_flight is not None:
                raise RuntimeError("a batch is already in flight; deliver it before cutting another")
            for key, buf in self.flags.items():
                if buf.total or buf.users:
                    taken.append((key, buf.total, buf.errors, buf.users, buf.variants))
                    buf.total = buf.errors = 0
                    buf.users = set()
                    buf.variants = {}
            if not taken and not self._pins and not self._splits:
                return None
            self._seq += 1
            cut = self._cutting = _Cut(self._seq, taken)
            return cut

    def _complete(self, cut: _Cut, hash_key: bytes) -> Batch | None:
        """Hash what `cut` has not hashed yet and make it the batch in flight (once; None if abandoned)."""
        if cut.batch is not None or cut.dropped:
            return cut.batch
        # Outside the lock: the sets taken are no longer reachable from record().
        done = len(cut.digests)
        if done < len(cut.users):
            cut.digests.update(_digests(cut.users[done:], hash_key))
        now = cut.now or time.time()
        taken = cut.taken
        deltas = {
            key: cut.deltas.get(key) or _delta(t, e, users, variants, cut.digests, now)
            for key, t, e, users, variants in taken
        }
        with self.lock:
            if cut.taken is not taken:  # a thread discarded flags meanwhile
                taken = cut.taken
                deltas = {key: deltas[key] for key, _, _, _, _ in taken}
            pins, self._pins = self._pins, {}
            splits, self._splits = self._splits, {}
            cut.batch = Batch(writer=self.writer, seq=cut.seq, flags=deltas, pins=pins, splits=splits)
            self._in_flight = (cut.batch, sum(len(users) for _, _, _, users, _ in taken))
            self._cutting = None
        return cut.batch

    def delivered(self) -> None:
        """Mark the in-flight batch applied by the store, freeing its room."""
        with self.lock:
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
        with self.lock:
            events = users = 0
            cutting = self._cutting
            if cutting is not None:
                cutting.dropped = True
                self._cutting = None
                events += sum(entry[1] for entry in cutting.taken)
                users += sum(len(entry[3]) for entry in cutting.taken)
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
