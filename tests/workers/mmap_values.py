"""Record evaluations in a multiprocess worker and print every sample its files hold, as JSON.

    python -m tests.workers.mmap_values events fast|prometheus_client
    python -m tests.workers.mmap_values threads THREADS EVENTS
    python -m tests.workers.mmap_values fork
    python -m tests.workers.mmap_values grow

Run with PROMETHEUS_MULTIPROC_DIR set to an empty directory. `events` records a fixed stream (every
reason, ERROR with several codes, variants past the cap, durations across every bucket), through
flagmetrics' direct writes (`fast`) or through prometheus_client's own `inc`/`observe` (what the
exporter did before), and prints the samples prometheus_client's `MultiProcessCollector` reads.
`threads` hammers one series from several threads. `fork` records in a parent, a forked child and
the parent again, and prints each process's file's samples.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from importlib.metadata import version
from typing import Any

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector

from flagmetrics import LocalStore, PrometheusExporter
from flagmetrics.admission import Series
from flagmetrics.events import Evaluation

DIRECTORY = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def samples(paths: list[str] | None = None) -> dict[str, float]:
    """Every sample of the directory's files (or of `paths`), keyed by name and labels."""
    metrics = MultiProcessCollector.merge(paths) if paths is not None else MultiProcessCollector(None).collect()
    return {
        f"{s.name}{json.dumps(s.labels, sort_keys=True)}": s.value
        for metric in metrics
        for s in metric.samples
        if s.name.startswith("feature_flag_") or "overflow" in s.name
    }


def exporter() -> PrometheusExporter:
    return PrometheusExporter(registry=CollectorRegistry(), store=LocalStore(None), max_variants_per_flag=3)


def stream() -> list[Evaluation]:
    events = []
    for i in range(3_000):
        flag = f"flag_{i % 7}"
        if i % 9 == 0:
            events.append(Evaluation(flag, "ERROR", None, f"u{i}", 0.003 * (i % 11), ("GENERAL", "PARSE_ERROR")[i % 2]))
        else:
            variant = f"v{i % 5}"  # 5 variants, cap 3: two counted under __overflow__
            durations = (0.01, 0.3, 0.7, 2.0, 9.0, 30.0, 80.0, 400.0, 2000.0, 0.0)
            events.append(Evaluation(flag, ("SPLIT", "STATIC", "DEFAULT")[i % 3], variant, f"u{i}", durations[i % 10]))
    return events


def slow_record(self: Series, duration_s: float | None, code: str | None, user: str | None) -> bool:
    """What `record_sync` did before the direct writes: prometheus_client's own calls."""
    self.count.inc()
    if duration_s is not None:
        self.duration.observe(duration_s)
    if self.is_error:
        self.error(code).inc()
    return self._buffer.add(self.flag, self.is_error, user, self.exposure)


def events(mode: str) -> dict[str, Any]:
    if mode == "prometheus_client":
        Series.record = slow_record  # type: ignore[method-assign]
    recorder = exporter()
    for event in stream():
        recorder.record_sync(event)
    written = [series for series in recorder._admission._by_labels.values() if series._cells is not None]
    return {"samples": samples(), "direct_series": len(written), "version": version("prometheus-client")}


def threads(count: int, each: int) -> dict[str, Any]:
    recorder = exporter()
    events = [Evaluation("hammered", "SPLIT", "on", f"user-{n}", 0.5) for n in range(1_000)]

    def hammer() -> None:
        for n in range(each):
            recorder.record_sync(events[n % 1_000])

    workers = [threading.Thread(target=hammer) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    from flagmetrics.compat import multiprocess_lock

    buffered = recorder._buffer.flags["hammered"]
    return {
        **samples(),
        "buffered": [buffered.total, len(buffered.users), len(buffered.variants["on"])],
        "one_lock": recorder._buffer.lock is multiprocess_lock(),
    }


def fork() -> dict[str, Any]:
    recorder = exporter()
    event = Evaluation("forked", "SPLIT", "on", None, 0.5)
    for _ in range(100):
        recorder.record_sync(event)
    child = os.fork()
    if child == 0:
        for _ in range(30):
            recorder.record_sync(event)
        os._exit(0)
    os.waitpid(child, 0)
    for _ in range(7):
        recorder.record_sync(event)
    files = {
        pid: [os.path.join(DIRECTORY, f"{kind}_{pid}.db") for kind in ("counter", "histogram")]
        for pid in (os.getpid(), child)
    }
    return {"parent": samples(files[os.getpid()]), "child": samples(files[child]), "all": samples()}


def grow() -> dict[str, Any]:
    """Enough series to grow the files past their first size while early series keep being written."""
    recorder = PrometheusExporter(registry=CollectorRegistry(), store=LocalStore(None), max_flags=20_000)
    sizes = []
    for _ in range(3):
        for i in range(8_000):
            recorder.record_sync(Evaluation(f"grown_flag_{i}", "STATIC", "on", None, 0.5))
        sizes.append(os.path.getsize(os.path.join(DIRECTORY, f"counter_{os.getpid()}.db")))
    values.close_all_multiprocess_files()  # prometheus_client can still close its files
    counts = [v for k, v in samples().items() if k.startswith("feature_flag_evaluations_total")]
    return {"sizes": sizes, "series": len(counts), "all_three": sum(v == 3.0 for v in counts)}


def main(argv: list[str]) -> None:
    if argv[0] == "events":
        result = events(argv[1])
    elif argv[0] == "grow":
        result = grow()
    elif argv[0] == "threads":
        result = threads(int(argv[1]), int(argv[2]))
    else:
        result = fork()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
