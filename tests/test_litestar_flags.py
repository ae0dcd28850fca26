"""litestar-flags integration: one line next to FeatureFlagsPlugin, in either order, with the early
returns litestar-flags never reports (flag not found, type mismatch) counted as ERROR."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, get
from litestar.testing import TestClient
from litestar_flags import (
    EvaluationContext,
    FeatureFlag,
    FeatureFlagClient,
    FeatureFlagsConfig,
    FeatureFlagsPlugin,
    FlagRule,
    MemoryStorageBackend,
)
from litestar_flags.analytics.collectors.memory import InMemoryAnalyticsCollector
from litestar_flags.analytics.protocols import AnalyticsCollector
from litestar_flags.types import FlagType
from prometheus_client import CollectorRegistry

from flagmetrics import LocalStore, PrometheusExporter
from flagmetrics.litestar import FlagMetricsPlugin
from flagmetrics.litestar_flags import instrument
from tests.helpers import sample_value

pytestmark = pytest.mark.usefixtures("clean_env")

FLAGS = [
    FeatureFlag(key="static_on", name="static", default_enabled=True),
    FeatureFlag(
        key="beta",
        name="beta",
        rules=[FlagRule(name="beta", conditions=[{"attribute": "plan", "operator": "eq", "value": "beta"}])],
    ),
    FeatureFlag(key="banner", name="banner", flag_type=FlagType.STRING, default_value={"text": "hi"}),
]


def exporter_and_registry() -> tuple[PrometheusExporter, CollectorRegistry]:
    registry = CollectorRegistry()
    return PrometheusExporter(registry=registry, store=LocalStore(None)), registry


@get("/evaluate")
async def evaluate(request: Request[Any, Any, Any]) -> dict[str, Any]:
    feature_flags: FeatureFlagClient = request.app.state.feature_flags
    if await feature_flags.storage.get_flag("static_on") is None:
        for flag in FLAGS:
            await feature_flags.storage.create_flag(flag)
    beta = EvaluationContext(targeting_key="u1", attributes={"plan": "beta"})
    return {
        "static": await feature_flags.is_enabled("static_on", EvaluationContext(targeting_key="u2")),
        "beta": await feature_flags.is_enabled("beta", beta),
        "missing": await feature_flags.is_enabled("missing", beta),
        "mismatch": await feature_flags.get_number_value("banner", 0, beta),
    }


@pytest.mark.parametrize("metrics_first", [False, True], ids=["flags-plugin-first", "metrics-plugin-first"])
def test_plugin_next_to_feature_flags_plugin_counts_every_evaluation(metrics_first: bool, tmp_path: Path) -> None:
    """Whatever the plugin order, every evaluation is counted, early returns as ERROR with their code."""
    registry = CollectorRegistry()
    exporter = PrometheusExporter(registry=registry, store=LocalStore(str(tmp_path)))
    plugins: list[Any] = [FeatureFlagsPlugin(FeatureFlagsConfig()), FlagMetricsPlugin(exporter)]
    if metrics_first:
        plugins.reverse()
    with TestClient(Litestar([evaluate], plugins=plugins)) as client:
        for _ in range(3):
            assert client.get("/evaluate").json() == {"static": True, "beta": True, "missing": False, "mismatch": 0}
    fleet = LocalStore(str(tmp_path)).read().flags  # delivered by the final flush at shutdown

    counted = "feature_flag_evaluations_total"
    assert sample_value(registry, counted, flag_key="static_on", reason="STATIC", variant="") == 3
    assert sample_value(registry, counted, flag_key="beta", reason="TARGETING_MATCH", variant="beta") == 3
    assert sample_value(registry, counted, flag_key="missing", reason="ERROR", variant="") == 3
    assert sample_value(registry, counted, flag_key="banner", reason="ERROR", variant="") == 3
    errors = "feature_flag_evaluation_errors_total"
    assert sample_value(registry, errors, flag_key="missing", error_code="FLAG_NOT_FOUND") == 3
    assert sample_value(registry, errors, flag_key="banner", error_code="TYPE_MISMATCH") == 3
    assert {flag: (stats.total, stats.errors) for flag, stats in fleet.items()} == {
        "static_on": (3, 0),
        "beta": (3, 0),
        "missing": (3, 3),
        "banner": (3, 3),
    }


def test_instrument_keeps_the_clients_own_collector() -> None:
    """A client that already has a collector reports to it and to the exporter."""
    exporter, registry = exporter_and_registry()
    own = InMemoryAnalyticsCollector()
    storage = MemoryStorageBackend()
    client = instrument(FeatureFlagClient(storage=storage, analytics_collector=own), exporter)

    async def scenario() -> None:
        await storage.create_flag(FLAGS[0])
        await client.is_enabled("static_on", EvaluationContext(targeting_key="u1"))
        await client.is_enabled("missing", EvaluationContext(targeting_key="u1"))

    asyncio.run(scenario())
    assert len(asyncio.run(own.get_events())) == 1  # litestar-flags reports only what its engine ran
    evaluations = "feature_flag_evaluations_total"
    assert sample_value(registry, evaluations, flag_key="static_on", reason="STATIC", variant="") == 1
    assert sample_value(registry, evaluations, flag_key="missing", reason="ERROR", variant="") == 1


def test_instrument_twice_counts_once() -> None:
    exporter, registry = exporter_and_registry()
    storage = MemoryStorageBackend()
    client = instrument(instrument(FeatureFlagClient(storage=storage), exporter), exporter)
    asyncio.run(client.is_enabled("missing"))
    assert sample_value(registry, "feature_flag_evaluations_total", flag_key="missing", reason="ERROR", variant="") == 1


def test_exporter_is_a_litestar_flags_analytics_collector() -> None:
    exporter, _ = exporter_and_registry()
    assert isinstance(exporter, AnalyticsCollector)
