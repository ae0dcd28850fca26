"""Adapter for the OpenFeature SDK: a hook that reports every flag evaluation to a `PrometheusExporter`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import MutableMapping
from enum import Enum
from typing import Final

from flagmetrics.events import ERROR, UNKNOWN, Defect, Evaluation, reason
from flagmetrics.exceptions import MissingDependencyError

try:
    from openfeature import api
    from openfeature.client import OpenFeatureClient
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagEvaluationDetails, FlagValueType
    from openfeature.hook import Hook, HookContext, HookHints
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("openfeature-sdk", "openfeature") from exc

from flagmetrics.exporter import PrometheusExporter
from flagmetrics.logs import ThrottledLog

__all__ = ["MetricsHook", "install"]

# Where `before` keeps the start time: a key of `hook_data` (openfeature-sdk with hook data), else an
# attribute of the HookContext, which older SDKs create once per evaluation.
_START: Final = "_flagmetrics_start"


class MetricsHook(Hook):
    """Record every evaluation (errors included) with its duration; never raises into the evaluation.

    Sync and async evaluations both work, from any thread, with or without a running event loop:
    the hook calls the exporter's synchronous `record_sync`.
    """

    def __init__(self, exporter: PrometheusExporter) -> None:
        """Report to `exporter`."""
        self._exporter = exporter
        self._log = ThrottledLog()

    @property
    def exporter(self) -> PrometheusExporter:
        """The exporter this hook reports to."""
        return self._exporter

    def before(self, hook_context: HookContext, hints: HookHints) -> EvaluationContext | None:
        """Note the start time of the evaluation."""
        try:
            now = time.perf_counter()
            data = getattr(hook_context, "hook_data", None)
            if isinstance(data, MutableMapping):
                data[_START] = now
            else:
                setattr(hook_context, _START, now)
        except Exception:
            self._log.warning("hook", "flagmetrics: could not time an OpenFeature evaluation")
        return None

    def finally_after(
        self,
        hook_context: HookContext,
        details: FlagEvaluationDetails[FlagValueType],
        hints: HookHints,
    ) -> None:
        """Record the evaluation as the caller got it."""
        try:
            end = time.perf_counter()
            data = getattr(hook_context, "hook_data", None)
            start = data.get(_START) if isinstance(data, MutableMapping) else None
            if start is None:
                start = getattr(hook_context, _START, None)
            # No start: the SDK returned before the `before` stage (provider not ready, or an
            # earlier hook failed); the provider was never asked, so the evaluation took no time.
            ms = (end - start) * 1000.0 if type(start) is float else 0.0
            known = reason(details.reason) or UNKNOWN  # a provider's own reason counts as UNKNOWN
            code = details.error_code
            if code is not None or known == ERROR:
                # The caller got the default value, whatever the provider called its reason.
                known, variant = ERROR, None
                error_code = None if code is None else str(code.value if isinstance(code, Enum) else code)
            else:
                variant, error_code = details.variant, None
            context = hook_context.evaluation_context
            event = Evaluation(
                flag_key=hook_context.flag_key,
                reason=known,
                variant=variant,
                targeting_key=context.targeting_key if context is not None else None,
                evaluation_duration_ms=ms,
                error_code=error_code,
            )
            self._exporter.record_sync(event)
        except Exception:
            # Counted as an event that could not be read, as the exporter counts its own.
            with contextlib.suppress(Exception):
                self._exporter.metrics.invalid_events.labels(defect=Defect.EVENT.value).inc()
            self._log.warning(
                "hook",
                "flagmetrics: could not record an OpenFeature evaluation "
                '(counted in flagmetrics_invalid_events_total{defect="event"})',
            )


def install(exporter: PrometheusExporter, client: OpenFeatureClient | None = None) -> MetricsHook:
    """Add a `MetricsHook` to `client`, or to the global API when None (idempotent); return it."""
    for hook in api.get_hooks() if client is None else client.hooks:
        if isinstance(hook, MetricsHook) and hook.exporter is exporter:
            return hook
    hook = MetricsHook(exporter)
    if client is None:
        api.add_hooks([hook])
    else:
        client.add_hooks([hook])
    return hook
