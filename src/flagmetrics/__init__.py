"""flagmetrics: fleet-correct feature-flag metrics for Prometheus from ASGI apps under gunicorn.

The public API is what this package exports (`__all__`), plus these modules:
`flagmetrics.stores` (the `Store` protocol and the stores), `flagmetrics.gunicorn` (the gunicorn
hooks), `flagmetrics.litestar` (`FlagMetricsPlugin`), `flagmetrics.litestar_flags` (`instrument`),
`flagmetrics.openfeature` (`MetricsHook`, `install`), `flagmetrics.asgi` (`metrics_app`,
`lifespan`, for any ASGI framework) and the `flagmetrics` command. Every other
module is internal and may change in any release.

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
    "Batch",
    "ConfigurationError",
    "FlagDelta",
    "FlagMetricsError",
    "FlagStats",
    "LocalStore",
    "MetricsProvider",
    "MissingDependencyError",
    "Pin",
    "PrometheusExporter",
    "RedisStore",
    "Settings",
    "Snapshot",
    "Store",
    "StoreError",
    "UnsupportedVersionError",
    "__version__",
]

PUBLIC_MODULES = (
    "flagmetrics.asgi",
    "flagmetrics.gunicorn",
    "flagmetrics.litestar",
    "flagmetrics.litestar_flags",
    "flagmetrics.openfeature",
    "flagmetrics.stores",
)
"""The modules besides this package whose documented names are public API."""

_LAZY = {
    "DEFAULT_DURATION_BUCKETS": "flagmetrics.metrics",
    "PROMETHEUS_AVAILABLE": "flagmetrics.exporter",
    "Batch": "flagmetrics.stores.base",
    "ConfigurationError": "flagmetrics.exceptions",
    "FlagDelta": "flagmetrics.stores.base",
    "FlagMetricsError": "flagmetrics.exceptions",
    "FlagStats": "flagmetrics.stores.base",
    "LocalStore": "flagmetrics.stores.local",
    "MetricsProvider": "flagmetrics.exporter",
    "MissingDependencyError": "flagmetrics.exceptions",
    "Pin": "flagmetrics.stores.base",
    "PrometheusExporter": "flagmetrics.exporter",
    "RedisStore": "flagmetrics.stores.redis",
    "Settings": "flagmetrics.config",
    "Snapshot": "flagmetrics.stores.base",
    "Store": "flagmetrics.stores.base",
    "StoreError": "flagmetrics.exceptions",
    "UnsupportedVersionError": "flagmetrics.compat",
}

if TYPE_CHECKING:
    from flagmetrics.compat import UnsupportedVersionError
    from flagmetrics.config import Settings
    from flagmetrics.exceptions import (
        ConfigurationError,
        FlagMetricsError,
        MissingDependencyError,
        StoreError,
    )
    from flagmetrics.exporter import PROMETHEUS_AVAILABLE, MetricsProvider, PrometheusExporter
    from flagmetrics.metrics import DEFAULT_DURATION_BUCKETS
    from flagmetrics.stores.base import Batch, FlagDelta, FlagStats, Pin, Snapshot, Store
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
