"""`PrometheusExporter.record`: what each evaluation counts, its errors, defects and cardinality caps."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from litestar_flags.types import EvaluationReason

from flagmetrics.events import OVERFLOW
from flagmetrics.stores.base import Snapshot
from tests.helpers import (
    ev,
    evaluations,
    flag_event,
    invalid,
    make_exporter,
    run,
    summary,
    total_evaluations,
)

pytestmark = pytest.mark.usefixtures("clean_env")


# -- counter and histogram -------------------------------------------------------------------------


def test_record_counts_the_evaluation(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev("f", "TARGETING_MATCH", "beta"))
        await exporter.record(ev("f", "TARGETING_MATCH", "beta"))

    run(exporter, scenario)
    assert evaluations(registry, "f", "TARGETING_MATCH", "beta") == 2.0


def test_record_of_litestar_flags_event(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(flag_event(reason=EvaluationReason.SPLIT, variant="blue")))
    assert evaluations(registry, "f", "SPLIT", "blue") == 1.0


def test_missing_variant_is_an_empty_label(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(flag_event(variant=None)))
    assert evaluations(registry, "f", "DEFAULT", "") == 1.0


def test_reason_enum_and_string_map_to_one_series(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(flag_event(reason=EvaluationReason.DEFAULT))
        await exporter.record(ev("f", "DEFAULT", "on"))
        await exporter.record(ev("f", "default", "on"))

    run(exporter, scenario)
    assert evaluations(registry, "f", "DEFAULT", "on") == 3.0
    assert total_evaluations(registry) == 3.0


def test_duration_is_observed_in_seconds(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(ev(ms=1.5)))
    name = "feature_flag_evaluation_duration_seconds"
    assert registry.get_sample_value(f"{name}_count", {"flag_key": "f"}) == 1.0
    assert registry.get_sample_value(f"{name}_sum", {"flag_key": "f"}) == pytest.approx(0.0015)
    assert registry.get_sample_value(f"{name}_bucket", {"flag_key": "f", "le": "0.001"}) == 0.0
    assert registry.get_sample_value(f"{name}_bucket", {"flag_key": "f", "le": "0.005"}) == 1.0


def test_integer_duration_is_observed(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(ev(ms=250)))
    name = "feature_flag_evaluation_duration_seconds_sum"
    assert registry.get_sample_value(name, {"flag_key": "f"}) == pytest.approx(0.25)


def test_latency_ms_is_observed_when_evaluation_duration_is_missing(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    event = SimpleNamespace(flag_key="f", reason="DEFAULT", variant=None, targeting_key=None, latency_ms=20.0)
    run(exporter, lambda: exporter.record(event))
    name = "feature_flag_evaluation_duration_seconds_sum"
    assert registry.get_sample_value(name, {"flag_key": "f"}) == pytest.approx(0.02)


def test_custom_duration_buckets(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, duration_buckets=(0.5, 2.0))
    run(exporter, lambda: exporter.record(ev(ms=1000.0)))
    name = "feature_flag_evaluation_duration_seconds_bucket"
    assert registry.get_sample_value(name, {"flag_key": "f", "le": "0.5"}) == 0.0
    assert registry.get_sample_value(name, {"flag_key": "f", "le": "2.0"}) == 1.0


def test_record_batch_records_every_event(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record_batch([ev("a"), ev("b"), ev("a")]))
    assert (evaluations(registry, "a", "DEFAULT", "on"), evaluations(registry, "b", "DEFAULT", "on")) == (
        2.0,
        1.0,
    )


# -- errors ----------------------------------------------------------------------------------------


def test_error_is_counted_by_error_code(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev("f", "ERROR", None, error_code="FLAG_NOT_FOUND"))
        await exporter.record(ev("f", "ERROR", None, error_code="FLAG_NOT_FOUND"))
        await exporter.record(ev("f", "ERROR", None, error_code="TYPE_MISMATCH"))

    run(exporter, scenario)
    name = "feature_flag_evaluation_errors_total"
    assert registry.get_sample_value(name, {"flag_key": "f", "error_code": "FLAG_NOT_FOUND"}) == 2.0
    assert registry.get_sample_value(name, {"flag_key": "f", "error_code": "TYPE_MISMATCH"}) == 1.0


def test_litestar_flags_error_is_counted_as_general(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(flag_event(reason=EvaluationReason.ERROR, variant=None)))
    name = "feature_flag_evaluation_errors_total"
    assert registry.get_sample_value(name, {"flag_key": "f", "error_code": "GENERAL"}) == 1.0
    assert evaluations(registry, "f", "ERROR", "") == 1.0


def test_non_error_evaluations_are_not_counted_as_errors(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(ev("f", "DEFAULT", error_code="FLAG_NOT_FOUND")))
    name = "feature_flag_evaluation_errors_total"
    assert registry.get_sample_value(name, {"flag_key": "f", "error_code": "FLAG_NOT_FOUND"}) is None


# -- invalid events --------------------------------------------------------------------------------


class RaisingEvent:
    """An event whose every attribute raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"boom: {name}")


