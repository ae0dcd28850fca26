"""Internal: the scrape-time collector: the fleet gauges and store health from a snapshot it is handed, no I/O."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from flagmetrics.stores.base import Snapshot

__all__ = ["FleetCollector", "FleetGauge", "fleet_gauges"]


@dataclass(frozen=True, slots=True)
class FleetGauge:
    """Name and help of a gauge computed from the fleet store at scrape time."""

    name: str
    documentation: str
    labelnames: tuple[str, ...] = ("flag_key",)


def fleet_gauges(prefix: str) -> tuple[FleetGauge, FleetGauge]:
    """The unique-users and error-rate gauges for a metric `prefix` (ending in `_` when given)."""
    return (
        FleetGauge(
            f"{prefix}feature_flag_unique_users",
            "Distinct targeting keys that evaluated each flag, fleet-wide (HyperLogLog estimate)",
        ),
        FleetGauge(
            f"{prefix}feature_flag_error_rate",
            "Fleet-wide share of each flag's evaluations that ended in ERROR since its last reset (0 to 1)",
        ),
    )


class FleetCollector:
    """Yield the fleet gauges from `snapshot`, or only `store_up 0` when the store could not be read."""

    def __init__(self, snapshot: Snapshot | None, prefix: str) -> None:
        self._snapshot = snapshot
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges; no I/O happens here."""
        users_gauge, rate_gauge = fleet_gauges(self._prefix)
        yield GaugeMetricFamily(
            f"{self._prefix}flagmetrics_store_up",
            "1 when this scrape read the fleet store, 0 when the fleet gauges are left out",
            value=0 if self._snapshot is None else 1,
        )
        if self._snapshot is None:
            return
        users = GaugeMetricFamily(users_gauge.name, users_gauge.documentation, labels=users_gauge.labelnames)
        rates = GaugeMetricFamily(rate_gauge.name, rate_gauge.documentation, labels=rate_gauge.labelnames)
        for flag_key, stats in sorted(self._snapshot.flags.items()):
            users.add_metric([flag_key], stats.unique_users)
            rate = stats.error_rate
            if rate is not None:
                rates.add_metric([flag_key], rate)
        yield users
        yield rates
