"""Internal: series admission: which counter children, histogram child and flag buffer a validated label triple is
counted under, with the flag and variant caps applied and resolved once per series."""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from flagmetrics.buffer import Buffer, FlagBuffer
from flagmetrics.compat import metric_child_values
from flagmetrics.events import ERROR, OVERFLOW, Labels
from flagmetrics.logs import ThrottledLog
from flagmetrics.metrics import Metrics
from flagmetrics.mmapvalues import Cell, SeriesCells, cell_of, fork_generation, series_cells

__all__ = ["Admission", "Series"]

_KNOWN_LIMIT = 100_000
"""Most label triples remembered; past it (label values from a bug, say), each new one is admitted
again on every evaluation, under the lock, and still counted under its capped series."""


class Series:
    """What `record()` touches for one admitted label triple: everything resolved in advance."""

    __slots__ = (
        "_buffer",
        "_cells",
        "_error_cells",
        "_error_codes",
        "_errors",
        "_evaluations",
        "_overflow",
        "_single",
        "count",
        "duration",
        "exposure",
        "flag",
        "flag_key",
        "is_error",
    )

    def __init__(
        self, labels: Labels, metrics: Metrics, buffer: Buffer, flag: FlagBuffer, overflow: Any | None
    ) -> None:
        self.flag_key = labels.flag_key
        self._buffer = buffer
        evaluations = metrics.evaluations.labels(*labels)
        self._evaluations = evaluations
        self._overflow = overflow
        self.count: Any = evaluations if overflow is None else _Both(evaluations, overflow)
        """What counts one evaluation: the evaluations counter child, and the overflow counter's when a
        cap put the evaluation under `__overflow__`."""
        self.duration = metrics.duration.labels(labels.flag_key)
        self.flag = flag
        self.is_error = labels.reason == ERROR
        self.exposure = labels.variant if labels.variant and not self.is_error else None
        """The variant a user is counted as exposed to: None for ERROR and variant-less evaluations."""
        self._errors = metrics.errors
        self._error_codes: dict[str | None, Any] = {}
        self._error_cells: dict[str | None, Cell] = {}
        self._cells: SeriesCells | None = None
        self._single = False

    def error(self, code: str | None) -> Any:
        """The error counter child of this flag and `code`, resolved once per code."""
        child = self._error_codes.get(code)
        if child is None:
            child = self._error_codes[code] = self._errors.labels(self.flag_key, code or "GENERAL")
        return child

    def record(self, duration_s: float | None, code: str | None, user: str | None) -> bool:
        """Count one evaluation in the counters and the histogram, every value written to the mmap at once,
        and buffer it with its user for the store; False when the user had to be dropped.

        In a multiprocess worker the values are written directly (`flagmetrics.mmapvalues`) under
        prometheus_client's lock, all of one evaluation at once, and the buffer (which shares that
        lock) updated under the same acquisition; otherwise, and for the first evaluation of a series
        in a process, through prometheus_client.
        """
        cells = self._cells
        if cells is None or cells.generation != fork_generation[0]:
            self._record_slowly(duration_s, code)
            return self._buffer.add(self.flag, self.is_error, user, self.exposure)
        error = None
        if self.is_error:
            error = self._error_cells.get(code)
            if error is None:
                self._record_slowly(duration_s, code)
                return self._buffer.add(self.flag, self.is_error, user, self.exposure)
        buffer = self._buffer
        with cells.lock:
            # Each value: keep prometheus_client's copy in step, then store it in the file. `Cell.add`
            # inlined: a call per value costs about 80 ns more per evaluation, a twentieth of record().
            cell = cells.count
            value = cell.value
            total = value._value + 1.0
            value._value = total
            cell.view[cell.index] = total
            if duration_s is not None:
                cell = cells.sum
                value = cell.value
                total = value._value + duration_s
                value._value = total
                cell.view[cell.index] = total
                cell = cells.buckets[bisect_left(cells.bounds, duration_s)]
                value = cell.value
                total = value._value + 1.0
                value._value = total
                cell.view[cell.index] = total
            if error is not None:
                value = error.value
                total = value._value + 1.0
                value._value = total
                error.view[error.index] = total
            if cells.overflow is not None:
                cells.overflow.add(1.0)
            if buffer.lock is cells.lock:
                return buffer.add_locked(self.flag, self.is_error, user, self.exposure)
        return buffer.add(self.flag, self.is_error, user, self.exposure)

    def _record_slowly(self, duration_s: float | None, code: str | None) -> None:
        """Count through prometheus_client (which also moves the values to a forked child's files), then
        resolve the cells for the next evaluations."""
        self.count.inc()
        if duration_s is not None:
            self.duration.observe(duration_s)
        if self.is_error:
            child = self.error(code)
            child.inc()
        if self._single:
            return
        cells = self._cells
        if cells is None or cells.generation != fork_generation[0]:
            self._error_cells = {}
            self._cells = series_cells(self._evaluations, self._overflow, self.duration)
            self._single = self._cells is None  # one process: prometheus_client's own values, no files
        if self.is_error and self._cells is not None and code not in self._error_cells:
            found = cell_of(metric_child_values(self.error(code))[0])
            if found is not None:
                self._error_cells[code] = found[1]


