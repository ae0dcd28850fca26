"""Record a known set of evaluations and a pin through the library into a store, as a worker would.

    python -m tests.workers.populate DIRECTORY

Run with PROMETHEUS_MULTIPROC_DIR set to DIRECTORY: it then holds a worker's counter files next to
the local store's fleet state, as under gunicorn.
"""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry

from flagmetrics import LocalStore, PrometheusExporter, Store
from flagmetrics.events import Evaluation

EVENTS = [
    Evaluation("checkout", "TARGETING_MATCH", "on", "alice", 1.0),
    Evaluation("checkout", "STATIC", "off", "bob", 1.0),
    Evaluation("checkout", "STATIC", "off", "carol", 1.0),
    Evaluation("checkout", "ERROR", None, "dave", 1.0, "TYPE_MISMATCH"),
    Evaluation("banner", "DISABLED", "", "alice", 1.0),
    Evaluation("banner", "DISABLED", "", "bob", 1.0),
    Evaluation("search", "ERROR", None, "erin", 1.0, "FLAG_NOT_FOUND"),
    Evaluation("search", "ERROR", None, "frank", 1.0, "GENERAL"),
    Evaluation("search", "SPLIT", "b", "erin", 1.0),
]
PINNED = ("legacy", {"unique_users": 500, "error_rate": 12.5})  # error_rate in percent, as litestar-flags takes it


async def populate(store: Store) -> None:
    """Record EVENTS and pin PINNED through the library, flush them to `store` and close it."""
    exporter = PrometheusExporter(registry=CollectorRegistry(), store=store)
    for event in EVENTS:
        await exporter.record(event)
    exporter.update_from_metrics(*PINNED)
    await exporter.flush()
    await exporter.close()


if __name__ == "__main__":
    asyncio.run(populate(LocalStore(sys.argv[1])))
