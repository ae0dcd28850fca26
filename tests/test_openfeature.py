"""flagmetrics.openfeature: `MetricsHook` with the real OpenFeature SDK and its in-memory provider."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode, ProviderFatalError
from openfeature.flag_evaluation import FlagEvaluationOptions, FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from prometheus_client import CollectorRegistry

from flagmetrics import LocalStore, PrometheusExporter
from flagmetrics.admission import Admission
from flagmetrics.events import Reader
from flagmetrics.openfeature import MetricsHook, install
from flagmetrics.stores.base import FlagStats
from tests.helpers import sample_value

pytestmark = pytest.mark.usefixtures("clean_env")

EVALUATIONS = "feature_flag_evaluations_total"
ERRORS = "feature_flag_evaluation_errors_total"
DURATION_COUNT = "feature_flag_evaluation_duration_seconds_count"
DURATION_SUM = "feature_flag_evaluation_duration_seconds_sum"
INVALID = "flagmetrics_invalid_events_total"


def beta_for_vips(flag: InMemoryFlag[str], context: EvaluationContext) -> FlagResolutionDetails[str]:
    """Targeting: users whose key starts with `vip` get the `beta` variant."""
    if (context.targeting_key or "").startswith("vip"):
        return FlagResolutionDetails(value=flag.variants["beta"], reason=Reason.TARGETING_MATCH, variant="beta")
    return FlagResolutionDetails(
        value=flag.variants[flag.default_variant], reason=Reason.DEFAULT, variant=flag.default_variant
    )


def parse_error(flag: InMemoryFlag[bool], context: EvaluationContext) -> FlagResolutionDetails[bool]:
    """A provider that reports an error code under a reason other than ERROR."""
    return FlagResolutionDetails(value=False, reason=Reason.DEFAULT, error_code=ErrorCode.PARSE_ERROR)


def custom_reason(flag: InMemoryFlag[bool], context: EvaluationContext) -> FlagResolutionDetails[bool]:
    """A provider with a reason of its own (the OpenFeature spec allows them)."""
    return FlagResolutionDetails(value=True, reason="PERCENTAGE_ROLLOUT", variant="on")


FLAGS: dict[str, InMemoryFlag[Any]] = {
    "dark_mode": InMemoryFlag("on", {"on": True, "off": False}),
    "checkout": InMemoryFlag("classic", {"classic": "v1", "beta": "v2"}, context_evaluator=beta_for_vips),
    "not_a_bool": InMemoryFlag("yes", {"yes": "yes"}),
    "broken": InMemoryFlag("on", {"on": True}, context_evaluator=parse_error),
    "custom": InMemoryFlag("on", {"on": True}, context_evaluator=custom_reason),
}


class FatalProvider(InMemoryProvider):
    """A provider whose initialization fails for good."""

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        raise ProviderFatalError("no backend")


@pytest.fixture(autouse=True)
def _openfeature_state() -> Iterator[None]:
    """Every test uses its own provider domain and client hooks; leave the global API as found."""
    assert api.get_hooks() == []
    yield
    api.clear_hooks()
    api.clear_providers()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def exporter(registry: CollectorRegistry) -> PrometheusExporter:
    return PrometheusExporter(registry=registry, store=LocalStore(None))


def client_for(exporter: Any, provider: InMemoryProvider | None = None) -> OpenFeatureClient:
    """A client of a fresh domain served by `provider`, with a `MetricsHook` at client level."""
    domain = f"test-{uuid.uuid4().hex}"
    api.set_provider_and_wait(provider or InMemoryProvider(FLAGS), domain)
    client = api.get_client(domain)
    client.add_hooks([MetricsHook(exporter)])
    return client


def fleet(exporter: PrometheusExporter) -> dict[str, FlagStats]:
    """Flush the buffer to the store and read the fleet counts, on a loop of their own.

    Only the counts: the time of the last evaluation and the windows are left out (test_windows).
    """

    async def main() -> dict[str, FlagStats]:
        try:
            await exporter.flush()
            snapshot = await exporter.fleet_snapshot()
            assert snapshot is not None
            return {
                key: FlagStats(stats.total, stats.errors, stats.unique_users) for key, stats in snapshot.flags.items()
            }
        finally:
            await exporter.close()

    return asyncio.run(main())


# -- successful evaluations --------------------------------------------------------------------------


def test_static_evaluation_is_counted_with_variant_and_duration(
    exporter: PrometheusExporter, registry: CollectorRegistry
) -> None:
    client = client_for(exporter)
    for _ in range(3):
        details = client.get_boolean_details("dark_mode", False)
        assert (details.value, details.reason, details.variant) == (True, Reason.STATIC, "on")

    assert sample_value(registry, EVALUATIONS, flag_key="dark_mode", reason="STATIC", variant="on") == 3
    assert sample_value(registry, DURATION_COUNT, flag_key="dark_mode") == 3
    assert 0 < sample_value(registry, DURATION_SUM, flag_key="dark_mode") < 1
    assert sample_value(registry, INVALID, defect="duration") == 0
    assert fleet(exporter)["dark_mode"] == FlagStats(total=3, errors=0, unique_users=0)


def test_targeting_match_and_unique_users(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    client = client_for(exporter)
    for user in ("vip-1", "vip-2", "vip-1", "plain-1", "plain-1"):
        client.get_string_value("checkout", "fallback", EvaluationContext(targeting_key=user))
    # A targeting key from the client's context reaches the hook too.
    client.context = EvaluationContext(targeting_key="vip-3")
    assert client.get_string_value("checkout", "fallback") == "v2"

    assert sample_value(registry, EVALUATIONS, flag_key="checkout", reason="TARGETING_MATCH", variant="beta") == 4
    assert sample_value(registry, EVALUATIONS, flag_key="checkout", reason="DEFAULT", variant="classic") == 2
    assert fleet(exporter)["checkout"] == FlagStats(total=6, errors=0, unique_users=4)


def test_custom_reason_is_counted_as_unknown_without_a_defect(
    exporter: PrometheusExporter, registry: CollectorRegistry
) -> None:
    assert client_for(exporter).get_boolean_value("custom", False) is True
    assert sample_value(registry, EVALUATIONS, flag_key="custom", reason="UNKNOWN", variant="on") == 1
    assert sample_value(registry, INVALID, defect="reason") == 0


# -- errors ------------------------------------------------------------------------------------------


def test_flag_not_found_is_counted_as_error(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    client = client_for(exporter)
    assert client.get_boolean_value("missing", True, EvaluationContext(targeting_key="u1")) is True

    assert sample_value(registry, EVALUATIONS, flag_key="missing", reason="ERROR", variant="") == 1
    assert sample_value(registry, ERRORS, flag_key="missing", error_code="FLAG_NOT_FOUND") == 1
    assert sample_value(registry, DURATION_COUNT, flag_key="missing") == 1
    assert fleet(exporter)["missing"] == FlagStats(total=1, errors=1, unique_users=1)


def test_type_mismatch_is_counted_as_error(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    client = client_for(exporter)
    details = client.get_boolean_details("not_a_bool", False)
    assert (details.value, details.error_code) == (False, ErrorCode.TYPE_MISMATCH)

    assert sample_value(registry, EVALUATIONS, flag_key="not_a_bool", reason="ERROR", variant="") == 1
    assert sample_value(registry, ERRORS, flag_key="not_a_bool", error_code="TYPE_MISMATCH") == 1
    assert fleet(exporter)["not_a_bool"] == FlagStats(total=1, errors=1, unique_users=0)


def test_error_code_under_another_reason_is_counted_as_error(
    exporter: PrometheusExporter, registry: CollectorRegistry
) -> None:
    details = client_for(exporter).get_boolean_details("broken", True)
    assert (details.reason, details.error_code) == (Reason.DEFAULT, ErrorCode.PARSE_ERROR)

    assert sample_value(registry, EVALUATIONS, flag_key="broken", reason="ERROR", variant="") == 1
    assert sample_value(registry, EVALUATIONS, flag_key="broken", reason="DEFAULT", variant="") == 0
    assert sample_value(registry, ERRORS, flag_key="broken", error_code="PARSE_ERROR") == 1


def test_evaluation_refused_before_the_before_stage_is_still_recorded(
    exporter: PrometheusExporter, registry: CollectorRegistry
) -> None:
    """A fatal provider short-circuits the SDK before `before` runs; `finally_after` still records it."""
    domain = f"test-{uuid.uuid4().hex}"
    with pytest.raises(ProviderFatalError):
        api.set_provider_and_wait(FatalProvider(FLAGS), domain)
    client = api.get_client(domain)
    client.add_hooks([MetricsHook(exporter)])

    assert client.get_boolean_value("dark_mode", False) is False

    assert sample_value(registry, ERRORS, flag_key="dark_mode", error_code="PROVIDER_FATAL") == 1
    assert sample_value(registry, DURATION_COUNT, flag_key="dark_mode") == 1
    assert sample_value(registry, INVALID, defect="duration") == 0


# -- the hook never harms the evaluation ---------------------------------------------------------------


class RaisingExporter(PrometheusExporter):
    def record_sync(self, event: Any) -> None:
        raise RuntimeError("boom")


class BrokenLabels:
    """A metric whose `labels()` fails, standing in for a broken metrics object."""

    def labels(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken metric")


def broken_metrics() -> PrometheusExporter:
    exporter = PrometheusExporter(registry=CollectorRegistry(), store=LocalStore(None))
    exporter._read = None  # type: ignore[assignment]
    exporter._defects = BrokenLabels()  # type: ignore[assignment]  # record()'s own error path fails too
    return exporter


def broken_series() -> PrometheusExporter:
    exporter = PrometheusExporter(registry=CollectorRegistry(), store=LocalStore(None))
    broken = dataclasses.replace(exporter.metrics, evaluations=BrokenLabels())  # type: ignore[arg-type]
    exporter._read = Reader(Admission(broken, exporter._buffer, max_flags=10, max_variants_per_flag=10).series).read
    return exporter


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: RaisingExporter(registry=CollectorRegistry(), store=LocalStore(None)), id="raises"),
        pytest.param(broken_metrics, id="no-metrics"),
        pytest.param(broken_series, id="broken-counter"),
        pytest.param(object, id="not-an-exporter"),
    ],
)
def test_failing_exporter_never_changes_the_evaluation(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(make())
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert client.get_boolean_value("dark_mode", False) is True
            vip = EvaluationContext(targeting_key="vip-1")
            details = client.get_string_details("checkout", "fallback", vip)
            assert (details.value, details.reason, details.error_code) == ("v2", Reason.TARGETING_MATCH, None)
            assert client.get_boolean_value("missing", True) is True

        async def inside_loop() -> None:
            assert await client.get_boolean_value_async("dark_mode", False) is True

        asyncio.run(inside_loop())

    # The SDK never saw an exception from the hook, and flagmetrics logged once per kind, not per evaluation.
    assert not [r for r in caplog.records if r.name == "openfeature"]
    flagmetrics_logs = [r for r in caplog.records if r.name == "flagmetrics"]
    assert 1 <= len(flagmetrics_logs) <= 2


def test_hook_survives_a_broken_hook_context(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    """Even a HookContext without the expected attributes cannot make the hook raise; the loss is counted."""
    hook = MetricsHook(exporter)
    assert hook.before(object(), {}) is None  # type: ignore[arg-type]
    hook.finally_after(object(), object(), {})  # type: ignore[arg-type]
    assert sample_value(registry, INVALID, defect="event") == 1
    evaluations = [s for m in registry.collect() if m.name == EVALUATIONS.removesuffix("_total") for s in m.samples]
    assert [s for s in evaluations if s.name == EVALUATIONS] == []


# -- event loops and threads ---------------------------------------------------------------------------


def test_hook_inside_a_running_event_loop(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    client = client_for(exporter)

    async def main() -> dict[str, FlagStats]:
        try:
            asyncio.get_running_loop()
            # A sync evaluation called from a coroutine, and an async one.
            assert client.get_boolean_value("dark_mode", False, EvaluationContext(targeting_key="u1")) is True
            ctx = EvaluationContext(targeting_key="u2")
            assert await client.get_boolean_value_async("dark_mode", False, ctx) is True
            assert await client.get_boolean_value_async("missing", False) is False
            assert exporter._flusher.running  # record() started the flusher on this loop
            await exporter.flush()
            snapshot = await exporter.fleet_snapshot()
            assert snapshot is not None
            return dict(snapshot.flags)
        finally:
            await exporter.close()

    flags = asyncio.run(main())
    assert (flags["dark_mode"].total, flags["dark_mode"].errors, flags["dark_mode"].unique_users) == (2, 0, 2)
    assert (flags["missing"].total, flags["missing"].errors, flags["missing"].unique_users) == (1, 1, 0)
    assert sample_value(registry, EVALUATIONS, flag_key="dark_mode", reason="STATIC", variant="on") == 2
    assert sample_value(registry, ERRORS, flag_key="missing", error_code="FLAG_NOT_FOUND") == 1


def test_hook_from_many_threads_counts_exactly(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    client = client_for(exporter)
    threads, per_thread = 8, 300
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            client.get_boolean_value("dark_mode", False, EvaluationContext(targeting_key=f"u{n}-{i % 2}"))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke races
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)

    total = threads * per_thread
    assert sample_value(registry, EVALUATIONS, flag_key="dark_mode", reason="STATIC", variant="on") == total
    assert fleet(exporter)["dark_mode"] == FlagStats(total=total, errors=0, unique_users=threads * 2)


# -- wiring ---------------------------------------------------------------------------------------------


def test_install_on_a_client_is_idempotent(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    domain = f"test-{uuid.uuid4().hex}"
    api.set_provider_and_wait(InMemoryProvider(FLAGS), domain)
    client = api.get_client(domain)

    hook = install(exporter, client)
    assert install(exporter, client) is hook
    assert client.hooks == [hook]
    assert api.get_hooks() == []
    client.get_boolean_value("dark_mode", False)
    assert sample_value(registry, EVALUATIONS, flag_key="dark_mode", reason="STATIC", variant="on") == 1


def test_install_globally_reports_every_client(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    domain = f"test-{uuid.uuid4().hex}"
    api.set_provider_and_wait(InMemoryProvider(FLAGS), domain)

    hook = install(exporter)
    assert install(exporter) is hook
    assert api.get_hooks() == [hook]
    api.get_client(domain).get_boolean_value("dark_mode", False)
    api.get_client(domain).get_boolean_value("dark_mode", False)
    assert sample_value(registry, EVALUATIONS, flag_key="dark_mode", reason="STATIC", variant="on") == 2


def test_invocation_level_hook(exporter: PrometheusExporter, registry: CollectorRegistry) -> None:
    domain = f"test-{uuid.uuid4().hex}"
    api.set_provider_and_wait(InMemoryProvider(FLAGS), domain)
    options = FlagEvaluationOptions(hooks=[MetricsHook(exporter)])

    assert api.get_client(domain).get_boolean_value("dark_mode", False, flag_evaluation_options=options)
    assert sample_value(registry, EVALUATIONS, flag_key="dark_mode", reason="STATIC", variant="on") == 1
    assert sample_value(registry, DURATION_COUNT, flag_key="dark_mode") == 1