class _Both:
    """Two counter children increased together."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: Any, second: Any) -> None:
        self._first = first
        self._second = second

    def inc(self) -> None:
        self._first.inc()
        self._second.inc()


class Admission:
    """Admit label triples as series, applying the per-worker caps on flag keys and variants.

    Past `max_flags` flag keys or `max_variants_per_flag` variants of a flag, evaluations are counted
    under `__overflow__` (and in `flagmetrics_cardinality_overflow_total`), never dropped. `series()`
    is safe from several threads: admission takes a lock, the lookup of a known triple does not.
    """

    __slots__ = ("_buffer", "_by_labels", "_lock", "_log", "_max_flags", "_max_variants", "_metrics", "_variants")

    def __init__(self, metrics: Metrics, buffer: Buffer, *, max_flags: int, max_variants_per_flag: int) -> None:
        self._metrics = metrics
        self._buffer = buffer
        self._max_flags = max_flags
        self._max_variants = max_variants_per_flag
        self._by_labels: dict[Labels, Series] = {}
        self._variants: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._log = ThrottledLog()

    def series(self, labels: Labels) -> Series:
        """The series `labels` are counted under, admitting them on first sight."""
        series = self._by_labels.get(labels)
        if series is None:
            with self._lock:
                series = self._admit(labels)
        return series

    def flag_keys(self) -> set[str]:
        """The flag keys admitted so far (`__overflow__` included once a cap was reached)."""
        return set(self._variants)

    def _admit(self, labels: Labels) -> Series:
        series = self._by_labels.get(labels)
        if series is not None:  # admitted by another thread meanwhile
            return series
        flag_key, reason, variant = labels
        if flag_key not in self._variants and len(self._variants) >= self._max_flags:
            flag_key = OVERFLOW
        known = self._variants.setdefault(flag_key, set())
        if variant not in known:
            if len(known) >= self._max_variants:
                variant = OVERFLOW
            else:
                known.add(variant)
        capped = Labels(flag_key, reason, variant)
        series = self._by_labels.get(capped)
        if series is None:
            series = Series(capped, self._metrics, self._buffer, self._buffer.flag(flag_key), self._overflow(capped))
        if len(self._by_labels) < _KNOWN_LIMIT:
            self._by_labels[capped] = series
            self._by_labels[labels] = series
        return series

    def _overflow(self, labels: Labels) -> Any | None:
        if OVERFLOW not in (labels.flag_key, labels.variant):
            return None
        kind = "flag_key" if labels.flag_key == OVERFLOW else "variant"
        self._log.warning(
            f"cap-{kind}", "flagmetrics: %s cap reached; further values are counted as %s", kind, OVERFLOW
        )
        return self._metrics.cardinality_overflow.labels(kind=kind)
