"""The counter, histogram and self-metrics each worker writes, built against an injected registry."""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values

from flagmetrics.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "MULTIPROC_ENV",
    "Metrics",
    "multiprocess_dir",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Histogram buckets for evaluation duration, in seconds: 100 us to 1 s.
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


def multiprocess_dir() -> str | None:
    """Return the multiprocess directory when prometheus_client runs in multiprocess mode, else None.

    Raises `ConfigurationError` when the variable is set but prometheus_client was imported before it
    was: every worker would then silently keep values nobody else can see.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigurationError(
            f"`{MULTIPROC_ENV}` is set but prometheus_client was imported before it was, so every "
            "process keeps its own values; set it before the first import (the shipped "
            "gunicorn.conf.py does this by importing flagmetrics.gunicorn first)"
        )
    if not os.path.isdir(path):
        raise ConfigurationError(
            f"`{MULTIPROC_ENV}` points at {path!r}, which is not a directory; create it before "
            "starting the workers (flagmetrics.gunicorn.on_starting does)"
        )
    return path


@dataclass(frozen=True, slots=True)
class Metrics:
    """The metric objects of one exporter."""

    evaluations: Counter
    duration: Histogram
    errors: Counter
    invalid_events: Counter
    dropped_events: Counter
    store_errors: Counter
    cardinality_overflow: Counter

    @classmethod
    def create(
        cls,
        registry: CollectorRegistry | None,
        prefix: str,
        duration_buckets: tuple[float, ...],
    ) -> Metrics:
        """Create and register the metrics; `prefix` already ends in `_` when given."""
        reg = REGISTRY if registry is None else registry
        try:
            return cls(
                evaluations=Counter(
                    f"{prefix}feature_flag_evaluations",
                    "Total number of feature flag evaluations",
                    labelnames=("flag_key", "reason", "variant"),
                    registry=reg,
                ),
                duration=Histogram(
                    f"{prefix}feature_flag_evaluation_duration_seconds",
                    "Duration of feature flag evaluations in seconds",
                    labelnames=("flag_key",),
                    buckets=duration_buckets,
                    registry=reg,
                ),
                errors=Counter(
                    f"{prefix}feature_flag_evaluation_errors",
                    "Evaluations that ended in ERROR, by error code",
                    labelnames=("flag_key", "error_code"),
                    registry=reg,
                ),
                invalid_events=Counter(
                    f"{prefix}flagmetrics_invalid_events",
                    "Evaluation events with a defect, by the defect; see the README for what is kept",
                    labelnames=("defect",),
                    registry=reg,
                ),
                dropped_events=Counter(
                    f"{prefix}flagmetrics_dropped_events",
                    "Evaluations whose user id could not be buffered for the fleet store (buffer full)",
                    registry=reg,
                ),
                store_errors=Counter(
                    f"{prefix}flagmetrics_store_errors",
                    "Failed reads and writes of the fleet store, by operation",
                    labelnames=("operation",),
                    registry=reg,
                ),
                cardinality_overflow=Counter(
                    f"{prefix}flagmetrics_cardinality_overflow",
                    "Evaluations counted under __overflow__ because a cardinality cap was reached",
                    labelnames=("kind",),
                    registry=reg,
                ),
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"metrics with `prefix`={prefix.rstrip('_')!r} are already registered in this "
                f"registry ({exc}); pass a fresh `registry=CollectorRegistry()` or another `prefix`"
            ) from exc
