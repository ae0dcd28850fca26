"""Fleet stores: the state every worker and host shares (unique users, error counts).

`Store` is the protocol every store implements; `LocalStore` keeps the state of one host and
`RedisStore` that of a whole fleet (in Redis, Redis behind Sentinel, or Redis Cluster). `RedisStore`
is imported on first use, so that the default local path never loads redis-py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flagmetrics.config import Settings
from flagmetrics.stores.base import Batch, FlagDelta, FlagStats, Pin, Snapshot, Store, WindowStats, snapshot_within
from flagmetrics.stores.local import LocalStore

if TYPE_CHECKING:
    from flagmetrics.stores.redis import RedisStore

__all__ = [
    "Batch",
    "FlagDelta",
    "FlagStats",
    "LocalStore",
    "Pin",
    "RedisStore",
    "Snapshot",
    "Store",
    "WindowStats",
    "default_store",
    "snapshot_within",
]


def default_store(settings: Settings, multiprocess_dir: str | None) -> Store:
    """The store used when none is given: Redis when `redis_url` or `redis_sentinel` is set, else local to this host."""
    if settings.redis_sentinel:
        from flagmetrics.stores.redis import RedisStore

        return RedisStore.from_sentinel(
            settings.redis_sentinel,
            settings.redis_sentinel_master,
            key_prefix=settings.key_prefix,
            retention_s=settings.retention_s,
            windows=settings.windows,
            sentinel_password=settings.redis_sentinel_password,
        )
    if settings.redis_url:
        from flagmetrics.stores.redis import RedisStore

        return RedisStore.from_url(
            settings.redis_url,
            cluster=settings.redis_cluster,
            key_prefix=settings.key_prefix,
            retention_s=settings.retention_s,
            windows=settings.windows,
        )
    return LocalStore(multiprocess_dir, windows=settings.windows)


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        value = importlib.import_module("flagmetrics.stores.redis").RedisStore
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flagmetrics.stores' has no attribute {name!r}")
