"""What every fleet store takes (a `Batch` from a worker) and gives (a `Snapshot` for a scrape)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flagmetrics.exceptions import StoreError

__all__ = [
    "DIGEST_SIZE",
    "Batch",
    "FlagDelta",
    "FlagStats",
    "Pin",
    "Snapshot",
    "Store",
    "WindowStats",
    "joined_digests",
    "snapshot_within",
]


DIGEST_SIZE = 8
"""Bytes of a user-id digest: 64 bits, the same width Redis's HyperLogLog hashes to."""


def joined_digests(digests: Collection[bytes]) -> bytes | None:
    """The digests end to end, or None unless each is `DIGEST_SIZE` bytes (checked in C loops: the total
    length and the shortest one)."""
    joined = b"".join(digests)
    if len(joined) != DIGEST_SIZE * len(digests) or (digests and min(map(len, digests)) != DIGEST_SIZE):
        return None
    return joined


@dataclass(slots=True)
class FlagDelta:
    """One flag's share of a batch: evaluation and error counts, and user digests."""

    total: int = 0
    errors: int = 0
    members: frozenset[bytes] = field(default_factory=frozenset)
    seen: float = 0.0
    """When the worker took these evaluations from its buffer (Unix seconds): the latest of them
    happened at most one flush interval earlier. 0 when unknown."""
    variants: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    """The digests of the users served each variant (a subset of `members`; ERROR and variant-less
    evaluations excluded)."""


@dataclass(frozen=True, slots=True)
class Pin:
    """Figures set from outside (`update_from_metrics`) that replace a flag's computed gauges."""

    unique_users: int
    error_rate: float
    """Between 0 and 1."""


@dataclass(frozen=True, slots=True)
class Batch:
    """What one worker flushes at once; `(writer, seq)` makes delivering it twice harmless."""

    writer: str
    seq: int
    flags: Mapping[str, FlagDelta]
    pins: Mapping[str, Pin] = field(default_factory=dict)
    splits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Expected weights of flags' variants (`expect_split`), replacing what the store had."""

    @property
    def members(self) -> int:
        """Number of user digests in the batch."""
        return sum(len(delta.members) for delta in self.flags.values())

    @property
    def events(self) -> int:
        """Number of evaluations in the batch."""
        return sum(delta.total for delta in self.flags.values())


@dataclass(frozen=True, slots=True)
class WindowStats:
    """A flag's distinct users in one trailing window, fleet-wide: in all, and per variant served."""

    users: int
    variants: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlagStats:
    """A flag's fleet-wide figures at one moment."""

    total: int
    errors: int
    unique_users: int
    pinned_error_rate: float | None = None
    last_evaluated_s: float | None = None
    """The latest evaluation anywhere in the fleet (Unix seconds, from the workers' clocks); None when unknown."""
    windows: Mapping[str, WindowStats] = field(default_factory=dict)
    """Distinct users per trailing window, by the window's label (`1h`); empty when no window is set."""
    split: Mapping[str, float] | None = None
    """The expected weights of the flag's variants, when known (for the split check)."""

    @property
    def error_rate(self) -> float | None:
        """Errors over evaluations (0..1); None before the first evaluation."""
        if self.pinned_error_rate is not None:
            return self.pinned_error_rate
        return self.errors / self.total if self.total else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every flag's fleet-wide figures, read in one go for one scrape."""

    flags: Mapping[str, FlagStats]


@runtime_checkable
class Store(Protocol):
    """Fleet state shared by every worker: one implementation per backend."""

    async def push(self, batch: Batch) -> None:
        """Apply `batch` exactly once, however often it is delivered; raise `StoreError` on failure."""
        ...

    async def snapshot(self) -> Snapshot:
        """Read every flag's figures in a bounded number of round trips; raise `StoreError` on failure."""
        ...

    async def reset(self, flag_key: str | None = None) -> None:
        """Forget one flag's fleet state, or every flag's when `flag_key` is None."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


async def snapshot_within(store: Store, timeout_s: float) -> Snapshot:
    """Read `store` within `timeout_s` seconds; raise `StoreError` when it cannot (timeouts included)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await store.snapshot()
    except TimeoutError as exc:
        raise StoreError(f"no answer within {timeout_s} s") from exc
    except OSError as exc:
        raise StoreError(f"could not read the store: {exc}") from exc
