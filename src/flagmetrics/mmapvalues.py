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
cells are built again. The value is stored through a view, as doubles, of a map of the file of our own
(one aligned 8-byte store), which prometheus_client never closes; a forked child releases them.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from flagmetrics.compat import metric_child_values, multiprocess_value_cell

__all__ = ["Cell", "SeriesCells", "cell_of", "fork_generation", "series_cells"]

_maps: dict[int, tuple[Any, mmap.mmap, Any]] = {}
"""This process's own maps of prometheus_client's files, by the id of prometheus_client's file object:
(that object, the map, a view of it as doubles). Ours, so that prometheus_client may close its own."""

_old: list[tuple[Any, mmap.mmap, Any]] = []
"""Maps replaced by larger ones (a file that grew); cells made before still write through them."""

fork_generation = [0]
"""This process's fork generation (one item, bumped in a forked child): cells built before a fork are stale there."""


def _after_fork_in_child() -> None:
    fork_generation[0] += 1
    for _file, mapped, view in [*_maps.values(), *_old]:
        view.release()
        mapped.close()
    _maps.clear()
    _old.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _view(file: Any, end: int) -> Any:
    """A view, as doubles, of a map of our own of prometheus_client's `file` reaching at least `end`."""
    known = _maps.get(id(file))
    if known is not None and known[0] is file and len(known[1]) >= end:
        return known[2]
    size = len(file._m)
    mapped = mmap.mmap(file._f.fileno(), size)
    view = memoryview(mapped).cast("d")
    if known is not None:
        _old.append(known)  # cells made before may still write through it (released in a forked child)
    _maps[id(file)] = (file, mapped, view)
    return view


class Cell:
    """One value of a multiprocess file: its value object, and a view of the file's doubles with its index.

    The view is of a map of the file of our own (prometheus_client may close or replace its own map:
    both map the same file, so every write lands in it).
    """

    __slots__ = ("index", "value", "view")

    def __init__(self, value: Any, view: Any, index: int) -> None:
        self.value = value
        self.view = view
        self.index = index

    def add(self, amount: float) -> None:
        """Add `amount`; the caller holds prometheus_client's lock."""
        value = self.value
        total = value._value + amount
        value._value = total
        self.view[self.index] = total


def cell_of(value: Any) -> tuple[Any, Cell] | None:
    """The lock and the cell of a child's value object, or None when it is not a multiprocess value."""
    found = multiprocess_value_cell(value)
    if found is None:
        return None
    lock, file, pos = found
    view = _view(file, pos + 8)
    return lock, Cell(value, view, pos // 8)


class SeriesCells:
    """The cells one evaluation of a series writes: its evaluations counter (and overflow counter),
    its histogram's sum and buckets (the one prometheus_client counts a duration in is the first whose
    bound is not below it: `bisect_left(bounds, duration)`). Valid in the fork generation it was built in."""

    __slots__ = ("bounds", "buckets", "count", "generation", "lock", "overflow", "sum")

    def __init__(
        self, lock: Any, count: Cell, overflow: Cell | None, sum_: Cell, buckets: list[Cell], bounds: list[float]
    ) -> None:
        self.lock = lock
        self.count = count
        self.overflow = overflow
        self.sum = sum_
        self.buckets = buckets
        self.bounds = bounds
        self.generation = fork_generation[0]


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
