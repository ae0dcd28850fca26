"""Fork COUNT short-lived workers that each record three evaluations and exit, folding each one's files.

    python -m tests.workers.dead_workers COUNT

Run with PROMETHEUS_MULTIPROC_DIR set; after each worker exits its files are folded into the archives,
as gunicorn's child_exit hook does. Prints how many files were folded.
"""

from __future__ import annotations

import os
import sys

from prometheus_client import CollectorRegistry

from flagmetrics import LocalStore, PrometheusExporter
from flagmetrics.events import Evaluation
from flagmetrics.multiprocess import compact


def main(argv: list[str]) -> None:
    folded = 0
    for i in range(int(argv[0])):
        pid = os.fork()
        if pid == 0:
            exporter = PrometheusExporter(registry=CollectorRegistry(), store=LocalStore(None))
            for n in range(3):
                exporter.record_sync(Evaluation("button_color", "SPLIT", "red", f"dead-{i}-{n}", 0.5))
            os._exit(0)
        os.waitpid(pid, 0)
        folded += compact(os.environ["PROMETHEUS_MULTIPROC_DIR"], pid)
    print(folded)


if __name__ == "__main__":
    main(sys.argv[1:])
