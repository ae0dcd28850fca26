"""Internal: the scrape-time collector: the fleet gauges and store health from a snapshot it is handed, no I/O."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from flagmetrics.stores.base import Snapshot

__all__ = ["FleetCollector", "FleetGauge", "fleet_gauges", "fleet_text"]


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
            f"{self._prefix}{_STORE_UP.name}", _STORE_UP.documentation, value=0 if self._snapshot is None else 1
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


def fleet_text(snapshot: Snapshot | None, prefix: str, *, openmetrics: bool) -> str:
    """The fleet gauges as exposition text, byte for byte what prometheus_client writes for `FleetCollector`.

    Written directly because a scrape of thousands of flags spends most of its time in
    prometheus_client's per-sample formatting; the family headers still come from prometheus_client,
    and the tests hold the whole text against its encoders.
    """
    store_up, users_head, rates_head = _headers(prefix, openmetrics)
    if snapshot is None:
        return f"{store_up}{_sample(f'{prefix}flagmetrics_store_up', None, 0.0)}"
    users_name, rates_name = f"{prefix}feature_flag_unique_users", f"{prefix}feature_flag_error_rate"
    users, rates = [users_head], [rates_head]
    for flag_key, stats in sorted(snapshot.flags.items()):
        label = _escape(flag_key)
        users.append(_sample(users_name, label, stats.unique_users))
        rate = stats.error_rate
        if rate is not None:
            rates.append(_sample(rates_name, label, rate))
    return f"{store_up}{_sample(f'{prefix}flagmetrics_store_up', None, 1.0)}{''.join(users)}{''.join(rates)}"


def _sample(name: str, flag_key: str | None, value: float) -> str:
    if flag_key is None:
        return f"{name} {floatToGoString(value)}\n"
    return f'{name}{{flag_key="{flag_key}"}} {floatToGoString(value)}\n'


def _escape(value: str) -> str:
    """A label value as both exposition formats write it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@functools.lru_cache(maxsize=16)
def _headers(prefix: str, openmetrics: bool) -> tuple[str, str, str]:
    """The HELP and TYPE lines of each fleet gauge, as prometheus_client's encoder writes them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    encoder = generate_openmetrics if openmetrics else generate_latest
    headers = []
    for gauge in (_STORE_UP, *fleet_gauges(prefix)):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            _Empty(gauge.name if gauge is not _STORE_UP else f"{prefix}{gauge.name}", gauge.documentation)
        )
        headers.append(encoder(registry).decode().removesuffix("# EOF\n"))
    store_up, users, rates = headers
    return store_up, users, rates


_STORE_UP = FleetGauge(
    "flagmetrics_store_up", "1 when this scrape read the fleet store, 0 when the fleet gauges are left out", ()
)


class _Empty:
    """A collector of one gauge family without samples: its headers only."""

    def __init__(self, name: str, documentation: str) -> None:
        self._family = GaugeMetricFamily(name, documentation)

    def collect(self) -> Iterator[Metric]:
        yield self._family
