"""flagmetrics.exposition: one scrape rendered in a single process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import fakeredis
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from flagmetrics import PrometheusExporter, StoreError
from flagmetrics.exposition import render, render_snapshot
from flagmetrics.stores.base import FlagStats, Snapshot
from tests.helpers import DownStore, ev, make_exporter, samples

pytestmark = pytest.mark.usefixtures("clean_env")

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class SilentStore(DownStore):
    """A store whose snapshot never answers."""

    async def snapshot(self) -> Snapshot:
        await asyncio.Event().wait()  # nobody sets it: only the scrape timeout ends this
        raise AssertionError("unreachable")


def scrape(exporter: PrometheusExporter, accept: str | None = None, *events: Any) -> tuple[str, str]:
    """Record `events`, flush them, render one scrape; return (body, content type)."""

    async def main() -> tuple[bytes, str]:
        try:
            for event in events:
                await exporter.record(event)
            # A broken store keeps the batch; the scrape is what is under test.
            with contextlib.suppress(StoreError):
                await exporter.flush()
            return await render(exporter, accept)
        finally:
            await exporter.close(timeout_s=0.1)

    body, content_type = asyncio.run(main())
    return body.decode(), content_type


def family_names(body: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(body)}


# -- formats ---------------------------------------------------------------------------------------


def test_text_format_by_default() -> None:
    body, content_type = scrape(make_exporter()[0], None, ev())
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert 'feature_flag_evaluations_total{flag_key="f",reason="DEFAULT",variant="on"} 1.0' in body


def test_text_format_for_generic_accept() -> None:
    _, content_type = scrape(make_exporter()[0], "*/*", ev())
    assert content_type.startswith("text/plain; version=0.0.4")


def test_openmetrics_when_asked_for() -> None:
    body, content_type = scrape(make_exporter()[0], OPENMETRICS, ev())
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")


def test_openmetrics_body_parses_with_the_evaluation() -> None:
    body, _ = scrape(make_exporter()[0], OPENMETRICS, ev(user="u1"))
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse_openmetrics(body)
        for sample in family.samples
    }
    assert (
        found[("feature_flag_evaluations_total", (("flag_key", "f"), ("reason", "DEFAULT"), ("variant", "on")))] == 1.0
    )
    assert found[("feature_flag_unique_users", (("flag_key", "f"),))] == 1.0
    assert found[("flagmetrics_store_up", ())] == 1.0


def test_content_type_has_exactly_one_charset() -> None:
    for accept in (None, OPENMETRICS):
        _, content_type = scrape(make_exporter()[0], accept)
        assert content_type.count("charset") == 1


# -- fleet gauges ----------------------------------------------------------------------------------


def test_fleet_gauges_have_exact_values() -> None:
    events = [
        ev("a", user="u1"),
        ev("a", user="u2"),
        ev("a", user="u1"),
        ev("a", "ERROR", None, user="u3"),
        ev("b", "ERROR", None),
    ]
    found = samples(scrape(make_exporter()[0], None, *events)[0])
    assert found[("flagmetrics_store_up", ())] == 1.0
    assert found[("feature_flag_unique_users", (("flag_key", "a"),))] == 3.0
    assert found[("feature_flag_unique_users", (("flag_key", "b"),))] == 0.0
    assert found[("feature_flag_error_rate", (("flag_key", "a"),))] == 0.25
    assert found[("feature_flag_error_rate", (("flag_key", "b"),))] == 1.0


def test_pinned_figures_are_rendered() -> None:
    exporter = make_exporter()[0]
    exporter.update_from_metrics("pinned", {"unique_users": 12, "error_rate": 5.0})
    found = samples(scrape(exporter, None)[0])
    assert found[("feature_flag_unique_users", (("flag_key", "pinned"),))] == 12.0
    assert found[("feature_flag_error_rate", (("flag_key", "pinned"),))] == 0.05


def test_fleet_gauges_from_other_workers_are_rendered() -> None:
    server = fakeredis.FakeServer()
    worker = make_exporter(server)[0]
    scraper = make_exporter(server)[0]

    async def main() -> None:
        try:
            await worker.record(ev("elsewhere", user="u1"))
            await worker.flush()
        finally:
            await worker.close()

    asyncio.run(main())
    found = samples(scrape(scraper, None)[0])
    assert found[("feature_flag_unique_users", (("flag_key", "elsewhere"),))] == 1.0


def test_store_up_is_zero_and_fleet_gauges_absent_when_snapshot_raises() -> None:
    body, _ = scrape(make_exporter(store=DownStore())[0], None, ev(user="u1"))
    found = samples(body)
    assert found[("flagmetrics_store_up", ())] == 0.0
    assert not family_names(body) & {"feature_flag_unique_users", "feature_flag_error_rate"}


def test_counters_are_rendered_when_snapshot_raises() -> None:
    found = samples(scrape(make_exporter(store=DownStore())[0], None, ev())[0])
    key = ("feature_flag_evaluations_total", (("flag_key", "f"), ("reason", "DEFAULT"), ("variant", "on")))
    assert found[key] == 1.0


def test_store_up_is_zero_when_snapshot_times_out() -> None:
    body, _ = scrape(make_exporter(store=SilentStore(), scrape_timeout_s=0.05)[0], None, ev(user="u1"))
    assert samples(body)[("flagmetrics_store_up", ())] == 0.0
    assert not family_names(body) & {"feature_flag_unique_users", "feature_flag_error_rate"}


def test_snapshot_timeout_is_counted_as_store_error() -> None:
    body, _ = scrape(make_exporter(store=SilentStore(), scrape_timeout_s=0.05)[0], None)
    assert samples(body)[("flagmetrics_store_errors_total", (("operation", "snapshot"),))] == 1.0


def test_openmetrics_with_store_down_still_ends_with_eof() -> None:
    body, _ = scrape(make_exporter(store=DownStore())[0], OPENMETRICS, ev())
    assert "flagmetrics_store_up 0.0" in body
    assert body.endswith("# EOF\n")


def test_render_snapshot_renders_the_snapshot_it_is_given() -> None:
    exporter = make_exporter()[0]
    snapshot = Snapshot(flags={"x": FlagStats(total=10, errors=1, unique_users=4)})
    body, _ = render_snapshot(exporter, snapshot)
    found = samples(body.decode())
    assert found[("feature_flag_unique_users", (("flag_key", "x"),))] == 4.0
    assert found[("feature_flag_error_rate", (("flag_key", "x"),))] == 0.1
    asyncio.run(exporter.close())


def test_flag_without_evaluations_has_no_error_rate() -> None:
    exporter = make_exporter()[0]
    snapshot = Snapshot(flags={"x": FlagStats(total=0, errors=0, unique_users=0)})
    found = samples(render_snapshot(exporter, snapshot)[0].decode())
    assert ("feature_flag_error_rate", (("flag_key", "x"),)) not in found
    assert found[("feature_flag_unique_users", (("flag_key", "x"),))] == 0.0
    asyncio.run(exporter.close())


def test_prefix_applies_to_fleet_gauges() -> None:
    body, _ = scrape(make_exporter(prefix="shop")[0], None, ev(user="u1"))
    names = family_names(body)
    expected = {"shop_feature_flag_unique_users", "shop_feature_flag_error_rate", "shop_flagmetrics_store_up"}
    assert expected <= names
    assert all(name.startswith("shop_") for name in names)
