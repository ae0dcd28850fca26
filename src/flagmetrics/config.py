"""Internal: settings shared by the library, the gunicorn hooks and the command line, read from the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from flagmetrics.exceptions import ConfigurationError
from flagmetrics.windows import DEFAULT_WINDOWS, parse_windows

__all__ = ["DEFAULT_SPOOL_MAX_BYTES", "Settings", "metric_prefix", "redact_url"]

DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
"""Default bound of a spool directory: 256 MiB."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of flagmetrics; each field has an environment variable `FLAGMETRICS_<FIELD>`."""

    redis_url: str | None = None
    """Redis URL (`redis://`, `rediss://` or `unix://`); set it to share fleet state across hosts."""

    redis_cluster: bool = False
    """`redis_url` names a node of a Redis Cluster: use redis-py's cluster client."""

    key_prefix: str = "flagmetrics"
    """Prefix of every Redis key (the local store keeps its files in the multiprocess directory)."""

    retention_s: int | None = None
    """Forget a flag's fleet state in Redis when no worker has written to it for this many seconds; unset: keep."""

    flush_interval_s: float = 1.0
    """Seconds between two flushes of a worker's buffer to the store."""

    buffer_capacity: int = 100_000
    """Most distinct (flag, user) pairs a worker holds between flushes; more are dropped and counted."""

    scrape_timeout_s: float = 0.5
    """Seconds a scrape waits for the store before leaving the fleet gauges out."""

    max_flags: int = 1_000
    """Most distinct flag keys per worker; further flags are counted under `__overflow__`."""

    max_variants_per_flag: int = 100
    """Most distinct variants per flag per worker; further variants are counted under `__overflow__`."""

    hash_key: str = ""
    """Secret mixed into the user-id digests; set the same value on every host to make them unguessable."""

    metrics_token: str | None = None
    """Bearer token the metrics route (and the metrics port) requires."""

    metrics_port: int | None = None
    """Also serve the metrics on this port from the gunicorn master (see `flagmetrics.gunicorn`)."""

    metrics_addr: str = "127.0.0.1"
    """Address the metrics port binds to."""

    fleet_gauges: bool = True
    """Put the fleet gauges in every scrape; turn off where `flagmetrics serve` exports them once."""

    windows: str = DEFAULT_WINDOWS
    """Trailing windows of the recent-users gauges: durations with a unit s, m, h or d, at least 10s,
    separated by commas; `off` for none."""

    spool_dir: str | None = None
    """Directory of the batches a worker could not deliver, for any worker of the host to deliver later;
    unset: `spool` in the multiprocess directory when you set one, else `/var/tmp/flagmetrics-<uid>/spool`
    (a restart during an outage delivers them); `off` to count them as dropped instead."""

    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    """Most bytes in the spool directory; past it the oldest batches lose their user ids (counted in
    `flagmetrics_dropped_events_total`), never their evaluation and error counts."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `FLAGMETRICS_*` variables, then apply explicit overrides that are not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(f"FLAGMETRICS_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, raw, field.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        """Raise `ConfigurationError` naming the first invalid setting."""
        if not isinstance(self.fleet_gauges, bool):
            raise ConfigurationError(f"`fleet_gauges` must be True or False, got {self.fleet_gauges!r}")
        for name in ("flush_interval_s", "scrape_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"`{name}` must be a number of seconds, got {value!r}")
        if not (math.isfinite(self.flush_interval_s) and 0.01 <= self.flush_interval_s <= 3600):
            raise ConfigurationError(
                f"`flush_interval_s` must be between 0.01 and 3600 seconds, got {self.flush_interval_s!r}"
            )
        if not (math.isfinite(self.scrape_timeout_s) and 0.01 <= self.scrape_timeout_s <= 60):
            raise ConfigurationError(
                f"`scrape_timeout_s` must be between 0.01 and 60 seconds, got {self.scrape_timeout_s!r}"
            )
        port = self.metrics_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigurationError(f"`metrics_port` must be a TCP port (1-65535), got {self.metrics_port}")
        if self.spool_dir is not None and (not isinstance(self.spool_dir, str) or not self.spool_dir.strip()):
            raise ConfigurationError(f"`spool_dir` must be a directory path or `off`, got {self.spool_dir!r}")
        for name in ("buffer_capacity", "max_flags", "max_variants_per_flag", "spool_max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"`{name}` must be a positive whole number, got {value!r}")
        if not self.key_prefix or any(c.isspace() or c in "{}" for c in self.key_prefix):
            raise ConfigurationError(
                f"`key_prefix` must be a non-empty string without spaces or braces, got {self.key_prefix!r}"
            )
        if not isinstance(self.redis_cluster, bool):
            raise ConfigurationError(f"`redis_cluster` must be True or False, got {self.redis_cluster!r}")
        if self.redis_cluster and not self.redis_url:
            raise ConfigurationError(
                "`redis_cluster` needs `redis_url` (FLAGMETRICS_REDIS_URL) naming a node of the cluster"
            )
        parse_windows(self.windows, setting="FLAGMETRICS_WINDOWS")
        retention = self.retention_s
        if retention is not None and (isinstance(retention, bool) or not isinstance(retention, int) or retention < 1):
            raise ConfigurationError(f"`retention_s` must be a positive whole number of seconds, got {retention!r}")

    def with_(self, **changes: Any) -> Settings:
        """Return a copy with the fields given changed, validated."""
        return replace(self, **changes)


def metric_prefix(prefix: str, *, argument: str = "prefix") -> str:
    """The metric name prefix for `prefix` (`"myapp"` gives `"myapp_"`, `""` gives `""`).

    Raises `ConfigurationError` naming `argument` when `prefix` is not letters, digits and underscores.
    """
    if not isinstance(prefix, str) or (prefix and not prefix.replace("_", "a").isalnum()):
        raise ConfigurationError(f"`{argument}` must be letters, digits and underscores, got {prefix!r}")
    return f"{prefix}_" if prefix else ""


def redact_url(url: str) -> str:
    """Return `url` with its password (in the user part or a `password=` query) shown as `***`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    except ValueError:
        return "<a URL that could not be parsed>"
    query = "&".join(
        "password=***" if item.partition("=")[0].lower() == "password" else item for item in parts.query.split("&")
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def _parse(name: str, raw: str, annotation: Any) -> Any:
    kind = str(annotation).removesuffix(" | None")
    if kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(
            f"environment variable `FLAGMETRICS_{name.upper()}` must be true or false (1 or 0), got {raw!r}"
        )
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw.replace("_", ""))
    except ValueError:
        raise ConfigurationError(
            f"environment variable `FLAGMETRICS_{name.upper()}` must be a {kind}, got {raw!r}"
        ) from None
    return raw
