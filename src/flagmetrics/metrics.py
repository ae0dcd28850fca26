"""Internal: the counter, histogram and self-metrics each worker writes, built against an injected registry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from flagmetrics.events import Defect
from flagmetrics.exceptions import ConfigurationError
from flagmetrics.logs import ThrottledLog

__all__ = ["DEFAULT_DURATION_BUCKETS", "DefectCounter", "Metrics"]

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
    spool_deliveries: Counter
    spool_errors: Counter

    @classmethod
    def create(
        cls,
        registry: CollectorRegistry | None,
        prefix: str,
        duration_buckets: tuple[float, ...],
    ) -> Metrics:
        """Create and register the metrics; `prefix` already ends in `_` when given.

        Every labelled self-metric gets its children at once, so that its first increase shows in `rate()`.
        """
        reg = REGISTRY if registry is None else registry
        try:
            metrics = cls(
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
                    "Evaluation events with a defect, by the defect (the metrics reference says what is kept)",
                    labelnames=("defect",),
                    registry=reg,
                ),
                dropped_events=Counter(
                    f"{prefix}flagmetrics_dropped_events",
                    "Evaluations or user ids that could not reach the fleet store (buffer or spool full, for instance)",
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
                spool_deliveries=Counter(
                    f"{prefix}flagmetrics_spool_deliveries",
                    "Batches delivered to the fleet store from the spool (written by a worker that could not)",
                    registry=reg,
                ),
                spool_errors=Counter(
                    f"{prefix}flagmetrics_spool_errors",
                    "Spool files that could not be written, or were found damaged and set aside, by operation",
                    labelnames=("operation",),
                    registry=reg,
                ),
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"metrics with `prefix`={prefix.rstrip('_')!r} are already registered in this "
                f"registry ({exc}); pass a fresh `registry=CollectorRegistry()` or another `prefix`"
            ) from exc
        for defect in Defect:
            metrics.invalid_events.labels(defect=defect.value)
        for operation in ("flush", "snapshot"):
            metrics.store_errors.labels(operation=operation)
        for kind in ("flag_key", "variant"):
            metrics.cardinality_overflow.labels(kind=kind)
        for operation in ("write", "read"):
            metrics.spool_errors.labels(operation=operation)
        return metrics


class DefectCounter:
    """Count defective events in `flagmetrics_invalid_events_total{defect}`, logging each kind once a minute.

    The log names the event's type and the defect, never the event's values, which may hold user ids.
    """

    __slots__ = ("_children", "_log")

    def __init__(self, invalid_events: Counter) -> None:
        self._children = {defect: invalid_events.labels(defect=defect.value) for defect in Defect}
        self._log = ThrottledLog()

    def count(self, defects: Iterable[Defect], event_type: str) -> None:
        """Count each defect of one event of type `event_type`."""
        for defect in defects:
            self._children[defect].inc()
            self._log.warning(
                defect.value,
                "flagmetrics: %s with an invalid %s (counted in flagmetrics_invalid_events_total)",
                event_type,
                defect.value,
            )
