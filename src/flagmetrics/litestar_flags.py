"""Adapter for litestar-flags: make a `FeatureFlagClient` report every evaluation to an exporter.

litestar-flags sends evaluations to its analytics collector only when its engine ran; a missing flag,
a type mismatch or an exception returns early and is never reported. `instrument` attaches the
exporter as the client's collector and reports those early returns as ERROR with their error code.
"""

from __future__ import annotations

import time
from typing import Any

from flagmetrics.compat import flag_client_internals
from flagmetrics.events import ERROR, Evaluation
from flagmetrics.exceptions import MissingDependencyError

try:
    from litestar_flags.client import FeatureFlagClient
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("litestar-flags", "flags") from exc

from flagmetrics.exporter import PrometheusExporter

__all__ = ["instrument"]


class _Both:
    """An analytics collector that feeds two collectors (the client's own and the exporter)."""

    def __init__(self, first: Any, second: PrometheusExporter) -> None:
        self._first = first
        self._second = second

    async def record(self, event: Any) -> None:
        await self._second.record(event)
        await self._first.record(event)

    async def flush(self) -> None:
        await self._first.flush()

    async def close(self) -> None:
        await self._first.close()


def instrument(client: FeatureFlagClient, exporter: PrometheusExporter) -> FeatureFlagClient:
    """Report every evaluation of `client` to `exporter` (idempotent); returns the client."""
    if getattr(client, "_flagmetrics_exporter", None) is exporter:
        return client
    engine, evaluate, merge_context = flag_client_internals(client)
    current = engine.analytics_collector
    if current is None:
        collector: Any = exporter
    elif current is exporter:
        collector = current
    else:
        collector = _Both(current, exporter)
    engine.analytics_collector = collector
    client._analytics_collector = collector

    async def _evaluate(flag_key: str, default: Any, expected_type: Any, context: Any) -> Any:
        start = time.perf_counter()
        details = await evaluate(flag_key, default, expected_type, context)
        if details.error_code is not None:
            # The engine never ran, so the collector saw nothing: report it here.
            try:
                user = merge_context(context).targeting_key
            except Exception:
                user = None
            await exporter.record(
                Evaluation(
                    flag_key=flag_key,
                    reason=ERROR,
                    targeting_key=user,
                    evaluation_duration_ms=(time.perf_counter() - start) * 1000.0,
                    error_code=str(details.error_code),
                )
            )
        return details

    client._evaluate = _evaluate
    client._flagmetrics_exporter = exporter
    return client