class RaisingTargetingKey:
    flag_key = "f"
    reason = "DEFAULT"
    variant = "on"
    evaluation_duration_ms = 1.0

    @property
    def targeting_key(self) -> str:
        raise RuntimeError("no key for you")


class UnhashableStr(str):
    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "event",
    [
        ev(flag_key=""),
        ev(flag_key="k" * 201),
        ev(flag_key=None),
        ev(flag_key=42),
        ev(flag_key="bad\ud800key"),
        ev(flag_key=OVERFLOW),
        ev(flag_key=["unhashable"]),
        object(),
        None,
    ],
    ids=[
        "empty",
        "too-long",
        "none",
        "int",
        "lone-surrogate",
        "overflow-marker",
        "list",
        "object",
        "none-event",
    ],
)
def test_event_with_invalid_flag_key_is_counted_and_not_recorded(server: fakeredis.FakeServer, event: Any) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(event))
    assert invalid(registry, "flag_key") == 1.0
    assert total_evaluations(registry) == 0.0


@pytest.mark.parametrize("variant", [["unhashable"], {"a": 1}, 3, "v" * 201], ids=["list", "dict", "int", "long"])
def test_event_with_invalid_variant_is_counted_and_not_recorded(server: fakeredis.FakeServer, variant: Any) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(ev(variant=variant)))
    assert invalid(registry, "variant") == 1.0
    assert total_evaluations(registry) == 0.0


def test_event_with_unknown_reason_is_counted_under_unknown(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev(reason="BOGUS"))
        await exporter.record(ev(reason="BOGUS"))

    run(exporter, scenario)
    assert evaluations(registry, "f", "UNKNOWN", "on") == 2.0
    assert invalid(registry, "reason") == 2.0


@pytest.mark.parametrize("ms", [float("nan"), -1.0, float("inf"), 4_000_000.0, True, "1"])
def test_event_with_invalid_duration_is_counted_but_not_observed(server: fakeredis.FakeServer, ms: Any) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(ev(ms=ms)))
    assert invalid(registry, "duration") == 1.0
    assert evaluations(registry, "f", "DEFAULT", "on") == 1.0
    count = registry.get_sample_value("feature_flag_evaluation_duration_seconds_count", {"flag_key": "f"})
    assert count == 0.0


def test_invalid_duration_on_cached_series_is_counted_every_time(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev(ms=1.0))
        await exporter.record(ev(ms=float("nan")))
        await exporter.record(ev(ms=float("nan")))

    run(exporter, scenario)
    assert invalid(registry, "duration") == 2.0


