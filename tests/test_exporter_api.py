"""`PrometheusExporter`: litestar-flags' API (pins, aggregators, resets, tracked flags) and metric names."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import fakeredis
import pytest
from litestar_flags.analytics.aggregator import AnalyticsAggregator, FlagMetrics
from litestar_flags.analytics.collectors.memory import InMemoryAnalyticsCollector
from litestar_flags.types import EvaluationReason
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flagmetrics import (
    ConfigurationError,
    FlagMetricsError,
    PrometheusExporter,
    RedisStore,
    Settings,
    StoreError,
)
from flagmetrics.exposition import render
from flagmetrics.stores.base import Snapshot
from tests.helpers import (
    SwitchableStore,
    dropped,
    ev,
    evaluations,
    fake_redis_store,
    flag_event,
    make_exporter,
    run,
    summary,
)

pytestmark = pytest.mark.usefixtures("clean_env")


# -- update_from_metrics / update_from_aggregator --------------------------------------------------


def test_update_from_metrics_pins_figures_after_flush(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        exporter.update_from_metrics("f", {"unique_users": 42, "error_rate": 12.5, "total_evaluations": 80})
        await exporter.flush()
        return await exporter.fleet_snapshot()

    snapshot = run(exporter, scenario)
    assert snapshot is not None
    assert (snapshot.flags["f"].unique_users, snapshot.flags["f"].error_rate) == (42, 0.125)


def test_update_from_metrics_accepts_a_metrics_provider(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        exporter.update_from_metrics("f", FlagMetrics(unique_users=7, error_rate=50.0, total_evaluations=10))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    snapshot = run(exporter, scenario)
    assert snapshot is not None
    assert (snapshot.flags["f"].unique_users, snapshot.flags["f"].error_rate) == (7, 0.5)


def test_pinned_figures_replace_computed_ones(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev("f", "ERROR", None, user="u2"))
        exporter.update_from_metrics("f", {"unique_users": 100, "error_rate": 1.0})
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (2, 1, 100, 0.01)}


def test_update_from_metrics_with_empty_dict_pins_zeros(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        exporter.update_from_metrics("f", {})
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (0, 0, 0, 0.0)}


def test_update_from_metrics_is_visible_to_other_workers(server: fakeredis.FakeServer) -> None:
    first, _ = make_exporter(server)
    second, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        try:
            first.update_from_metrics("f", {"unique_users": 5, "error_rate": 20.0})
            await first.flush()
            return await second.fleet_snapshot()
        finally:
            await second.close()

    assert summary(run(first, scenario)) == {"f": (0, 0, 5, 0.2)}


@pytest.mark.parametrize(
    "metrics",
    [
        {"unique_users": -1, "error_rate": 0.0},
        {"unique_users": 1, "error_rate": 100.5},
        {"unique_users": 1, "error_rate": -0.1},
        {"unique_users": 1, "error_rate": float("nan")},
        {"unique_users": "many", "error_rate": 0.0},
        {"unique_users": 1, "error_rate": "high"},
        {"unique_users": [1], "error_rate": 0.0},
    ],
    ids=["negative-users", "rate-over-100", "negative-rate", "nan-rate", "str-users", "str-rate", "list-users"],
)
def test_update_from_metrics_rejects_invalid_figures(server: fakeredis.FakeServer, metrics: Any) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> None:
        with pytest.raises(ConfigurationError, match="'f'"):
            exporter.update_from_metrics("f", metrics)

    run(exporter, scenario)


def test_update_from_metrics_rejects_infinite_users_with_configuration_error(
    server: fakeredis.FakeServer,
) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> None:
        with pytest.raises(ConfigurationError):
            exporter.update_from_metrics("f", {"unique_users": float("inf"), "error_rate": 0.0})

    run(exporter, scenario)


def test_pin_with_unencodable_flag_key_does_not_block_later_flushes(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)
    store = exporter.store
    assert store is not None

    async def scenario() -> Snapshot | None:
        with contextlib.suppress(ConfigurationError):  # rejecting the key up front is a fine fix
            exporter.update_from_metrics("bad\ud800key", {"unique_users": 1, "error_rate": 0.0})
        await exporter.record(ev("g", user="u1"))
        for _ in range(2):
            with contextlib.suppress(Exception):
                await exporter.flush()
        return await exporter.fleet_snapshot()

    async def main() -> Snapshot | None:
        try:
            return await scenario()
        finally:
            with contextlib.suppress(Exception):
                await exporter.close()
            await store.close()

    assert "g" in summary(asyncio.run(main()))


def test_update_from_aggregator_with_litestar_flags_aggregator(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)
    collector = InMemoryAnalyticsCollector()
    aggregator = AnalyticsAggregator(collector)

    async def scenario() -> Snapshot | None:
        for user in ("u1", "u2", "u3"):
            await collector.record(flag_event(flag_key="a", targeting_key=user))
        await collector.record(flag_event(flag_key="a", reason=EvaluationReason.ERROR, targeting_key="u1"))
        await collector.record(flag_event(flag_key="b", targeting_key="u9"))
        await exporter.update_from_aggregator(aggregator, ["a", "b"])
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"a": (0, 0, 3, 0.25), "b": (0, 0, 1, 0.0)}


def test_update_from_aggregator_awaits_async_get_flag_metrics_async(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)
    calls: list[tuple[str, int]] = []

    class Aggregator:
        async def get_flag_metrics_async(self, flag_key: str, window_seconds: int) -> dict[str, Any]:
            calls.append((flag_key, window_seconds))
            return {"unique_users": 9, "error_rate": 10.0}

    async def scenario() -> Snapshot | None:
        await exporter.update_from_aggregator(Aggregator(), ["f"], window_seconds=60)
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (0, 0, 9, 0.1)}
    assert calls == [("f", 60)]


def test_update_from_aggregator_accepts_sync_get_flag_metrics(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    class Aggregator:
        def get_flag_metrics(self, flag_key: str, window_seconds: int) -> FlagMetrics:
            return FlagMetrics(unique_users=4, error_rate=25.0)

    async def scenario() -> Snapshot | None:
        await exporter.update_from_aggregator(Aggregator(), ["f"])
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (0, 0, 4, 0.25)}


def test_update_from_aggregator_raises_listing_failing_flags(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    class Aggregator:
        async def get_flag_metrics(self, flag_key: str, window_seconds: int) -> dict[str, Any]:
            if flag_key == "broken":
                raise RuntimeError("backend gone")
            if flag_key == "weird":
                return {"unique_users": 1, "error_rate": 500.0}
            return {"unique_users": 2, "error_rate": 0.0}

    async def scenario() -> tuple[str, Snapshot | None]:
        with pytest.raises(FlagMetricsError) as info:
            await exporter.update_from_aggregator(Aggregator(), ["good", "broken", "weird"])
        await exporter.flush()
        return str(info.value), await exporter.fleet_snapshot()

    message, snapshot = run(exporter, scenario)
    assert "2 of 3" in message
    assert "'broken'" in message
    assert "backend gone" in message
    assert "'weird'" in message
    assert "'good'" not in message
    assert summary(snapshot) == {"good": (0, 0, 2, 0.0)}


def test_update_from_aggregator_without_getter_raises(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> None:
        with pytest.raises(ConfigurationError, match="get_flag_metrics"):
            await exporter.update_from_aggregator(object(), ["f"])

    run(exporter, scenario)


# -- reset -----------------------------------------------------------------------------------------


def test_reset_flag_stats_clears_one_flag_in_the_store(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", user="u1"))
        exporter.update_from_metrics("c", {"unique_users": 3, "error_rate": 0.0})
        await exporter.flush()
        await exporter.reset_flag_stats("a")
        await exporter.reset_flag_stats("c")
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"b": (1, 0, 1, 0.0)}


def test_reset_flag_stats_forgets_unique_users(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        await exporter.flush()
        await exporter.reset_flag_stats("f")
        await exporter.record(ev(user="u1"))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (1, 0, 1, 0.0)}


def test_reset_flag_stats_discards_what_is_buffered(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", user="u1"))
        await exporter.reset_flag_stats("a")
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"b": (1, 0, 1, 0.0)}


def test_reset_flag_stats_returns_buffer_room(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, buffer_capacity=1)

    async def scenario() -> None:
        await exporter.record(ev(user="u1"))
        await exporter.reset_flag_stats("f")
        await exporter.record(ev(user="u2"))

    run(exporter, scenario)
    assert dropped(registry) == 0.0


def test_reset_all_stats_clears_the_store(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", "ERROR", None, user="u1"))
        exporter.update_from_metrics("c", {"unique_users": 3, "error_rate": 0.0})
        await exporter.flush()
        await exporter.record(ev("d", user="u1"))
        await exporter.reset_all_stats()
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {}


def test_reset_all_stats_removes_every_key_of_the_store(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)
    store = exporter.store
    assert isinstance(store, RedisStore)

    async def scenario() -> list[bytes]:
        await exporter.record(ev("a", user="u1"))
        exporter.update_from_metrics("c", {"unique_users": 3, "error_rate": 0.0})
        await exporter.flush()
        await exporter.reset_all_stats()
        keys = await store.client.keys("*")
        return sorted(key for key in keys if isinstance(key, bytes) and b":seq:" not in key)

    assert run(exporter, scenario) == []


def test_reset_does_not_touch_counters(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev())
        await exporter.reset_all_stats()

    run(exporter, scenario)
    assert evaluations(registry, "f", "DEFAULT", "on") == 1.0


def test_reset_flag_stats_discards_the_batch_in_flight(server: fakeredis.FakeServer) -> None:
    store = fake_redis_store(server, SwitchableStore)
    exporter, _ = make_exporter(server, store=store)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", user="u1"))
        store.down = True
        with pytest.raises(StoreError):
            await exporter.flush()
        store.down = False
        await exporter.reset_flag_stats("a")
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"b": (1, 0, 1, 0.0)}


# -- tracked flags ---------------------------------------------------------------------------------


def test_get_tracked_flag_keys_lists_recorded_flags_sorted(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> list[str]:
        for key in ("zeta", "alpha", "mid", "alpha"):
            await exporter.record(ev(key))
        return exporter.get_tracked_flag_keys()

    assert run(exporter, scenario) == ["alpha", "mid", "zeta"]


def test_get_tracked_flag_keys_of_new_exporter_is_empty(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)
    assert exporter.get_tracked_flag_keys() == []


def test_get_tracked_flag_keys_include_fleet_flags_after_snapshot(server: fakeredis.FakeServer) -> None:
    first, _ = make_exporter(server)
    second, _ = make_exporter(server)

    async def scenario() -> tuple[list[str], list[str]]:
        try:
            await second.record(ev("elsewhere"))
            await second.flush()
            await first.record(ev("here"))
            before = first.get_tracked_flag_keys()
            await first.fleet_snapshot()
            return before, first.get_tracked_flag_keys()
        finally:
            await second.close()

    assert run(first, scenario) == (["here"], ["elsewhere", "here"])


# -- metric names and registration -----------------------------------------------------------------


def test_prefix_is_applied_to_every_metric_name(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, prefix="myapp", max_flags=1)

    async def scenario() -> bytes:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", "ERROR", None, ms=float("nan")))
        await exporter.record(ev(flag_key=""))
        await exporter.flush()
        body, _ = await render(exporter)
        return body

    names = {family.name for family in text_string_to_metric_families(run(exporter, scenario).decode())}
    assert {
        "myapp_feature_flag_evaluations",
        "myapp_feature_flag_evaluation_duration_seconds",
        "myapp_feature_flag_evaluation_errors",
        "myapp_feature_flag_unique_users",
        "myapp_feature_flag_error_rate",
        "myapp_flagmetrics_invalid_events",
        "myapp_flagmetrics_dropped_events",
        "myapp_flagmetrics_store_errors",
        "myapp_flagmetrics_cardinality_overflow",
        "myapp_flagmetrics_store_up",
    } <= names
    assert all(name.startswith("myapp_") for name in names)
    assert (
        registry.get_sample_value(
            "myapp_feature_flag_evaluations_total", {"flag_key": "a", "reason": "DEFAULT", "variant": "on"}
        )
        == 1.0
    )


def test_prefix_is_exposed_with_trailing_underscore(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, prefix="myapp")
    assert (exporter.prefix, exporter.unique_users_gauge.name, exporter.error_rate_gauge.name) == (
        "myapp_",
        "myapp_feature_flag_unique_users",
        "myapp_feature_flag_error_rate",
    )


def test_no_prefix_gives_litestar_flags_names(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)
    assert (exporter.prefix, exporter.unique_users_gauge.name) == ("", "feature_flag_unique_users")


@pytest.mark.parametrize("prefix", ["my-app", "my app", "app.name", "app:x"])
def test_invalid_prefix_raises(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="`prefix`"):
        PrometheusExporter(registry=CollectorRegistry(), prefix=prefix)


def test_duplicate_registration_raises_configuration_error(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    with pytest.raises(ConfigurationError, match="already registered"):
        PrometheusExporter(registry=registry, store=fake_redis_store(server, RedisStore))
    run(exporter, lambda: asyncio.sleep(0))


def test_two_prefixes_share_a_registry() -> None:
    registry = CollectorRegistry()
    first = PrometheusExporter(registry=registry, prefix="one")
    second = PrometheusExporter(registry=registry, prefix="two")
    first.record_sync(ev())
    second.record_sync(ev())
    second.record_sync(ev())
    labels = {"flag_key": "f", "reason": "DEFAULT", "variant": "on"}
    assert registry.get_sample_value("one_feature_flag_evaluations_total", labels) == 1.0
    assert registry.get_sample_value("two_feature_flag_evaluations_total", labels) == 2.0


def test_exposes_its_metric_objects_and_settings(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, max_flags=7)
    assert exporter.registry is registry
    assert exporter.evaluations_counter is exporter.metrics.evaluations
    assert exporter.duration_histogram is exporter.metrics.duration
    assert exporter.settings.max_flags == 7
    assert exporter.multiprocess_path is None


def test_keyword_settings_override_settings_object(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, settings=Settings(max_flags=3, buffer_capacity=9), max_flags=5)
    assert (exporter.settings.max_flags, exporter.settings.buffer_capacity) == (5, 9)


def test_invalid_keyword_setting_raises() -> None:
    with pytest.raises(ConfigurationError, match="`buffer_capacity`"):
        PrometheusExporter(registry=CollectorRegistry(), buffer_capacity=0)


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGMETRICS_MAX_VARIANTS_PER_FLAG", "4")
    assert PrometheusExporter(registry=CollectorRegistry()).settings.max_variants_per_flag == 4


def test_redis_url_in_environment_selects_a_redis_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGMETRICS_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("FLAGMETRICS_KEY_PREFIX", "envprefix")
    exporter = PrometheusExporter(registry=CollectorRegistry())
    store = exporter.store
    assert isinstance(store, RedisStore)
    assert store.key_prefix == "envprefix"
    asyncio.run(store.close())
