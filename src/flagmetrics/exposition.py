"""One scrape: read the fleet snapshot (async), then merge and render in a fresh registry off the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY

from flagmetrics.collector import FleetCollector
from flagmetrics.multiprocess import directory_lock
from flagmetrics.stores.base import Snapshot

if TYPE_CHECKING:
    from flagmetrics.exporter import PrometheusExporter

__all__ = ["render", "render_snapshot"]


async def render(exporter: PrometheusExporter, accept: str | None = None) -> tuple[bytes, str]:
    """Return the body and content type of a scrape; OpenMetrics when `accept` asks for it."""
    snapshot = await exporter.fleet_snapshot()
    return await asyncio.to_thread(render_snapshot, exporter, snapshot, accept)


def render_snapshot(
    exporter: PrometheusExporter, snapshot: Snapshot | None, accept: str | None = None
) -> tuple[bytes, str]:
    """Render every worker's counters and histograms plus the fleet gauges of `snapshot` (blocking)."""
    encoder, content_type = choose_encoder(accept or "")
    fleet = FleetCollector(snapshot, exporter.prefix)
    path = exporter.multiprocess_path
    if path is None:
        registry = exporter.registry or REGISTRY
        return encoder(_Joined(registry, fleet)), content_type
    scrape = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(scrape, path=path)
    scrape.register(fleet)
    with directory_lock(path):
        return encoder(scrape), content_type


class _Joined:
    """Collect from a registry and one more collector, without registering anything."""

    def __init__(self, registry: CollectorRegistry, extra: FleetCollector) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra.collect()
