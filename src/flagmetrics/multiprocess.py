"""Internal: the multiprocess directory: preparing it, reading prometheus_client's files under a lock, and
folding dead workers' files into one archive per metric type so scrapes do not slow down with them.

Every sample of a counter, histogram or summary is the exact sum of its values in every file, rounded
once (`math.fsum`), so it cannot go backwards when the same values are added in another order: when a
dead worker is folded, or a new worker's file changes the order of the directory. The archive keeps,
beside each value, the exact partial sums it was rounded from (`<type>_archive.partials`, JSON, only
for values that are not exact), so folding loses nothing either. prometheus_client's own collector
reads the archive as any other file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from flagmetrics import locks
from flagmetrics.compat import mmaped_dict, multiprocess_merge_steps

__all__ = ["FilesCollector", "compact", "metrics_lock", "prepare_directory"]

# A metric file's header: the bytes used (4) and padding (4); a file shorter than this is being created.
_HEADER_BYTES = 8
# Types whose values add up across processes; gauges are left to prometheus_client's mark_process_dead.
_SUMMED_TYPES = ("counter", "histogram", "summary")
# Beside `<type>_archive.db`: the exact partial sums of its values that are not exact (not a *.db name).
_PARTIALS_SUFFIX = ".partials"
_Sample = tuple[str, Any]
"""A sample as prometheus_client's reader keys it: its name and its sorted labels."""


@contextlib.contextmanager
def metrics_lock(path: str, *, exclusive: bool = False) -> Iterator[None]:
    """Hold the lock of the metric files in `path`: shared to read them, exclusive to rewrite them."""
    with locks.hold(path, locks.METRICS_LOCK, exclusive=exclusive):
        yield


