"""Internal: writing the exporter's counter and histogram values into prometheus_client's multiprocess files directly.

prometheus_client writes every increment under its process-wide lock, after checking the pid (a
system call), looking the value's position up in a dict and packing the value with a timestamp:
three times per evaluation (counter, histogram sum, histogram bucket), which cost as much as all the
rest of `record()`. The position of a value in its file never changes once written, so a `Cell`
keeps the value object and its position, and an increment, under the same lock, adds to the value
object's `_value` (so prometheus_client's own writes of that child go on from it) and writes the 8
bytes of the value into the mmap at once: a SIGKILL loses no increment, the files keep
prometheus_client's format (timestamps stay 0.0, as prometheus_client writes them for counters and
histograms), and every reader of those files reads them unchanged.

A `SeriesCells` is valid in the process that built it: after a fork, the first evaluation of each
series goes through prometheus_client (which moves every value to the child's own files) and the
cells are built again.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left
from typing import Any

from flagmetrics.compat import metric_child_values, multiprocess_value_cell

__all__ = ["Cell", "SeriesCells", "cell_of", "series_cells"]

_pack = struct.Struct("d").pack


class Cell:
    """One value of a multiprocess file: its value object, its file and the position of its 8 bytes."""

    __slots__ = ("end", "file", "pos", "value")

    def __init__(self, value: Any, file: Any, pos: int) -> None:
        self.value = value
        self.file = file
        self.pos = pos
        self.end = pos + 8

    def add(self, amount: float) -> None:
        """Add `amount`; the caller holds prometheus_client's lock."""
        value = self.value
        total = value._value + amount
        value._value = total
        self.file._m[self.pos : self.end] = _pack(total)


def cell_of(value: Any) -> tuple[Any, Cell] | None:
    """The lock and the cell of a child's value object, or None when it is not a multiprocess value."""
    found = multiprocess_value_cell(value)
    if found is None:
        return None
    lock, file, pos = found
    return lock, Cell(value, file, pos)


class SeriesCells:
    """The cells one evaluation of a series writes: its evaluations counter (and overflow counter),
    its histogram's sum and buckets. Built in process `pid`, valid there only."""

    __slots__ = ("bounds", "buckets", "count", "lock", "overflow", "pid", "sum")

    def __init__(
        self, lock: Any, count: Cell, overflow: Cell | None, sum_: Cell, buckets: list[Cell], bounds: list[float]
    ):
        self.lock = lock
        self.count = count
        self.overflow = overflow
        self.sum = sum_
        self.buckets = buckets
        self.bounds = bounds
        self.pid = os.getpid()

    def bucket(self, duration_s: float) -> Cell:
        """The bucket prometheus_client would count `duration_s` in: the first whose bound is not below it."""
        return self.buckets[bisect_left(self.bounds, duration_s)]


def series_cells(count: Any, overflow: Any | None, histogram: Any) -> SeriesCells | None:
    """Cells for a counter child (plus an overflow counter child) and a histogram child; None in one process."""
    counted = cell_of(metric_child_values(count)[0])
    if counted is None:
        return None
    lock, count_cell = counted
    overflow_cell = None
    if overflow is not None:
        found = cell_of(metric_child_values(overflow)[0])
        if found is None:
            return None
        overflow_cell = found[1]
    total, bucket_values, bounds = metric_child_values(histogram)
    cells = [cell_of(value) for value in (total, *bucket_values)]
    if any(found is None for found in cells):
        return None
    summed, *buckets = (found[1] for found in cells if found is not None)
    return SeriesCells(lock, count_cell, overflow_cell, summed, buckets, list(bounds))
