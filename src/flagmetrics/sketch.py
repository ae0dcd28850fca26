"""Internal: HyperLogLog with Redis's parameters: 2^14 one-byte registers, 64-bit hashes, Ertl's estimator.

The registers live in any writable buffer (a shared mmap for `LocalStore`), next to a histogram of
their values that every update keeps current, so an estimate reads 52 counters instead of 16,384
registers. Every worker adds into the same registers, which is the register-wise maximum merge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "HISTOGRAM_SIZE",
    "REGISTERS",
    "Q",
    "add",
    "add_hashes",
    "estimate",
    "histogram_of",
]

P = 14
"""Index bits: 2^14 registers, a standard error of 1.04 / sqrt(2^14), about 0.81%."""
REGISTERS = 1 << P
Q = 64 - P
"""Hash bits left for the rank: ranks go from 1 to Q + 1."""
HISTOGRAM_SIZE = 64
"""Slots of the register-value histogram (values 0..Q+1 are used)."""
_INDEX_MASK = REGISTERS - 1
_SENTINEL = 1 << Q
_ALPHA_INF = 1.0 / (2.0 * math.log(2.0))


def add(registers: bytearray | memoryview, histogram: memoryview | list[int], digests: Iterable[bytes]) -> None:
    """Add 8-byte digests to the registers, keeping `histogram` (counts per register value) current."""
    add_hashes(registers, histogram, [int.from_bytes(digest[:8], "little") for digest in digests])


def add_hashes(registers: bytearray | memoryview, histogram: memoryview | list[int], hashes: Iterable[int]) -> None:
    """Add 64-bit hashes (digests read as unsigned little-endian integers) to the registers, as `add`."""
    for x in hashes:
        index = x & _INDEX_MASK
        rest = (x >> P) | _SENTINEL
        rank = (rest & -rest).bit_length()  # trailing zeros + 1, as Redis counts them
        old = registers[index]
        if rank > old:
            registers[index] = rank
            histogram[old] -= 1
            histogram[rank] += 1


def histogram_of(registers: bytes | bytearray | memoryview) -> list[int]:
    """Count the registers holding each value."""
    data = bytes(registers)
    return [data.count(value) for value in range(HISTOGRAM_SIZE)]


def estimate(histogram: Iterable[int]) -> int:
    """Estimate the number of distinct digests from the register-value histogram (Ertl 2017)."""
    counts = list(histogram)
    m = float(REGISTERS)
    z = m * _tau((m - counts[Q + 1]) / m)
    for value in range(Q, 0, -1):
        z += counts[value]
        z *= 0.5
    z += m * _sigma(counts[0] / m)
    if math.isinf(z):
        return 0
    return round(_ALPHA_INF * m * m / z)


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y = 1.0
    z = x
    while True:
        x *= x
        previous = z
        z += x * y
        y += y
        if previous == z:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y = 1.0
    z = 1.0 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if previous == z:
            return z / 3.0
