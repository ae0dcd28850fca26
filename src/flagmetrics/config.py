"""Internal: settings shared by the library, the gunicorn hooks and the command line, read from the environment."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote

from flagmetrics.exceptions import ConfigurationError
from flagmetrics.windows import DEFAULT_WINDOWS, parse_windows

__all__ = [
    "DEFAULT_SPOOL_MAX_BYTES",
    "SENTINEL_PORT",
    "SentinelSpec",
    "Settings",
    "metric_prefix",
    "parse_sentinel",
    "redact_url",
]

DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
"""Default bound of a spool directory: 256 MiB."""

SENTINEL_PORT = 26379
"""The port of a sentinel named without one."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of flagmetrics; each field has an environment variable `FLAGMETRICS_<FIELD>`."""

    redis_url: str | None = None
    """Redis URL (`redis://`, `rediss://` or `unix://`); set it to share fleet state across hosts."""

    redis_cluster: bool = False
    """`redis_url` names a node of a Redis Cluster: use redis-py's cluster client."""

    redis_sentinel: str | None = None
    """The Redis Sentinels of the master holding the fleet state, instead of `redis_url`: `host:port,host:port`
    (IPv6 in brackets, `[::1]:26379`; port 26379 when left out), or the URL form
    `redis://[[user]:password@]host1:26379,host2:26379[/db]` (`rediss://` for TLS) whose credentials,
    database and TLS are the master's."""

    redis_sentinel_master: str = "mymaster"
    """The master's service name, as in the sentinels' `sentinel monitor <name> ...`."""

    redis_sentinel_password: str | None = field(default=None, repr=False)
    """The sentinels' own password (their `requirepass`), when they have one; the master's goes in `redis_sentinel`."""

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
        for setting in fields(cls):
            raw = env.get(f"FLAGMETRICS_{setting.name.upper()}")
            if raw is None or raw == "":
                continue
            values[setting.name] = _parse(setting.name, raw, setting.type)
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
        self._check_sentinel()
        if self.redis_cluster and not self.redis_url:
            raise ConfigurationError(
                "`redis_cluster` needs `redis_url` (FLAGMETRICS_REDIS_URL) naming a node of the cluster"
            )
        parse_windows(self.windows, setting="FLAGMETRICS_WINDOWS")
        retention = self.retention_s
        if retention is not None and (isinstance(retention, bool) or not isinstance(retention, int) or retention < 1):
            raise ConfigurationError(f"`retention_s` must be a positive whole number of seconds, got {retention!r}")

    def _check_sentinel(self) -> None:
        """Raise `ConfigurationError` for Sentinel settings that do not parse or name a second store."""
        if self.redis_sentinel is not None:  # "" as well: an empty setting is a mistake, not "no sentinels"
            if not isinstance(self.redis_sentinel, str):
                raise ConfigurationError(
                    f"`redis_sentinel` must be a string like 'host1:26379,host2:26379', got {self.redis_sentinel!r}"
                )
            parse_sentinel(self.redis_sentinel, setting="redis_sentinel")
            if self.redis_url:
                raise ConfigurationError(
                    "`redis_sentinel` and `redis_url` name two stores: drop `redis_url` (FLAGMETRICS_REDIS_URL) to "
                    "reach the master through its sentinels, or `redis_sentinel` (FLAGMETRICS_REDIS_SENTINEL)"
                )
            if self.redis_cluster:
                raise ConfigurationError(
                    "`redis_sentinel` and `redis_cluster` do not go together (a Redis Cluster fails over by "
                    "itself, without sentinels): drop `redis_cluster` (FLAGMETRICS_REDIS_CLUSTER)"
                )
        master = self.redis_sentinel_master
        if not isinstance(master, str) or not master or any(c.isspace() for c in master):
            raise ConfigurationError(
                "`redis_sentinel_master` must be the master's service name in the sentinels' configuration "
                f"(`sentinel monitor <name> ...`), got {master!r}"
            )
        password = self.redis_sentinel_password
        if password is not None and not isinstance(password, str):
            raise ConfigurationError("`redis_sentinel_password` must be a string")
        if password and self.redis_sentinel is None:
            raise ConfigurationError(
                "`redis_sentinel_password` needs `redis_sentinel` (FLAGMETRICS_REDIS_SENTINEL) naming the sentinels"
            )

    @property
    def uses_redis(self) -> bool:
        """Whether the fleet state is in Redis: `redis_url` or `redis_sentinel` is set."""
        return bool(self.redis_url or self.redis_sentinel)

    def with_(self, **changes: Any) -> Settings:
        """Return a copy with the fields given changed, validated."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        """Every field, with secrets shown as `***` and passwords inside URLs hidden: safe to log."""
        shown = []
        for item in fields(self):
            if not item.repr:
                continue
            value = getattr(self, item.name)
            if item.name in _SECRETS and value:
                value = "***"
            elif item.name in ("redis_url", "redis_sentinel") and isinstance(value, str):
                value = redact_url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"


_SECRETS = frozenset({"hash_key", "metrics_token"})
"""Fields whose values `Settings.__repr__` never shows."""


def metric_prefix(prefix: str, *, argument: str = "prefix") -> str:
    """The metric name prefix for `prefix` (`"myapp"` gives `"myapp_"`, `""` gives `""`).

    Raises `ConfigurationError` naming `argument` when `prefix` is not letters, digits and underscores.
    """
    if not isinstance(prefix, str) or (prefix and not prefix.replace("_", "a").isalnum()):
        raise ConfigurationError(f"`{argument}` must be letters, digits and underscores, got {prefix!r}")
    return f"{prefix}_" if prefix else ""


def redact_url(url: str) -> str:
    """Return a Redis URL or `redis_sentinel` setting with its passwords (the user part's, a `password=`
    query's) shown as `***`.

    Everything between the user name and the last `@` counts as the password, so that one with an
    unencoded `/`, `?` or `#` is hidden too, and a URL that does not parse hides it as well.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    auth, at, tail = rest.rpartition("@")
    if at and ":" in auth:
        auth = auth.partition(":")[0] + ":***"
    head, question, query = tail.partition("?")
    query = "&".join(
        "password=***" if item.partition("=")[0].lower() == "password" else item for item in query.split("&")
    )
    return f"{scheme}{sep}{auth}{at}{head}{question}{query}"


@dataclass(frozen=True, slots=True)
class SentinelSpec:
    """The sentinels a setting names, and from its URL form the master's credentials, database and TLS."""

    addresses: tuple[tuple[str, int], ...]
    """Each sentinel's host (an IPv6 address without its brackets) and port."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    ssl: bool = False
    query: str = ""
    """The URL's query: further options of the master's connections, read as redis-py reads a URL's."""
    url: bool = False
    """Whether the setting was in the URL form."""


def parse_sentinel(text: str, *, setting: str = "redis_sentinel") -> SentinelSpec:
    """Read `host:port,host:port` or `redis://[[user]:password@]host1:port1,host2:port2[/db]` (`rediss://`: TLS).

    IPv6 addresses go in brackets (`[::1]:26379`); a sentinel named without a port is on 26379. Raises
    `ConfigurationError` naming `setting`, never showing a password.
    """
    shown = redact_url(text)
    hosts, spec = text.strip(), SentinelSpec(())
    scheme, sep, rest = hosts.partition("://")
    if sep:
        if scheme.lower() not in ("redis", "rediss"):
            raise ConfigurationError(
                f"`{setting}` must be sentinels as host:port,host:port or a redis:// or rediss:// URL, got {shown!r}"
            )
        if "#" in rest:
            raise ConfigurationError(f"`{setting}` holds a '#': percent-encode it as %23 (in a password, say)")
        end = min((rest.find(c) for c in "/?" if c in rest), default=len(rest))
        netloc, path = rest[:end], rest[end:]
        path, _, query = path.partition("?")
        auth, at, hosts = netloc.rpartition("@")
        username, colon, password = auth.partition(":")
        database = path.strip("/")
        if database and not database.isdigit():
            raise ConfigurationError(f"`{setting}` names a bad database, a whole number as in /0, in {shown!r}")
        spec = SentinelSpec(
            (),
            username=unquote(username) if at and username else None,
            password=unquote(password) if colon and password else None,
            db=int(database or 0),
            ssl=scheme.lower() == "rediss",
            query=query,
            url=True,
        )
    if not hosts.strip():
        raise ConfigurationError(f"`{setting}` names no sentinel: give them as host:port,host:port, got {shown!r}")
    addresses = [_sentinel_address(item.strip(), setting, shown, echo=not spec.url) for item in hosts.split(",")]
    return replace(spec, addresses=tuple(addresses))


def _sentinel_address(item: str, setting: str, shown: str, *, echo: bool) -> tuple[str, int]:
    """One sentinel's `host:port`, `host`, `[ipv6]:port` or `[ipv6]` as (host, port).

    With `echo` false (the URL form, where a badly encoded password may end up in the hosts) the
    message names the redacted setting, not the address.
    """
    named = f" {item!r}" if echo else ""
    bad = ConfigurationError(
        f"`{setting}` names a bad sentinel address{named} (host:port, IPv6 in brackets: [::1]:26379) in {shown!r}"
    )
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise bad
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        port = rest[1:] if rest else str(SENTINEL_PORT)
    else:
        host, colon, port = item.partition(":")
        port = port if colon else str(SENTINEL_PORT)
        if ":" in port:  # an IPv6 address without its brackets
            raise bad
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise bad
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"`{setting}` names a bad port{f' {port!r} for {host!r}' if echo else ''} (1-65535) in {shown!r}"
        )
    return host, int(port)


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
