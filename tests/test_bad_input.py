"""Bad input never reaches the request path: every defect is counted, logged at most once per interval,
and every scrape stays valid for `promtool check metrics`; cardinality caps hold under gunicorn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar_flags.types import EvaluationReason
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from examples.traffic import parse_scrape
from flagmetrics import LocalStore, PrometheusExporter
from flagmetrics.events import MAX_KEY_LENGTH, OVERFLOW, valid_label
from flagmetrics.exposition import encode
from tests.helpers import Gunicorn, assert_promtool_accepts, require_binary

RAISE = object()
"""Stands for an attribute whose read raises."""

REJECTING_DEFECTS = ("flag_key", "variant", "event")
"""Defects that reject the whole event; the others keep the evaluation without the bad field."""


def make_event(attributes: dict[str, Any]) -> Any:
    """An object with exactly these attributes; RAISE makes reading one raise."""

    def raiser(self: Any) -> Any:
        raise RuntimeError("broken attribute")

    namespace = {name: property(raiser) if value is RAISE else value for name, value in attributes.items()}
    return type("Event", (), namespace)()


strings = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=10),
    st.sampled_from(["", "\ud800", "a\nb", "tab\there", 'quo"te', "back\\slash", OVERFLOW, "x" * (MAX_KEY_LENGTH + 1)]),
)
anything = st.one_of(
    st.none(),
    strings,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.just(RAISE),
)
events = st.builds(
    make_event,
    st.fixed_dictionaries(
        {},
        optional={
            "flag_key": st.one_of(st.sampled_from(["checkout", "search", "ünïcødé flag"]), anything),
            "reason": st.one_of(st.sampled_from(list(EvaluationReason)), st.sampled_from(["SPLIT", "error"]), anything),
            "variant": st.one_of(st.sampled_from([None, "on", "off"]), anything),
            "targeting_key": st.one_of(st.sampled_from(["u1", "u2"]), anything, st.just("u" * 5000)),
            "evaluation_duration_ms": st.one_of(st.floats(0, 10), anything),
            "latency_ms": anything,
            "error_code": st.one_of(st.sampled_from(["FLAG_NOT_FOUND", "TYPE_MISMATCH"]), anything),
        },
    ),
)


def sample_sum(registry: CollectorRegistry, name: str) -> float:
    return sum(sample.value for family in registry.collect() for sample in family.samples if sample.name == name)


def scrape_value(text: str, series: str) -> float:
    """The value of one series, written as in the exposition (name and labels), in a scrape."""
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


def invalid(registry: CollectorRegistry, defect: str) -> float:
    return registry.get_sample_value("flagmetrics_invalid_events_total", {"defect": defect}) or 0.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=25))
def test_arbitrary_events_are_counted_or_rejected_and_scrapes_stay_valid(batch: list[Any]) -> None:
    """Whatever the events, record never raises, each is counted once or rejected, and the scrape is valid."""
    registry = CollectorRegistry()
    exporter = PrometheusExporter(registry=registry, store=LocalStore(None))
    for event in batch:
        exporter.record_sync(event)

    rejected = sum(invalid(registry, defect) for defect in REJECTING_DEFECTS)
    assert sample_sum(registry, "feature_flag_evaluations_total") + rejected == len(batch)
    assert (
        sample_sum(registry, "feature_flag_evaluation_duration_seconds_count") + invalid(registry, "duration")
        == len(batch) - rejected
    )
    for family in registry.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label in ("flag_key", "variant") and value not in ("", OVERFLOW):
                    assert valid_label(value), (sample.name, value)
            assert not math.isnan(sample.value)

    body, _ = encode(None, registry=registry)
    families = list(text_string_to_metric_families(body.decode()))
    assert any(family.name == "feature_flag_evaluations" for family in families)
    assert_promtool_accepts(body)


def test_each_kind_of_defect_is_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A thousand bad events of each kind give at most one warning per kind, never a user id."""
    registry = CollectorRegistry()
    exporter = PrometheusExporter(registry=registry, store=LocalStore(None))
    good: dict[str, object] = {"flag_key": "f", "reason": "SPLIT", "variant": "on", "evaluation_duration_ms": 0.1}
    bad: dict[str, dict[str, object]] = {
        "flag_key": {"flag_key": ""},
        "variant": {"variant": 3},
        "reason": {"reason": "NONSENSE"},
        "duration": {"evaluation_duration_ms": -1.0},
        "targeting_key": {"targeting_key": "secret-user-" + "x" * 2000},
        "event": {"flag_key": RAISE},
    }
    with caplog.at_level(logging.WARNING, logger="flagmetrics"):
        for attributes in bad.values():
            for _ in range(1000):
                exporter.record_sync(make_event({**good, **attributes}))
    for defect in bad:
        assert invalid(registry, defect) == 1000, defect
    warnings = [record for record in caplog.records if record.name == "flagmetrics"]
    assert 1 <= len(warnings) <= len(bad)
    assert not any("secret-user" in record.getMessage() for record in warnings)


@pytest.mark.e2e
def test_garbage_flag_keys_under_gunicorn_keep_every_scrape_valid(gunicorn: Callable[..., Gunicorn]) -> None:
    """Odd flag keys sent to the real app: valid ones are escaped, invalid ones counted, promtool is happy."""
    require_binary("promtool", "prometheus")  # skip before starting anything
    app = gunicorn(workers=1)
    keys = ['quo"te', "back\\slash", "ünïcødé flag", "emoji-🚩", "x" * (MAX_KEY_LENGTH + 1), "tab\there", "nl\nhere"]
    received = []
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for key in keys:
            response = client.get(f"/evaluate/{quote(key, safe='')}", params={"user": "u1"})
            assert response.status_code == 200, (key, response.text)
            received.append(response.json()["flag_key"])
    body = app.scrape().content
    assert_promtool_accepts(body)
    scrape = parse_scrape(body.decode())
    counted = {flag for flag, _, _ in scrape.evaluations}
    assert counted == {key for key in received if valid_label(key)}
    assert scrape_value(body.decode(), 'flagmetrics_invalid_events_total{defect="flag_key"}') == len(
        [key for key in received if not valid_label(key)]
    )
    assert any(not valid_label(key) for key in received)


@pytest.mark.e2e
def test_cardinality_caps_hold_under_gunicorn(gunicorn: Callable[..., Gunicorn]) -> None:
    """Past FLAGMETRICS_MAX_FLAGS, evaluations are still counted, under __overflow__, and the cap shows."""
    app = gunicorn(workers=1, FLAGMETRICS_MAX_FLAGS="3")
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for i in range(10):
            for user in ("u1", "u2"):
                assert client.get(f"/evaluate/flag-{i}", params={"user": user}).status_code == 200
    text = app.scrape().text
    scrape = parse_scrape(text)
    flags = {flag for flag, _, _ in scrape.evaluations}
    assert flags == {"flag-0", "flag-1", "flag-2", OVERFLOW}
    assert scrape.evaluations[(OVERFLOW, "ERROR", "")] == 14
    assert sum(scrape.evaluations.values()) == 20
    assert scrape_value(text, 'flagmetrics_cardinality_overflow_total{kind="flag_key"}') == 14
