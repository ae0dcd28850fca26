"""Internal: the multiprocess directory: preparing it, reading prometheus_client's files under a lock, and
folding dead workers' files into one archive per metric type so scrapes do not slow down with them.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from flagmetrics import locks
from flagmetrics.compat import mmaped_dict

__all__ = ["FilesCollector", "compact", "metrics_lock", "prepare_directory"]

# A metric file's header: the bytes used (4) and padding (4); a file shorter than this is being created.
_HEADER_BYTES = 8
# Types whose values add up across processes; gauges are left to prometheus_client's mark_process_dead.
_SUMMED_TYPES = ("counter", "histogram", "summary")


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
        """Merge every worker file that has its header."""
        files = []
        for name in glob.glob(os.path.join(self._directory, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name).st_size >= _HEADER_BYTES:
                    files.append(name)
        merged: Iterable[Metric] = self.merge(files, accumulate=True)
        return merged


def prepare_directory(path: str) -> None:
    """Create `path`, or empty it of the files a previous run left (metric files and fleet state)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    with metrics_lock(path, exclusive=True):
        for pattern in ("*.db", "flagmetrics-*"):
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
            totals: dict[str, float] = defaultdict(float)
            for source in (archive, dead):
                if os.path.exists(source):
                    for key, value, _timestamp, _pos in mmaped.read_all_values_from_file(source):
                        totals[key] += value
            temporary = f"{archive}.tmp"  # not matched by the collector's *.db glob
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            merged = mmaped(temporary)
            try:
                for key, value in totals.items():
                    merged.write_value(key, value, 0.0)
            finally:
                merged.close()
            os.replace(temporary, archive)
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
