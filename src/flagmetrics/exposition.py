"""Internal: one scrape: read the fleet snapshot (async), then merge and render in a fresh registry off the loop.

`reply` is the whole answer to a request for the metrics (auth, rendering, headers), shared by every
framework integration.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY

from flagmetrics.auth import Credentials
from flagmetrics.collector import FleetCollector, fleet_text
from flagmetrics.config import Settings
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.logs import logger
from flagmetrics.multiprocess import FilesCollector, metrics_lock
from flagmetrics.spool import spool_directory, spool_usage
from flagmetrics.stores import default_store
from flagmetrics.stores.base import Snapshot, snapshot_within

if TYPE_CHECKING:
    from flagmetrics.exporter import PrometheusExporter

__all__ = ["Reply", "ScrapeSource", "SpoolCollector", "encode", "render", "render_snapshot", "reply"]

_EOF = b"# EOF\n"


async def render(exporter: PrometheusExporter, accept: str | None = None) -> tuple[bytes, str]:
    """Return the body and content type of a scrape; OpenMetrics when `accept` asks for it."""
    snapshot = await exporter.fleet_snapshot() if exporter.settings.fleet_gauges else None
    return await asyncio.to_thread(render_snapshot, exporter, snapshot, accept)


def render_snapshot(
    exporter: PrometheusExporter, snapshot: Snapshot | None, accept: str | None = None
) -> tuple[bytes, str]:
    """Render every worker's counters and histograms plus the fleet gauges of `snapshot` (blocking)."""
    return encode(
        snapshot,
        accept,
        prefix=exporter.prefix,
        multiprocess_path=exporter.multiprocess_path,
        registry=exporter.registry or REGISTRY,
        fleet_gauges=exporter.settings.fleet_gauges,
        spool_path=exporter.spool_path,
    )


def encode(
    snapshot: Snapshot | None,
    accept: str | None = None,
    *,
    prefix: str = "",
    multiprocess_path: str | None = None,
    registry: CollectorRegistry | None = None,
    fleet_gauges: bool = True,
    spool_path: str | None = None,
) -> tuple[bytes, str]:
    """Render the fleet gauges of `snapshot` with the workers' files (or `registry` in one process).

    With neither a multiprocess path nor a registry, only the fleet gauges are rendered; with
    `fleet_gauges` False, only the workers' metrics. With `spool_path`, the spool's gauges too.
    """
    encoder, content_type = choose_encoder(accept or "")
    openmetrics = content_type.startswith("application/openmetrics-text")
    scrape = CollectorRegistry(auto_describe=False)
    if spool_path is not None:
        scrape.register(SpoolCollector(spool_path, prefix))
    if multiprocess_path is not None:
        scrape.register(FilesCollector(multiprocess_path))
        with metrics_lock(multiprocess_path):
            body = encoder(scrape)
    else:
        if registry is not None:
            scrape.register(registry)  # a registry is a collector of its own metrics
        body = encoder(scrape)
    if not fleet_gauges:
        return body, content_type
    fleet = fleet_text(snapshot, prefix, openmetrics=openmetrics).encode()
    if openmetrics:  # the fleet gauges go before the end marker
        return body.removesuffix(_EOF) + fleet + _EOF, content_type
    return body + fleet, content_type


class SpoolCollector:
    """The spool's gauges, read from its directory at each scrape: batches and bytes waiting on this host."""

    def __init__(self, path: str, prefix: str = "") -> None:
        self._path = path
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """Yield `flagmetrics_spool_batches` and `flagmetrics_spool_bytes`."""
        batches, size = spool_usage(self._path)
        yield GaugeMetricFamily(
            f"{self._prefix}flagmetrics_spool_batches",
            "Batches waiting in this host's spool for the fleet store (written by workers that could not deliver)",
            value=batches,
        )
        yield GaugeMetricFamily(
            f"{self._prefix}flagmetrics_spool_bytes", "Bytes of the batches waiting in this host's spool", value=size
        )


class ScrapeSource:
    """A collector for prometheus_client's own HTTP servers that reads the store at each scrape.

    It opens the store for each scrape (blocking, bounded by `scrape_timeout_s`), so it suits a
    separate process or thread, such as the gunicorn master or `flagmetrics serve`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        prefix: str = "",
        multiprocess_path: str | None = None,
        workers: bool = True,
    ) -> None:
        """Serve the fleet gauges, and the workers' files of `multiprocess_path` when `workers` is true.

        The store is Redis when `settings.redis_url` or `settings.redis_sentinel` is set, else the `LocalStore` in
        `multiprocess_path`; with `workers` false (`flagmetrics serve`) the fleet gauges are always
        served, even where `settings.fleet_gauges` turns them off for the workers' scrapes.
        """
        if not settings.uses_redis and multiprocess_path is None:
            raise ConfigurationError(
                "no fleet store: set `redis_url` (FLAGMETRICS_REDIS_URL) or `redis_sentinel` "
                "(FLAGMETRICS_REDIS_SENTINEL), or give the multiprocess directory"
            )
        self._settings = settings
        self._prefix = prefix
        self._path = multiprocess_path
        self._workers = workers
        if settings.uses_redis:
            # Load redis-py now rather than in the first scrape, which would take that much longer.
            importlib.import_module("flagmetrics.stores.redis")

    def collect(self) -> Iterator[Metric]:
        """Yield the workers' metrics, then read the store and yield the fleet gauges."""
        if self._workers and self._path is not None:
            with metrics_lock(self._path):
                yield from FilesCollector(self._path).collect()
        spool = spool_directory(self._settings.spool_dir, self._path) if self._settings.uses_redis else None
        if self._workers and spool is not None:
            yield from SpoolCollector(spool, self._prefix).collect()
        if self._settings.fleet_gauges or not self._workers:
            yield from FleetCollector(asyncio.run(self._snapshot()), self._prefix).collect()

    async def _snapshot(self) -> Snapshot | None:
        store = default_store(self._settings, self._path)
        try:
            return await snapshot_within(store, self._settings.scrape_timeout_s)
        except StoreError:
            return None
        finally:
            await store.close()


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request for the metrics, whatever serves it (the Litestar plugin, `flagmetrics.asgi`)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


async def reply(
    exporter: PrometheusExporter,
    credentials: Credentials | None,
    *,
    authorization: str | None,
    accept: str | None,
) -> Reply:
    """Check the credentials, then render a scrape; never raises (a failed render answers 500, logged)."""
    if credentials is not None and not credentials.allows(authorization):
        return Reply(
            401, b"unauthorized\n", (("content-type", "text/plain"), ("www-authenticate", credentials.challenge))
        )
    try:
        body, content_type = await render(exporter, accept)
    except Exception:
        logger.exception("flagmetrics: could not render the metrics")
        return Reply(500, b"could not render the metrics\n", (("content-type", "text/plain"),))
    return Reply(200, body, (("content-type", content_type), ("x-flagmetrics-worker", str(os.getpid()))))