@pytest.mark.parametrize("user", [42, b"user", "u" * 1025], ids=["int", "bytes", "too-long"])
def test_event_with_invalid_targeting_key_is_counted_without_the_user(server: fakeredis.FakeServer, user: Any) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user=user))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (1, 0, 0, 0.0)}
    assert invalid(registry, "targeting_key") == 1.0
    assert evaluations(registry, "f", "DEFAULT", "on") == 1.0


def test_event_raising_on_attribute_access_is_counted_and_never_raises(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(RaisingEvent()))
    assert invalid(registry, "event") == 1.0
    assert total_evaluations(registry) == 0.0


def test_event_raising_on_targeting_key_is_counted_without_its_user(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)
    run(exporter, lambda: exporter.record(RaisingTargetingKey()))
    assert invalid(registry, "targeting_key") == 1.0
    assert invalid(registry, "event") == 0.0
    assert evaluations(registry, "f", "DEFAULT", "on") == 1.0


def test_unhashable_valid_variant_is_recorded_every_time(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev(variant=UnhashableStr("blue")))
        await exporter.record(ev(variant=UnhashableStr("blue")))

    run(exporter, scenario)
    assert evaluations(registry, "f", "DEFAULT", "blue") == 2.0
    assert invalid(registry, "event") == 0.0


def test_invalid_events_do_not_disturb_valid_ones(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> Snapshot | None:
        for event in (ev(user="u1"), RaisingEvent(), ev(flag_key=""), ev(variant=[1]), ev(user="u2"), None):
            await exporter.record(event)
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (2, 0, 2, 0.0)}
    assert total_evaluations(registry) == 2.0


def test_invalid_events_are_not_tracked(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> list[str]:
        await exporter.record(ev(flag_key=""))
        await exporter.record(ev(variant=[1]))
        return exporter.get_tracked_flag_keys()

    assert run(exporter, scenario) == []


# -- cardinality caps ------------------------------------------------------------------------------


def test_flags_beyond_max_flags_are_counted_as_overflow(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, max_flags=2)

    async def scenario() -> None:
        for key in ("a", "b", "c", "d", "c", "a"):
            await exporter.record(ev(key))

    run(exporter, scenario)
    assert evaluations(registry, "a", "DEFAULT", "on") == 2.0
    assert evaluations(registry, "b", "DEFAULT", "on") == 1.0
    assert evaluations(registry, OVERFLOW, "DEFAULT", "on") == 3.0
    assert evaluations(registry, "c", "DEFAULT", "on") is None
    assert registry.get_sample_value("flagmetrics_cardinality_overflow_total", {"kind": "flag_key"}) == 3.0


def test_variants_beyond_max_variants_are_counted_as_overflow(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, max_variants_per_flag=2)

    async def scenario() -> None:
        for variant in ("x", "y", "z", "w", "z", "x"):
            await exporter.record(ev("f", variant=variant))

    run(exporter, scenario)
    assert evaluations(registry, "f", "DEFAULT", "x") == 2.0
    assert evaluations(registry, "f", "DEFAULT", "y") == 1.0
    assert evaluations(registry, "f", "DEFAULT", OVERFLOW) == 3.0
    assert registry.get_sample_value("flagmetrics_cardinality_overflow_total", {"kind": "variant"}) == 3.0


def test_variant_cap_is_per_flag(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, max_variants_per_flag=1)

    async def scenario() -> None:
        await exporter.record(ev("a", variant="x"))
        await exporter.record(ev("b", variant="y"))

    run(exporter, scenario)
    assert evaluations(registry, "b", "DEFAULT", "y") == 1.0
    assert registry.get_sample_value("flagmetrics_cardinality_overflow_total", {"kind": "variant"}) == 0.0


def test_overflow_flag_is_delivered_to_the_store(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, max_flags=1)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", user="u2"))
        await exporter.record(ev("c", user="u3"))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"a": (1, 0, 1, 0.0), OVERFLOW: (2, 0, 2, 0.0)}
