"""Internal: the private internals of prometheus_client and litestar-flags that flagmetrics relies on, each checked.

Every use of another library's private name goes through this module, so that a release which changes
one fails here with a message saying what changed and which versions work, instead of deep inside a
request. pyproject.toml bounds both libraries to the versions tested against these checks.
"""

from __future__ import annotations

import sys
from typing import Any, Final

from flagmetrics.exceptions import FlagMetricsError

__all__ = [
    "LITESTAR_FLAGS_RANGE",
    "PROMETHEUS_CLIENT_RANGE",
    "UnsupportedVersionError",
    "flag_client_internals",
    "metric_child_values",
    "mmaped_dict",
    "multiprocess_merge_steps",
    "multiprocess_value_cell",
    "values_in_multiprocess_mode",
]

PROMETHEUS_CLIENT_RANGE: Final = ">=0.20,<0.27"
"""The prometheus-client versions whose internals flagmetrics is tested against (as in pyproject.toml)."""

LITESTAR_FLAGS_RANGE: Final = ">=0.2.2,<0.3"
"""The litestar-flags versions whose internals flagmetrics is tested against (as in pyproject.toml)."""


class UnsupportedVersionError(FlagMetricsError):
    """An installed library lacks an internal flagmetrics relies on; the message names the working versions."""

    def __init__(self, package: str, supported: str, missing: str) -> None:
        version = _version(package)
        super().__init__(
            f"{package} {version} is not supported: {missing}; install a supported version with "
            f"pip install '{package}{supported}'"
        )


def values_in_multiprocess_mode() -> bool | None:
    """Whether prometheus_client's value class writes mmap files; None while prometheus_client is not loaded.

    Reads `prometheus_client.values.ValueClass._multiprocess`, which prometheus_client sets when it
    picks its value class at import, without importing prometheus_client itself.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is None:
        return None
    value_class = getattr(values, "ValueClass", None)
    if value_class is None:
        raise UnsupportedVersionError("prometheus-client", PROMETHEUS_CLIENT_RANGE, "values.ValueClass is gone")
    flag = getattr(value_class, "_multiprocess", None)
    if not isinstance(flag, bool):
        raise UnsupportedVersionError(
            "prometheus-client", PROMETHEUS_CLIENT_RANGE, "values.ValueClass has no `_multiprocess` flag"
        )
    return flag


def mmaped_dict() -> Any:
    """prometheus_client's `MmapedDict`, the reader and writer of its multiprocess files."""
    from prometheus_client import mmap_dict

    cls = getattr(mmap_dict, "MmapedDict", None)
    for name in ("read_all_values_from_file", "write_value", "close"):
        if cls is None or not callable(getattr(cls, name, None)):
            raise UnsupportedVersionError(
                "prometheus-client", PROMETHEUS_CLIENT_RANGE, f"mmap_dict.MmapedDict.{name} is gone"
            )
    return cls


def multiprocess_merge_steps() -> tuple[Any, Any]:
    """The two steps of `MultiProcessCollector.merge`: `_read_metrics` and `_accumulate_metrics`.

    flagmetrics runs them apart to add each sample's values exactly (`math.fsum`) in between.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    steps = tuple(getattr(MultiProcessCollector, name, None) for name in ("_read_metrics", "_accumulate_metrics"))
    for name, step in zip(("_read_metrics", "_accumulate_metrics"), steps, strict=True):
        if not callable(step):
            raise UnsupportedVersionError(
                "prometheus-client", PROMETHEUS_CLIENT_RANGE, f"MultiProcessCollector.{name} is gone"
            )
    return steps[0], steps[1]


def multiprocess_lock() -> Any | None:
    """prometheus_client's write lock of multiprocess values in this process; None when not in multiprocess mode."""
    from prometheus_client import values

    value_class = values.ValueClass
    if not getattr(value_class, "_multiprocess", False):
        return None
    return _write_lock(value_class)


def _write_lock(value_class: type) -> Any:
    inc = getattr(value_class, "inc", None)
    code = getattr(inc, "__code__", None)
    closure = getattr(inc, "__closure__", None)
    if code is None or closure is None or "lock" not in code.co_freevars:
        raise UnsupportedVersionError(
            "prometheus-client", PROMETHEUS_CLIENT_RANGE, "MmapedValue.inc no longer writes under a shared `lock`"
        )
    return closure[code.co_freevars.index("lock")].cell_contents


def multiprocess_value_cell(value: Any) -> tuple[Any, Any, int] | None:
    """For a metric child's multiprocess value: prometheus_client's write lock, its file and the value's position.

    None for a value that is not a multiprocess one (a single process). flagmetrics writes the 8 bytes
    of the value at that position itself, under the same lock, keeping `value._value` in step so that
    prometheus_client's own writes of the child go on from it (see `flagmetrics.mmapvalues`).
    """
    if not getattr(value, "_multiprocess", False):
        return None
    lock = _write_lock(type(value))
    file = getattr(value, "_file", None)
    key = getattr(value, "_key", None)
    positions = getattr(file, "_positions", None)
    if not isinstance(getattr(value, "_value", None), float) or not isinstance(positions, dict) or key not in positions:
        raise UnsupportedVersionError(
            "prometheus-client", PROMETHEUS_CLIENT_RANGE, "MmapedValue has no `_value`, `_file` and `_key` in its file"
        )
    if getattr(file, "_m", None) is None or not callable(getattr(getattr(file, "_f", None), "fileno", None)):
        raise UnsupportedVersionError(
            "prometheus-client", PROMETHEUS_CLIENT_RANGE, "MmapedDict has no mmap `_m` of an open file `_f`"
        )
    return lock, file, positions[key]


def metric_child_values(child: Any) -> tuple[Any, list[Any], list[float]]:
    """The value objects of a prometheus_client counter child (`([value], [], [])`) or histogram child
    (`(sum, buckets, upper bounds)`)."""
    if hasattr(child, "_upper_bounds"):
        total, buckets, bounds = (getattr(child, name, None) for name in ("_sum", "_buckets", "_upper_bounds"))
        if (
            total is None
            or not isinstance(buckets, list)
            or not isinstance(bounds, list)
            or len(buckets) != len(bounds)
        ):
            raise UnsupportedVersionError(
                "prometheus-client", PROMETHEUS_CLIENT_RANGE, "Histogram has no `_sum`, `_buckets` and `_upper_bounds`"
            )
        return total, buckets, bounds
    value = getattr(child, "_value", None)
    if value is None or not hasattr(value, "inc"):
        raise UnsupportedVersionError("prometheus-client", PROMETHEUS_CLIENT_RANGE, "Counter has no `_value`")
    return value, [], []


def flag_client_internals(client: Any) -> tuple[Any, Any, Any]:
    """The engine, `_evaluate` and `_merge_context` of a litestar-flags `FeatureFlagClient`."""
    engine = getattr(client, "_engine", None)
    if engine is None or not hasattr(engine, "analytics_collector"):
        raise UnsupportedVersionError(
            "litestar-flags", LITESTAR_FLAGS_RANGE, "FeatureFlagClient has no `_engine` with an `analytics_collector`"
        )
    for name in ("_evaluate", "_merge_context"):
        if not callable(getattr(client, name, None)):
            raise UnsupportedVersionError("litestar-flags", LITESTAR_FLAGS_RANGE, f"FeatureFlagClient.{name} is gone")
    if not hasattr(client, "_analytics_collector"):
        raise UnsupportedVersionError(
            "litestar-flags", LITESTAR_FLAGS_RANGE, "FeatureFlagClient has no `_analytics_collector`"
        )
    return engine, client._evaluate, client._merge_context


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"
