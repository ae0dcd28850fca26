"""Internal: the scrape-time collector: the fleet gauges and store health from a snapshot it is handed, no I/O."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from flagmetrics.stores.base import FlagStats, Snapshot
from flagmetrics.windows import split_p_value

__all__ = ["FleetCollector", "FleetGauge", "fleet_gauges", "fleet_text", "window_gauges"]


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


def window_gauges(prefix: str) -> tuple[FleetGauge, FleetGauge, FleetGauge, FleetGauge]:
    """The last-evaluated, recent-users, per-variant exposure and split-check gauges for `prefix`."""
    return (
        FleetGauge(
            f"{prefix}feature_flag_last_evaluated_timestamp_seconds",
            "Unix time of each flag's latest evaluation anywhere in the fleet (workers' clocks)",
        ),
        FleetGauge(
            f"{prefix}feature_flag_window_unique_users",
            "Distinct targeting keys that evaluated each flag in the trailing window, fleet-wide",
            ("flag_key", "window"),
        ),
        FleetGauge(
            f"{prefix}feature_flag_window_variant_unique_users",
            "Distinct targeting keys served each variant of each flag in the trailing window, fleet-wide",
            ("flag_key", "variant", "window"),
        ),
        FleetGauge(
            f"{prefix}feature_flag_split_p_value",
            "Chi-square p-value of each flag's users per variant in the window against its expected split",
            ("flag_key", "window"),
        ),
    )


def _samples(flag_key: str, stats: FlagStats) -> Iterator[tuple[int, tuple[str, ...], float]]:
    """Every fleet sample of one flag: (gauge index, label values, value), gauges in `_gauges` order."""
    yield 0, (flag_key,), stats.unique_users
    rate = stats.error_rate
    if rate is not None:
        yield 1, (flag_key,), rate
    if stats.last_evaluated_s is not None:
        yield 2, (flag_key,), stats.last_evaluated_s
    for window, figures in stats.windows.items():
        yield 3, (flag_key, window), figures.users
        for variant, users in sorted(figures.variants.items()):
            yield 4, (flag_key, variant, window), users
        if stats.split is not None:
            p_value = split_p_value(figures.variants, stats.split)
            if p_value is not None:
                yield 5, (flag_key, window), p_value


def _gauges(prefix: str) -> tuple[FleetGauge, ...]:
    return (*fleet_gauges(prefix), *window_gauges(prefix))


class FleetCollector:
    """Yield the fleet gauges from `snapshot`, or only `store_up 0` when the store could not be read."""

    def __init__(self, snapshot: Snapshot | None, prefix: str) -> None:
        self._snapshot = snapshot
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges; no I/O happens here."""
        yield GaugeMetricFamily(
            f"{self._prefix}{_STORE_UP.name}", _STORE_UP.documentation, value=0 if self._snapshot is None else 1
        )
        if self._snapshot is None:
            return
        families = [
            GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labelnames)
            for gauge in _gauges(self._prefix)
        ]
        for flag_key, stats in sorted(self._snapshot.flags.items()):
            for index, labels, value in _samples(flag_key, stats):
                families[index].add_metric(list(labels), value)
        yield from families


def fleet_text(snapshot: Snapshot | None, prefix: str, *, openmetrics: bool) -> str:
    """The fleet gauges as exposition text, byte for byte what prometheus_client writes for `FleetCollector`.

    Written directly because a scrape of thousands of flags spends most of its time in
    prometheus_client's per-sample formatting; the family headers still come from prometheus_client,
    and the tests hold the whole text against its encoders.
    """
    store_up, *heads = _headers(prefix, openmetrics)
    if snapshot is None:
        return f"{store_up}{prefix}flagmetrics_store_up 0.0\n"
    users_name, rates_name, last_name, window_name, variant_name, p_name = (g.name for g in _gauges(prefix))
    users, rates, last, windows, variants, p_values = ([head] for head in heads)
    for flag_key, stats in sorted(snapshot.flags.items()):
        flag = f'{{flag_key="{_escape(flag_key)}"'
        users.append(f"{users_name}{flag}}} {_number(stats.unique_users)}\n")
        rate = stats.error_rate
        if rate is not None:
            rates.append(f"{rates_name}{flag}}} {floatToGoString(rate)}\n")
        if stats.last_evaluated_s is not None:
            last.append(f"{last_name}{flag}}} {floatToGoString(stats.last_evaluated_s)}\n")
        for window, figures in stats.windows.items():
            labels = f'{flag},window="{_escape(window)}"}} '
            windows.append(f"{window_name}{labels}{_number(figures.users)}\n")
            for variant, count in sorted(figures.variants.items()):
                variants.append(f'{variant_name}{flag},variant="{_escape(variant)}",window="{_escape(window)}"}} ')
                variants.append(f"{_number(count)}\n")
            if stats.split is not None:
                p_value = split_p_value(figures.variants, stats.split)
                if p_value is not None:
                    p_values.append(f"{p_name}{labels}{floatToGoString(p_value)}\n")
    body = "".join(chain(users, rates, last, windows, variants, p_values))
    return f"{store_up}{prefix}flagmetrics_store_up 1.0\n{body}"


def _number(value: int) -> str:
    """A count as floatToGoString writes it, without its cost for the common small ones."""
    return f"{value}.0" if 0 <= value < 1_000_000 else floatToGoString(value)


def _escape(value: str) -> str:
    """A label value as both exposition formats write it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


@functools.lru_cache(maxsize=16)
def _headers(prefix: str, openmetrics: bool) -> tuple[str, ...]:
    """The HELP and TYPE lines of each fleet gauge, as prometheus_client's encoder writes them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    encoder = generate_openmetrics if openmetrics else generate_latest
    headers = []
    for gauge in (_STORE_UP, *_gauges(prefix)):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            _Empty(gauge.name if gauge is not _STORE_UP else f"{prefix}{gauge.name}", gauge.documentation)
        )
        headers.append(encoder(registry).decode().removesuffix("# EOF\n"))
    return tuple(headers)


_STORE_UP = FleetGauge(
    "flagmetrics_store_up", "1 when this scrape read the fleet store, 0 when the fleet gauges are left out", ()
)


class _Empty:
    """A collector of one gauge family without samples: its headers only."""

    def __init__(self, name: str, documentation: str) -> None:
        self._family = GaugeMetricFamily(name, documentation)

    def collect(self) -> Iterator[Metric]:
        yield self._family
