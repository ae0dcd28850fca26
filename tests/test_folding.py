"""Folding dead workers' files into the archive: no summed sample ever goes backwards, rounding included.

Worker files are written with prometheus_client's own `MmapedDict`, as a worker's values would be; the
scrape is flagmetrics' `FilesCollector`, and prometheus_client's `MultiProcessCollector` must still
read the same totals from the archive.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from flagmetrics.multiprocess import FilesCollector, add_exactly, compact, prepare_directory
from tests.processes import pid_alive

HISTOGRAM = "feature_flag_evaluation_duration_seconds"
FLAGS = [f"flag_{i}" for i in range(5)]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def dead_pids(count: int) -> list[int]:
    """Pids no process has now, to name simulated workers that compact() may fold."""
    pids: list[int] = []
    candidate = 4_000_000
    while len(pids) < count:
        candidate -= 1
        if not pid_alive(candidate):
            pids.append(candidate)
    return pids


class Worker:
    """One simulated worker: its histogram file, a `_sum` and `_count` per flag, as prometheus_client writes them."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.pid = pid
        self._file = MmapedDict(str(directory / f"histogram_{pid}.db"))
        self._sums = dict.fromkeys(FLAGS, 0.0)
        self._counts = dict.fromkeys(FLAGS, 0.0)

    def observe(self, rng: random.Random) -> None:
        flag = rng.choice(FLAGS)
        self._sums[flag] += rng.expovariate(1000.0)  # durations of about a millisecond, as floats
        self._counts[flag] += 1.0
        for name, value in ((f"{HISTOGRAM}_sum", self._sums[flag]), (f"{HISTOGRAM}_count", self._counts[flag])):
            key = mmap_key(HISTOGRAM, name, ["flag_key"], [flag], "Duration")
            self._file.write_value(key, value, 0.0)

    def die(self) -> None:
        self._file.close()


def scrape(directory: Path) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in FilesCollector(str(directory)).collect()
        for sample in metric.samples
    }


def run_folds(directory: Path, folds: int, live: int, seed: int) -> tuple[int, list[str]]:
    """Workers observe, die and are folded one by one, new ones start; a scrape after every step.

    Returns the scrapes made and every decrease seen between two of them.
    """
    rng = random.Random(seed)
    pids = iter(dead_pids(folds + live))
    workers = [Worker(directory, next(pids)) for _ in range(live)]
    last: Samples = {}
    decreases: list[str] = []
    scrapes = 0
    try:
        scrapes = _fold(directory, folds, workers, pids, rng, last, decreases)
    finally:
        for worker in workers:
            worker.die()
    return scrapes, decreases


def _fold(
    directory: Path,
    folds: int,
    workers: list[Worker],
    pids: Iterator[int],
    rng: random.Random,
    last: Samples,
    decreases: list[str],
) -> int:
    scrapes = 0
    for _ in range(folds):
        for _ in range(rng.randrange(1, 40)):
            rng.choice(workers).observe(rng)
        dying = workers.pop(rng.randrange(len(workers)))
        dying.die()
        for step in ("observe", "fold"):
            if step == "fold":
                assert compact(str(directory), dying.pid) == 1
                workers.append(Worker(directory, next(pids)))
            now = scrape(directory)
            scrapes += 1
            decreases += [f"{k}: {last[k]!r} -> {value!r}" for k, value in now.items() if value < last.get(k, 0)]
            last = now
    return scrapes


def test_a_long_run_of_folds_never_takes_a_sum_backwards(tmp_path: Path) -> None:
    """300 folds of workers with float durations, scraped after every step: no sample decreases."""
    scrapes, decreases = run_folds(tmp_path, folds=300, live=6, seed=7)
    print(f"folding: {scrapes} scrapes, 300 folds, {len(decreases)} decreases")
    assert scrapes == 600
    assert decreases == []


def test_the_archive_keeps_the_exact_sum(tmp_path: Path) -> None:
    """Folded values add up exactly: the archive's sum is the correctly rounded sum of every value folded."""
    rng = random.Random(3)
    key = mmap_key(HISTOGRAM, f"{HISTOGRAM}_sum", ["flag_key"], ["f"], "Duration")
    folded: list[float] = []
    for pid in dead_pids(50):
        values = MmapedDict(str(tmp_path / f"histogram_{pid}.db"))
        value = rng.random() * 10 ** rng.randrange(-6, 3)
        values.write_value(key, value, 0.0)
        values.close()
        folded.append(value)
        compact(str(tmp_path), pid)
    total = scrape(tmp_path)[(f"{HISTOGRAM}_sum", (("flag_key", "f"),))]
    assert total == math.fsum(folded)
    # prometheus_client's own collector reads the archive as any worker file: the same total, rounded once.
    plain = {s.name: s.value for m in MultiProcessCollector(None, path=str(tmp_path)).collect() for s in m.samples}
    assert plain[f"{HISTOGRAM}_sum"] == total


@pytest.mark.parametrize("damage", ["stale", "garbage", "missing"])
def test_damaged_partials_leave_the_rounded_archive_value(tmp_path: Path, damage: str) -> None:
    """Partials that do not match the archive (a fold cut between its two renames) or cannot be read are ignored."""
    key = mmap_key(HISTOGRAM, f"{HISTOGRAM}_sum", ["flag_key"], ["f"], "Duration")
    for pid, value in zip(dead_pids(2), (0.1, 0.2), strict=True):
        values = MmapedDict(str(tmp_path / f"histogram_{pid}.db"))
        values.write_value(key, value, 0.0)
        values.close()
        compact(str(tmp_path), pid)
    partials = tmp_path / "histogram_archive.db.partials"
    assert len(json.loads(partials.read_text())[key]) == 2  # 0.1 + 0.2 is not exact in binary
    if damage == "stale":
        partials.write_text(json.dumps({key: [0.5, 1e-17]}))
    elif damage == "garbage":
        partials.write_text("{not json")
    else:
        partials.unlink()
    archived = {s.name: s.value for m in MultiProcessCollector(None, path=str(tmp_path)).collect() for s in m.samples}
    assert scrape(tmp_path)[(f"{HISTOGRAM}_sum", (("flag_key", "f"),))] == archived[f"{HISTOGRAM}_sum"] == 0.1 + 0.2


def test_add_exactly_keeps_every_bit() -> None:
    """Partials from add_exactly sum to what math.fsum gives for the same values, in any order."""
    rng = random.Random(11)
    values = [rng.uniform(-1, 1) * 10 ** rng.randrange(-20, 20) for _ in range(2_000)]
    partials: list[float] = []
    for value in values:
        add_exactly(partials, value)
    assert math.fsum(partials) == math.fsum(values) == math.fsum(reversed(values))


def test_prepare_directory_removes_the_partials(tmp_path: Path) -> None:
    (tmp_path / "histogram_archive.db.partials").write_text("{}")
    (tmp_path / "spool").mkdir()
    prepare_directory(str(tmp_path))
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".")] == ["spool"]
