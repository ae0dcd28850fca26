"""Fleet stores: the state every worker and host shares (unique users, error counts)."""

from __future__ import annotations

from flagmetrics.config import Settings
from flagmetrics.stores.base import Batch, FlagDelta, FlagStats, Pin, Snapshot, Store
from flagmetrics.stores.local import LocalStore
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
    "default_store",
]


def default_store(settings: Settings, multiprocess_dir: str | None) -> Store:
    """The store used when none is given: Redis when `redis_url` is set, else local to this host."""
    if settings.redis_url:
        return RedisStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    return LocalStore(multiprocess_dir)
