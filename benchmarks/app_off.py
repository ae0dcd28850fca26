"""The example app with the exporter OFF: the same flags and routes as examples/app.py, no flagmetrics.

Served for the end-to-end comparison with
`gunicorn -c gunicorn.conf.py benchmarks.app_off:app` (the same gunicorn settings as the example).
`examples.app.create_app(None, ...)` builds the same flags and routes with a `FeatureFlagClient`
that has no exporter, no `instrument` and no `FlagMetricsPlugin` (so no /metrics route and no
flusher). Importing examples.app builds its (never started, never fed) exporter object; no request
touches it.

BENCH_COLLECTOR chooses what litestar-flags reports evaluations to, to split the overhead:
  none (default)  no analytics collector: the "off" baseline;
  noop            a collector whose record() does nothing: what litestar-flags itself spends
                  building a FlagEvaluationEvent per evaluation, whatever the collector;
  reference       litestar-flags 0.2.2's own PrometheusExporter.
"""

from __future__ import annotations

import os
from typing import Any

from examples.app import create_app


class NoopCollector:
    """An analytics collector that drops every event."""

    async def record(self, event: Any) -> None:
        return None

    async def record_batch(self, events: Any) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _collector(kind: str) -> Any:
    if kind == "none":
        return None
    if kind == "noop":
        return NoopCollector()
    if kind == "reference":
        from litestar_flags.analytics.exporters.prometheus import PrometheusExporter as Reference
        from prometheus_client import CollectorRegistry

        # Its own registry: examples.app's exporter already registered the same names in the default.
        return Reference(registry=CollectorRegistry())
    raise ValueError(f"BENCH_COLLECTOR must be none, noop or reference, got {kind!r}")


app = create_app(None, _collector(os.environ.get("BENCH_COLLECTOR", "none")))
