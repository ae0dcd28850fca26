"""flagmetrics: fleet-correct feature-flag metrics for Prometheus from Litestar apps under gunicorn.

Names are imported on first use, so that `import flagmetrics.gunicorn` can set up the multiprocess
directory before prometheus_client is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "PROMETHEUS_AVAILABLE",
    "ConfigurationError",
    "FlagMetricsError",
    "LocalStore",
    "MetricsProvider",
    "MissingDependencyError",
    "PrometheusExporter",
    "RedisStore",
    "Settings",
    "StoreError",
    "__version__",
]

_LAZY = {
    "DEFAULT_DURATION_BUCKETS": "flagmetrics.metrics",
    "PROMETHEUS_AVAILABLE": "flagmetrics.exporter",
    "ConfigurationError": "flagmetrics.exceptions",
    "FlagMetricsError": "flagmetrics.exceptions",
    "LocalStore": "flagmetrics.stores.local",
    "MetricsProvider": "flagmetrics.exporter",
    "MissingDependencyError": "flagmetrics.exceptions",
    "PrometheusExporter": "flagmetrics.exporter",
    "RedisStore": "flagmetrics.stores.redis",
    "Settings": "flagmetrics.config",
    "StoreError": "flagmetrics.exceptions",
}

if TYPE_CHECKING:
    from flagmetrics.config import Settings
    from flagmetrics.exceptions import (
        ConfigurationError,
        FlagMetricsError,
        MissingDependencyError,
        StoreError,
    )
    from flagmetrics.exporter import PROMETHEUS_AVAILABLE, MetricsProvider, PrometheusExporter
    from flagmetrics.metrics import DEFAULT_DURATION_BUCKETS
    from flagmetrics.stores.local import LocalStore
    from flagmetrics.stores.redis import RedisStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flagmetrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
