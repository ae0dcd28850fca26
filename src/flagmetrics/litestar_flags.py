"""Adapter for litestar-flags: make a `FeatureFlagClient` report every evaluation to an exporter.

litestar-flags sends evaluations to its analytics collector only when its engine ran; a missing flag,
a type mismatch or an exception returns early and is never reported. `instrument` attaches the
exporter as the client's collector and reports those early returns as ERROR with their error code.
It also reads each evaluated flag's definition from the client's storage (in the background, once a
minute per flag) and declares the split its variants' weights serve, for the split check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Final

from flagmetrics.compat import flag_client_internals
from flagmetrics.events import ERROR, Evaluation
from flagmetrics.exceptions import MissingDependencyError
from flagmetrics.logs import ThrottledLog

try:
    from litestar_flags.client import FeatureFlagClient
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("litestar-flags", "flags") from exc

from flagmetrics.exporter import PrometheusExporter

__all__ = ["instrument", "served_split"]

SPLIT_REFRESH_S: Final = 60.0
"""How often a flag's definition is read again for its split."""
_MAX_SPLIT_FLAGS: Final = 10_000
_log = ThrottledLog()


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

    next_read: dict[str, float] = {}
    reading: set[asyncio.Task[None]] = set()

    async def _learn_split(flag_key: str) -> None:
        try:
            flag = await client.storage.get_flag(flag_key)
            split = served_split(getattr(flag, "variants", None) or ())
            if split is not None:
                exporter.expect_split(flag_key, split, declared=False)
        except Exception as exc:
            _log.warning("split", "flagmetrics: could not read the split of %r: %s", flag_key, exc)

    async def _evaluate(flag_key: str, default: Any, expected_type: Any, context: Any) -> Any:
        start = time.perf_counter()
        details = await evaluate(flag_key, default, expected_type, context)
        due = next_read.get(flag_key)
        if (due is not None and due <= start) or (due is None and len(next_read) < _MAX_SPLIT_FLAGS):
            next_read[flag_key] = start + SPLIT_REFRESH_S
            task = asyncio.get_running_loop().create_task(_learn_split(flag_key))
            reading.add(task)
            task.add_done_callback(reading.discard)
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


def served_split(variants: Iterable[Any]) -> dict[str, float] | None:
    """The share of users each variant is served, as litestar-flags' engine picks them; None without a split.

    The engine sorts variants by key and serves a user the first whose running total of weights
    exceeds the user's bucket (0 to 99); buckets past the total go to the last variant.
    """
    ordered = sorted(variants, key=lambda variant: str(variant.key))
    if len(ordered) < 2:
        return None
    shares: dict[str, float] = {}
    total = 0.0
    for variant in ordered:
        low = min(total, 100.0)
        total += max(0.0, float(variant.weight or 0))
        shares[str(variant.key)] = shares.get(str(variant.key), 0.0) + min(total, 100.0) - low
    last = str(ordered[-1].key)
    shares[last] += 100.0 - min(total, 100.0)
    return shares if sum(1 for share in shares.values() if share > 0) >= 2 else None
