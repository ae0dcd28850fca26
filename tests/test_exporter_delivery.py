"""`PrometheusExporter`: delivering the buffer to the fleet store, exactly once, within its capacity, at close."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import fakeredis
import pytest
from prometheus_client import CollectorRegistry

from flagmetrics import (
    PrometheusExporter,
    RedisStore,
    Settings,
    StoreError,
)
from flagmetrics.stores.base import Batch, FlagDelta, Snapshot
from tests.helpers import (
    DownStore,
    LostReplyStore,
    SwitchableStore,
    dropped,
    ev,
    evaluations,
    fake_redis_store,
    make_exporter,
    redis_contents,
    run,
    sample_value,
    summary,
)

pytestmark = pytest.mark.usefixtures("clean_env")


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


def test_store_never_holds_raw_user_ids(server: fakeredis.FakeServer) -> None:
    """No key or value anywhere in Redis holds a targeting key; the same scan finds one stored raw."""
    exporter, _ = make_exporter(server)
    store = exporter.store
    assert isinstance(store, RedisStore)

    async def scenario() -> tuple[bytes, bytes]:
        await exporter.record(ev(user="alice@example.com"))
        await exporter.flush()
        flushed = await redis_contents(store.client)
        # The check itself can fail: the raw id, stored (here as a flag key), is found.
        await store.push(Batch("control", 1, {"alice@example.com": FlagDelta(1, 0)}))
        return flushed, await redis_contents(store.client)

    flushed, control = run(exporter, scenario)
    assert b"f" in flushed
    assert b"alice" not in flushed
    assert b"alice@example.com" in control


# -- exactly once ----------------------------------------------------------------------------------


def test_retried_flush_after_lost_reply_is_applied_once(server: fakeredis.FakeServer) -> None:
    store = fake_redis_store(server, LostReplyStore)
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
    store = fake_redis_store(server, SwitchableStore)
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


def test_without_a_spool_capacity_stays_taken_while_flush_fails(server: fakeredis.FakeServer) -> None:
    store = fake_redis_store(server, SwitchableStore)
    exporter, registry = make_exporter(server, store=store, settings=Settings(spool_dir="off"), buffer_capacity=2)

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


def spooled(directory: Path) -> list[Path]:
    """The batch files waiting in a spool directory."""
    return sorted(directory.glob("*.batch"))


def test_a_spooled_batch_frees_its_capacity(server: fakeredis.FakeServer, private_spool: Path) -> None:
    """A failed flush spools the batch and frees the buffer: nothing dropped, all delivered once the store is back."""
    store = fake_redis_store(server, SwitchableStore)
    exporter, registry = make_exporter(server, store=store, buffer_capacity=2)

    async def scenario() -> Snapshot:
        await exporter.record(ev(user="u1"))
        await exporter.record(ev(user="u2"))
        store.down = True
        with pytest.raises(StoreError):
            await exporter.flush()
        assert len(spooled(private_spool)) == 1
        await exporter.record(ev(user="u3"))
        store.down = False
        await exporter.flush()
        return await store.snapshot()

    snapshot = run(exporter, scenario)
    assert dropped(registry) == 0.0
    assert summary(snapshot) == {"f": (3, 0, 3, 0.0)}
    assert sample_value(registry, "flagmetrics_spool_deliveries_total") == 1.0
    assert spooled(private_spool) == []


# -- close -----------------------------------------------------------------------------------------


def test_close_delivers_what_is_buffered(server: fakeredis.FakeServer) -> None:
    exporter, _ = make_exporter(server, flush_interval_s=3600)
    reader = fake_redis_store(server, RedisStore)

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
    assert (registry.get_sample_value("flagmetrics_store_errors_total", {"operation": "flush"}) or 0) >= 1.0


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
    assert (registry.get_sample_value("flagmetrics_store_errors_total", {"operation": "flush"}) or 0) >= 1.0


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
