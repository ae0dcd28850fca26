"""flagmetrics.exporter: `PrometheusExporter` against a fakeredis-backed `RedisStore`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import fakeredis
import pytest
from litestar_flags.analytics.aggregator import AnalyticsAggregator, FlagMetrics
from litestar_flags.analytics.collectors.memory import InMemoryAnalyticsCollector
from litestar_flags.analytics.models import FlagEvaluationEvent
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
from flagmetrics.events import OVERFLOW
from flagmetrics.exposition import render
from flagmetrics.stores.base import Batch, FlagDelta, Snapshot

pytestmark = pytest.mark.usefixtures("clean_env")

T = TypeVar("T")


def redis_store(server: fakeredis.FakeServer, cls: type[RedisStore] = RedisStore) -> RedisStore:
    return cls(fakeredis.aioredis.FakeRedis(server=server))


def make_exporter(
    server: fakeredis.FakeServer, *, store: Any = None, **kwargs: Any
) -> tuple[PrometheusExporter, CollectorRegistry]:
    registry = CollectorRegistry()
    exporter = PrometheusExporter(
        registry=registry, store=store if store is not None else redis_store(server), **kwargs
    )
    return exporter, registry


def run(exporter: PrometheusExporter, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario` on a fresh event loop, closing the exporter (and its store) afterwards."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await exporter.close()

    return asyncio.run(main())


def ev(
    flag_key: Any = "f",
    reason: Any = "DEFAULT",
    variant: Any = "on",
    user: Any = None,
    ms: Any = 1.0,
    error_code: str | None = None,
) -> SimpleNamespace:
    return SimpleNamespace(
        flag_key=flag_key,
        reason=reason,
        variant=variant,
        targeting_key=user,
        evaluation_duration_ms=ms,
        error_code=error_code,
    )


def flag_event(**fields: Any) -> FlagEvaluationEvent:
    values: dict[str, Any] = {
        "timestamp": datetime.now(UTC),
        "flag_key": "f",
        "value": True,
        "reason": EvaluationReason.DEFAULT,
        "variant": "on",
        "targeting_key": None,
        "evaluation_duration_ms": 1.0,
    }
    values.update(fields)
    return FlagEvaluationEvent(**values)


def evaluations(registry: CollectorRegistry, flag_key: str, reason: str, variant: str) -> float | None:
    return registry.get_sample_value(
        "feature_flag_evaluations_total", {"flag_key": flag_key, "reason": reason, "variant": variant}
    )


def total_evaluations(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "feature_flag_evaluations"
        for sample in family.samples
        if sample.name == "feature_flag_evaluations_total"
    )


def invalid(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("flagmetrics_invalid_events_total", {"defect": reason})


def dropped(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("flagmetrics_dropped_events_total")


def summary(snapshot: Snapshot | None) -> dict[str, tuple[int, int, int, float | None]]:
    assert snapshot is not None
    return {
        key: (stats.total, stats.errors, stats.unique_users, stats.error_rate) for key, stats in snapshot.flags.items()
    }


class DownStore:
    """A store that cannot be reached: every push, snapshot and reset fails."""

    def __init__(self) -> None:
        self.closed = False
        self.pushes = 0

    async def push(self, batch: Batch) -> None:
        self.pushes += 1
        raise StoreError("store down")

    async def snapshot(self) -> Snapshot:
        raise StoreError("store down")

    async def reset(self, flag_key: str | None = None) -> None:
        raise StoreError("store down")

    async def close(self) -> None:
        self.closed = True


class SwitchableStore(RedisStore):
    """A Redis store whose pushes fail while `down` is set."""

    down = False

    async def push(self, batch: Batch) -> None:
        if self.down:
            raise StoreError("store down")
        await super().push(batch)


class LostReplyStore(RedisStore):
    """Applies the first push but then loses the reply, as a timeout after the write would."""

    lost = 0

    async def push(self, batch: Batch) -> None:
        await super().push(batch)
        if not self.lost:
            self.lost += 1
            raise StoreError("reply lost")


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


# -- flushing to the store -------------------------------------------------------------------------


def test_flush_delivers_totals_errors_and_unique_users(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        for user in ("u1", "u2", "u1", "u3"):
            await exporter.record(ev("a", user=user))
        await exporter.record(ev("a", "ERROR", None, user="u2"))
        await exporter.record(ev("b", "ERROR", None))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"a": (5, 1, 3, 0.2), "b": (1, 1, 0, 1.0)}


def test_repeated_flushes_add_up(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        await exporter.flush()
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (3, 0, 2, 0.0)}


def test_flush_with_nothing_buffered_writes_nothing(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {}


def test_snapshot_before_flush_is_empty(server: fakeredis.FakeServer) -> None:
    """Nothing reaches the store from `record()` itself: it never waits on the network."""
    exporter, _ = make_exporter(server, flush_interval_s=3600)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {}


def test_workers_sharing_a_store_count_unique_users_fleet_wide(server: fakeredis.FakeServer) -> None:
    first, _ = make_exporter(server)
    second, _ = make_exporter(server)

    async def scenario() -> Snapshot | None:
        try:
            for user in ("u1", "u2", "u3"):
                await first.record(ev(user=user))
            for user in ("u2", "u3", "u4"):
                await second.record(ev("f", "ERROR", None, user=user))
            await first.flush()
            await second.flush()
            return await first.fleet_snapshot()
        finally:
            await second.close()

    assert summary(run(first, scenario)) == {"f": (6, 3, 4, 0.5)}


def test_background_flusher_delivers_without_explicit_flush(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, flush_interval_s=0.02)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            snapshot = await exporter.fleet_snapshot()
            if snapshot is not None and snapshot.flags:
                return snapshot
            await asyncio.sleep(0.01)
        return None

    assert summary(run(exporter, scenario)) == {"f": (1, 0, 1, 0.0)}


def test_hash_key_does_not_change_unique_user_counts(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, hash_key="pepper")

    async def scenario() -> Snapshot | None:
        for user in ("u1", "u2", "u2"):
            await exporter.record(ev(user=user))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario))["f"][2] == 2


async def redis_contents(client: Any) -> bytes:
    """Every key of a Redis database and every value under it, whatever its type, as one byte string."""
    found: list[bytes] = []
    async for key in client.scan_iter():
        found.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            found.append(await client.get(key))
        elif kind == "hash":
            found += [item for pair in (await client.hgetall(key)).items() for item in pair]
        elif kind == "zset":
            found += [member for member, _ in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            found += list(await client.smembers(key))
        else:
            raise AssertionError(f"{key!r} holds a {kind} this check does not read")
    return b"\n".join(found)


def test_store_never_holds_raw_user_ids(server: fakeredis.FakeServer) -> None:
    """No key or value anywhere in Redis holds a targeting key; the same scan finds one stored raw."""
    exporter, _ = make_exporter(server)
    store = exporter.store
    assert isinstance(store, RedisStore)

    async def scenario() -> tuple[bytes, bytes]:
        await exporter.record(ev(user="alice@example.com"))
        await exporter.flush()
        flushed = await redis_contents(store.client)
        # The check itself can fail: a member that is the raw id is found.
        await store.push(Batch("control", 1, {"f": FlagDelta(1, 0, frozenset({b"alice@example.com"}))}))
        return flushed, await redis_contents(store.client)

    flushed, control = run(exporter, scenario)
    assert b"f" in flushed
    assert b"alice" not in flushed
    assert b"alice@example.com" in control


# -- exactly once ----------------------------------------------------------------------------------


def test_batch_delivered_twice_is_applied_once(server: fakeredis.FakeServer) -> None:
    store = redis_store(server)
    batch = Batch(writer="host:1:abcd", seq=1, flags={"f": FlagDelta(3, 1, frozenset({b"12345678"}))})

    async def scenario() -> Snapshot:
        try:
            await store.push(batch)
            await store.push(batch)
            return await store.snapshot()
        finally:
            await store.close()

    assert summary(asyncio.run(scenario())) == {"f": (3, 1, 1, pytest.approx(1 / 3))}


def test_older_sequence_number_is_ignored(server: fakeredis.FakeServer) -> None:
    store = redis_store(server)

    async def scenario() -> Snapshot:
        try:
            await store.push(Batch(writer="w", seq=2, flags={"f": FlagDelta(1, 0)}))
            await store.push(Batch(writer="w", seq=1, flags={"f": FlagDelta(5, 0)}))
            return await store.snapshot()
        finally:
            await store.close()

    assert summary(asyncio.run(scenario()))["f"][0] == 1


def test_same_sequence_number_from_another_writer_is_applied(server: fakeredis.FakeServer) -> None:
    store = redis_store(server)

    async def scenario() -> Snapshot:
        try:
            await store.push(Batch(writer="w1", seq=1, flags={"f": FlagDelta(1, 0)}))
            await store.push(Batch(writer="w2", seq=1, flags={"f": FlagDelta(1, 0)}))
            return await store.snapshot()
        finally:
            await store.close()

    assert summary(asyncio.run(scenario()))["f"][0] == 2


def test_retried_flush_after_lost_reply_is_applied_once(server: fakeredis.FakeServer) -> None:
    store = redis_store(server, LostReplyStore)
    exporter, _ = make_exporter(server, store=store)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        with pytest.raises(StoreError):
            await exporter.flush()
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (2, 0, 2, 0.0)}


def test_failed_flush_keeps_the_batch_for_retry(server: fakeredis.FakeServer) -> None:
    store = redis_store(server, SwitchableStore)
    exporter, registry = make_exporter(server, store=store)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        store.down = True
        with pytest.raises(StoreError):
            await exporter.flush()
        await exporter.record(ev(user="u2"))
        store.down = False
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (2, 0, 2, 0.0)}
    assert registry.get_sample_value("flagmetrics_store_errors_total", {"operation": "flush"}) == 1.0
    assert dropped(registry) == 0.0


# -- buffer capacity -------------------------------------------------------------------------------


def test_users_beyond_capacity_are_dropped_and_counted(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, buffer_capacity=3)

    async def scenario() -> Snapshot | None:
        for user in ("u1", "u2", "u3", "u4", "u5", "u1", "u2"):
            await exporter.record(ev(user=user))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario)) == {"f": (7, 0, 3, 0.0)}
    assert dropped(registry) == 2.0


def test_capacity_is_shared_by_all_flags(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, buffer_capacity=2)

    async def scenario() -> None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("b", user="u1"))
        await exporter.record(ev("c", user="u1"))

    run(exporter, scenario)
    assert dropped(registry) == 1.0


def test_anonymous_evaluations_never_use_capacity(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, buffer_capacity=1)

    async def scenario() -> None:
        for _ in range(5):
            await exporter.record(ev(user=None))
            await exporter.record(ev(user=""))

    run(exporter, scenario)
    assert dropped(registry) == 0.0


def test_delivered_flush_frees_capacity(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server, buffer_capacity=2)

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        await exporter.flush()
        await exporter.record(ev(user="u3"))
        await exporter.record(ev(user="u4"))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    assert summary(run(exporter, scenario))["f"][2] == 4
    assert dropped(registry) == 0.0


def test_capacity_stays_taken_while_flush_fails(server: fakeredis.FakeServer) -> None:
    store = redis_store(server, SwitchableStore)
    exporter, registry = make_exporter(server, store=store, buffer_capacity=2)

    async def scenario() -> None:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        store.down = True
        with pytest.raises(StoreError):
            await exporter.flush()
        await exporter.record(ev(user="u3"))
        store.down = False

    run(exporter, scenario)
    assert dropped(registry) == 1.0


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
        return sorted(key for key in keys if b":seq:" not in key)

    assert run(exporter, scenario) == []


def test_reset_does_not_touch_counters(server: fakeredis.FakeServer) -> None:
    exporter, registry = make_exporter(server)

    async def scenario() -> None:
        await exporter.record(ev())
        await exporter.reset_all_stats()

    run(exporter, scenario)
    assert evaluations(registry, "f", "DEFAULT", "on") == 1.0


def test_reset_flag_stats_discards_the_batch_in_flight(server: fakeredis.FakeServer) -> None:
    store = redis_store(server, SwitchableStore)
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
        PrometheusExporter(registry=registry, store=redis_store(server))
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


# -- close -----------------------------------------------------------------------------------------


def test_close_delivers_what_is_buffered(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, flush_interval_s=3600)
    reader = redis_store(server)

    async def scenario() -> Snapshot:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        await exporter.close()
        try:
            return await reader.snapshot()
        finally:
            await reader.close()

    assert summary(run(exporter, scenario)) == {"f": (2, 0, 2, 0.0)}


def test_close_with_store_unreachable_counts_lost_events_as_dropped() -> None:
    store = DownStore()
    exporter = PrometheusExporter(registry=(registry := CollectorRegistry()), store=store)

    async def scenario() -> None:
        await exporter.record(ev("a", user="u1"))
        await exporter.record(ev("a", user="u2"))
        await exporter.record(ev("b", "ERROR", None))
        await exporter.close(timeout_s=1.0)

    asyncio.run(scenario())
    assert dropped(registry) == 3.0
    assert store.closed
    assert registry.get_sample_value("flagmetrics_store_errors_total", {"operation": "flush"}) >= 1.0


def test_close_counts_a_batch_left_in_flight_as_dropped() -> None:
    store = DownStore()
    exporter = PrometheusExporter(registry=(registry := CollectorRegistry()), store=store)

    async def scenario() -> None:
        await exporter.record(ev(user="u1"))
        with pytest.raises(StoreError):
            await exporter.flush()
        await exporter.record(ev(user="u2"))
        await exporter.close(timeout_s=1.0)

    asyncio.run(scenario())
    assert dropped(registry) == 2.0


def test_close_with_nothing_buffered_drops_nothing() -> None:
    store = DownStore()
    exporter = PrometheusExporter(registry=(registry := CollectorRegistry()), store=store)
    asyncio.run(exporter.close(timeout_s=1.0))
    assert (dropped(registry), store.pushes, store.closed) == (0.0, 0, True)


def test_flush_with_store_unreachable_raises_store_error() -> None:
    exporter = PrometheusExporter(registry=(registry := CollectorRegistry()), store=DownStore())

    async def scenario() -> None:
        await exporter.record(ev(user="u1"))
        with pytest.raises(StoreError):
            await exporter.flush()

    run(exporter, scenario)
    assert registry.get_sample_value("flagmetrics_store_errors_total", {"operation": "flush"}) >= 1.0


def test_record_with_store_unreachable_still_counts() -> None:
    exporter = PrometheusExporter(registry=(registry := CollectorRegistry()), store=DownStore())

    async def scenario() -> None:
        for _ in range(3):
            await exporter.record(ev(user="u1"))

    run(exporter, scenario)
    assert evaluations(registry, "f", "DEFAULT", "on") == 3.0


def test_fleet_snapshot_with_store_unreachable_is_none_and_counted() -> None:
    exporter = PrometheusExporter(registry=(registry := CollectorRegistry()), store=DownStore())
    assert run(exporter, exporter.fleet_snapshot) is None
    assert registry.get_sample_value("flagmetrics_store_errors_total", {"operation": "snapshot"}) == 1.0


def test_default_store_without_redis_url_is_not_redis() -> None:
    exporter = PrometheusExporter(registry=CollectorRegistry())
    assert not isinstance(exporter.store, RedisStore)
    asyncio.run(exporter.close())


def test_default_store_without_redis_url_gives_exact_totals() -> None:
    exporter = PrometheusExporter(registry=CollectorRegistry())

    async def scenario() -> Snapshot | None:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev("f", "ERROR", None, user="u2"))
        await exporter.flush()
        return await exporter.fleet_snapshot()

    snapshot = run(exporter, scenario)
    assert snapshot is not None
    assert (snapshot.flags["f"].total, snapshot.flags["f"].errors) == (2, 1)