class FilesCollector(MultiProcessCollector):
    """prometheus_client's collector, minus the files a starting process has created but not sized.

    A process that is creating its file leaves it empty for an instant; prometheus_client's reader
    fails on such a file, which would turn a scrape that coincides with a worker start into an error.
    """

    def __init__(self, path: str) -> None:
        super().__init__(None, path=path)
        self._directory = path

    def collect(self) -> Iterable[Metric]:
        """Merge every worker file that has its header, each summed sample added exactly."""
        files = []
        for name in glob.glob(os.path.join(self._directory, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name).st_size >= _HEADER_BYTES:
                    files.append(name)
        read_metrics, accumulate_metrics = multiprocess_merge_steps()
        metrics = read_metrics(files)
        corrections = _archive_corrections(self._directory)
        for metric in metrics.values():
            if metric.type in _SUMMED_TYPES:
                _sum_exactly(metric, corrections)
        merged: Iterable[Metric] = accumulate_metrics(metrics, True)
        return merged


def _sum_exactly(metric: Metric, corrections: dict[str, dict[_Sample, list[float]]]) -> None:
    """Replace the samples of `metric` (one per file) by one per sample: the exact sum, rounded once."""
    values: dict[_Sample, list[float]] = {}
    for sample in metric.samples:
        key = (sample.name, sample.labels)
        parts = values.get(key)
        if parts is None:
            values[key] = [sample.value]
        else:
            parts.append(sample.value)
    for key, extra in corrections.get(metric.name, {}).items():
        values.setdefault(key, []).extend(extra)
    fsum = math.fsum
    metric.samples = [
        Sample(name, labels, parts[0] if len(parts) == 1 else fsum(parts)) for (name, labels), parts in values.items()
    ]


def add_exactly(partials: list[float], value: float) -> list[float]:
    """Add `value` to `partials`, non-overlapping floats whose exact sum is the running total (Shewchuk)."""
    kept = 0
    for other in partials:
        if abs(value) < abs(other):
            value, other = other, value
        high = value + other
        low = other - (high - value)
        if low:
            partials[kept] = low
            kept += 1
        value = high
    partials[kept:] = [value]
    return partials


def _read_partials(archive: str, values: dict[str, float]) -> dict[str, list[float]]:
    """The partial sums kept beside `archive`, for the keys whose rounded sum is the archive's value.

    A key whose value changed without its partials (a fold interrupted between the two renames) is
    left out: its archive value is then taken as it is.
    """
    try:
        with open(archive + _PARTIALS_SUFFIX, encoding="utf-8") as file:
            stored = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable: the rounded archive values stand
    kept: dict[str, list[float]] = {}
    if not isinstance(stored, dict):
        return kept
    for key, parts in stored.items():
        try:
            floats = [float(part) for part in parts]
            if key in values and math.fsum(floats) == values[key]:
                kept[key] = floats
        except (TypeError, ValueError, OverflowError):
            continue  # a damaged entry: the rounded value stands
    return kept


# The corrections last read per directory, with the identity of the files they were read from: the
# archive files change only when a dead worker is folded, so most scrapes reuse them.
_corrections_cache: dict[str, tuple[tuple[tuple[int, int, int], ...], dict[str, dict[_Sample, list[float]]]]] = {}


def _archive_corrections(path: str) -> dict[str, dict[_Sample, list[float]]]:
    """Per metric and sample, what turns each archive's rounded value back into its exact partial sums."""
    archives = [os.path.join(path, f"{typ}_archive.db") for typ in _SUMMED_TYPES]
    stamp = tuple(_identity(name) for archive in archives for name in (archive, archive + _PARTIALS_SUFFIX))
    cached = _corrections_cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    corrections: dict[str, dict[_Sample, list[float]]] = defaultdict(dict)
    mmaped = mmaped_dict()
    for archive in archives:
        if not os.path.exists(archive + _PARTIALS_SUFFIX):
            continue
        try:
            values = {key: value for key, value, _, _ in mmaped.read_all_values_from_file(archive)}
        except FileNotFoundError:
            continue
        for key, parts in _read_partials(archive, values).items():
            metric_name, name, labels, _help = json.loads(key)
            corrections[metric_name][(name, tuple(sorted(labels.items())))] = [-values[key], *parts]
    _corrections_cache[path] = (stamp, corrections)
    return corrections


def _identity(name: str) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten: inode, size and modification time."""
    try:
        info = os.stat(name)
    except FileNotFoundError:
        return (0, 0, 0)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def prepare_directory(path: str) -> None:
    """Create `path`, or empty it of the files a previous run left (metric files and fleet state)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    with metrics_lock(path, exclusive=True):
        for pattern in ("*.db", f"*{_PARTIALS_SUFFIX}", "flagmetrics-*"):
            for name in glob.glob(os.path.join(path, pattern)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)


def compact(path: str, pid: int) -> int:
    """Fold the counter, histogram and summary files of dead process `pid` into archive files.

    Runs under the directory's exclusive lock, so no scrape sees a value twice or not at all: the
    merged archive is written to a temporary name, renamed over the old archive, and only then is
    the dead file removed. A pid that is alive again (reused) is left alone. Returns how many files
    were folded.
    """
    if _alive(pid):
        return 0
    folded = 0
    mmaped = mmaped_dict()
    with metrics_lock(path, exclusive=True):
        for typ in _SUMMED_TYPES:
            dead = os.path.join(path, f"{typ}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(path, f"{typ}_archive.db")
            totals: dict[str, list[float]] = {}
            if os.path.exists(archive):
                values = {key: value for key, value, _, _ in mmaped.read_all_values_from_file(archive)}
                kept = _read_partials(archive, values)
                totals = {key: kept.get(key) or [value] for key, value in values.items()}
            for key, value, _timestamp, _pos in mmaped.read_all_values_from_file(dead):
                add_exactly(totals.setdefault(key, []), value)
            temporary = f"{archive}.tmp"  # not matched by the collector's *.db glob
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            merged = mmaped(temporary)
            try:
                for key, parts in totals.items():
                    merged.write_value(key, math.fsum(parts), 0.0)
            finally:
                merged.close()
            inexact = {key: parts for key, parts in totals.items() if len(parts) > 1}
            with open(f"{temporary}{_PARTIALS_SUFFIX}", "w", encoding="utf-8") as file:
                json.dump(inexact, file)
            os.replace(temporary, archive)
            os.replace(f"{temporary}{_PARTIALS_SUFFIX}", archive + _PARTIALS_SUFFIX)
            os.remove(dead)
            folded += 1
    return folded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
