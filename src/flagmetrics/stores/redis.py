"""Internal: `RedisStore`, the fleet state in Redis, Redis behind Sentinel or Redis Cluster, shared by the fleet.

Key layout (see `KeyLayout`): flags are spread over `GROUPS` groups by a hash of their key, and every
key of a group starts with the group's hash tag, `{<prefix>:<n>}`, so a group lives in one slot of a
cluster and one script can update it atomically, while the groups spread over the cluster's slots.
A flag key only ever follows the tag, so it cannot change the slot, and it is always the last part
of a key, after a fixed kind, so no two flags' keys (nor a flag's and a group's) can collide.

Per group: `{t}:flags`, a sorted set of the group's flags scored by their last write (Unix seconds);
`{t}:counts`, a hash with each flag's `total:<flag>`, `errors:<flag>`, `seen:<flag>` (the latest
evaluation, Unix seconds), `pin:<flag>` and `split:<flag>` (its expected split, JSON); `{t}:seq:<writer>`,
the last batch of that writer applied to the group; `{t}:wc`, the window figures, `<seconds>:<flag>`
(JSON, each computed once per bucket). Per flag: `{t}:u:<flag>`, the HyperLogLog of its users'
digests; per window of W seconds and bucket b, `{t}:wb:<W>:<b>:<flag>`, the HyperLogLog of the
users in that bucket, and `{t}:wv:<W>:<b>:<length>:<variant>:<flag>` of those served a variant
(expiring by themselves); `{t}:wvar:<flag>`, the variants it served, scored by when. The keys of
the windows are written and read by the scripts only.

A flush runs one script per group it touches; a scrape runs two per group (list the flags with the
group's counts, then count each flag's users). On a single node all of a round's scripts go in
one pipeline (one round trip); on a cluster they run concurrently, each routed by redis-py's
cluster client to its slot's master. Behind Sentinel the master is a single node that redis-py's
sentinel connection pool finds (and finds again after a failover) by asking the sentinels.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flagmetrics.config import SentinelSpec, parse_sentinel, redact_url
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.stores.base import DIGEST_SIZE, Batch, FlagDelta, FlagStats, Pin, Snapshot, WindowStats, joined_digests
from flagmetrics.windows import DEFAULT_WINDOWS, Window, parse_windows

__all__ = ["GROUPS", "KeyLayout", "RedisStore"]

GROUPS: Final = 16
"""Groups of flags, each with its own hash tag: a flush or a scrape runs at most this many scripts a round."""

_SLOTS: Final = 16384
_REMEMBERED_FLAGS: Final = 100_000  # flags whose group and keys a layout keeps computed

# Defines read_windows(at): the windows given in ARGV from index `at` (their number, then per window
# its seconds, bucket step and span in buckets), as {seconds as text, seconds, step, span}, and the
# index after them. Every script that touches the windows' keys starts with it.
_READ_WINDOWS_LUA = """
local function read_windows(at)
  local windows = {}
  for w = 1, tonumber(ARGV[at]) do
    local i = at + 1 + (w - 1) * 3
    windows[w] = {ARGV[i], tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}
  end
  return windows, at + 1 + #windows * 3
end
"""

# Applies one worker batch to one group unless this (writer, seq) was applied to the group before,
# so a retried flush after a lost reply never counts twice. Redis does not undo a script's writes
# when it fails half-way, so everything that can fail comes first: the type of the group's counts
# hash is checked, then the PFADDs run (a key that is not a HyperLogLog fails there, and adding
# members again on a retry is harmless), and only then are counts added. Each trailing window gets
# the flag's users, and each variant's, in the bucket of the batch's time (keys expiring by
# themselves once no window needs them). With a retention, flags nobody wrote to for that long leave
# the group's index, counts and cached window figures (their HyperLogLogs expire).
# KEYS: seq key, flags sorted set, counts hash, window cache hash, then per flag its HyperLogLog.
# ARGV: seq, seq ttl (s), retention (s, 0: keep), now (Unix s), group tag, the windows (see
#       `_READ_WINDOWS_LUA`), then number of flags, then per flag: flag key, total, errors,
#       seen (Unix s, 0: none), pin (JSON or ''), expected split (JSON or ''), the flag's phase in each
#       window (',' between), its members (the 8-byte digests end to end, in one argument: packing
#       thousands of arguments cost the worker more than the rest of the flush), variant count, then
#       per variant: variant, its members (one argument as well).
_APPLY_LUA = (
    _READ_WINDOWS_LUA
    + """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if seq <= last then return 0 end
local retention, now, tag = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local kind = redis.call('TYPE', KEYS[3]).ok
if kind ~= 'none' and kind ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[3] .. ' holds a ' .. kind .. ', not a hash')
end
-- The 8-byte digests of one argument, in chunks of at most 512 (unpack's stack).
local function digests(blob)
  local chunks, chunk = {}, {}
  for at = 1, #blob, 8 do
    chunk[#chunk + 1] = string.sub(blob, at, at + 7)
    if #chunk == 512 then
      chunks[#chunks + 1] = chunk
      chunk = {}
    end
  end
  if #chunk > 0 then chunks[#chunks + 1] = chunk end
  return chunks
end
local function pfadd(key, chunks)
  for _, chunk in ipairs(chunks) do redis.call('PFADD', key, unpack(chunk)) end
end
local windows, i = read_windows(6)
local longest = 0
for _, w in ipairs(windows) do longest = math.max(longest, w[2] + w[3]) end
local nflags = tonumber(ARGV[i])
i = i + 1
local flags = {}
for f = 1, nflags do
  local flag, seen, members = ARGV[i], tonumber(ARGV[i + 3]), digests(ARGV[i + 7])
  local phases = {}
  for phase in string.gmatch(ARGV[i + 6], '%d+') do phases[#phases + 1] = tonumber(phase) end
  flags[f] = i
  pfadd(KEYS[4 + f], members)
  local nvariants = tonumber(ARGV[i + 8])
  local at = i + 9
  -- The bucket of each window the batch's time falls in, and when no figure needs it any more.
  local buckets, expires = {}, {}
  for x, w in ipairs(windows) do
    buckets[x] = math.floor((seen + phases[x]) / w[3])
    expires[x] = (buckets[x] + 1) * w[3] - phases[x] + w[2] + w[3]
  end
  local function add(kind, suffix, chunks)
    for x, w in ipairs(windows) do
      if #chunks > 0 and seen > 0 and expires[x] > now then
        local key = tag .. kind .. w[1] .. ':' .. buckets[x] .. ':' .. suffix
        pfadd(key, chunks)
        redis.call('EXPIREAT', key, expires[x])
      end
    end
  end
  add(':wb:', flag, members)
  for v = 1, nvariants do
    local variant, served = ARGV[at], digests(ARGV[at + 1])
    add(':wv:', #variant .. ':' .. variant .. ':' .. flag, served)
    if #served > 0 and seen > 0 and longest > 0 then
      local index = tag .. ':wvar:' .. flag
      redis.call('ZADD', index, 'GT', seen, variant)
      redis.call('EXPIREAT', index, math.floor(seen) + longest + 1)
    end
    at = at + 2
  end
  i = at
end
for f = 1, nflags do
  i = flags[f]
  local flag, total, errors = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local seen, pin = tonumber(ARGV[i + 3]), ARGV[i + 4]
  if total > 0 then redis.call('HINCRBY', KEYS[3], 'total:' .. flag, total) end
  if errors > 0 then redis.call('HINCRBY', KEYS[3], 'errors:' .. flag, errors) end
  if seen > tonumber(redis.call('HGET', KEYS[3], 'seen:' .. flag) or '0') then
    redis.call('HSET', KEYS[3], 'seen:' .. flag, ARGV[i + 3])
  end
  if pin ~= '' then redis.call('HSET', KEYS[3], 'pin:' .. flag, pin) end
  if ARGV[i + 5] ~= '' then redis.call('HSET', KEYS[3], 'split:' .. flag, ARGV[i + 5]) end
  redis.call('ZADD', KEYS[2], now, flag)
  if retention > 0 then redis.call('EXPIRE', KEYS[4 + f], retention) end
end
if retention > 0 then
  local cutoff = '(' .. (now - retention)
  for _, flag in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)) do
    local fields = {'total:', 'errors:', 'seen:', 'pin:', 'split:'}
    for _, field in ipairs(fields) do redis.call('HDEL', KEYS[3], field .. flag) end
    for _, w in ipairs(windows) do redis.call('HDEL', KEYS[4], w[1] .. ':' .. flag) end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  redis.call('EXPIRE', KEYS[2], retention)
  redis.call('EXPIRE', KEYS[3], retention)
  if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('EXPIRE', KEYS[4], retention) end
end
redis.call('SET', KEYS[1], seq, 'EX', tonumber(ARGV[2]))
return 1
"""
)

# Lists a group's flags written since `since` (ARGV[1], Unix s; 0: all), with every field of the
# group's counts hash and of its window cache, read at one moment: {flags, {field, value...}, {field, value...}}.
# KEYS: the group's flags sorted set, its counts hash, its window cache.
_LIST_LUA = """
return {
  redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf'), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])
}
"""

# Counts the users of each flag: the PFCOUNT of its HyperLogLog, then for each window named stale
# the union of its buckets, in all and per variant served, as JSON `[bucket, users, [variant, users,
# ...]]`, kept in the group's window cache. A window's figure is computed once per bucket: the
# first scrape after a bucket begins computes it; a scrape that finds it computed meanwhile (by
# another worker or host) takes it as it is.
# KEYS: the window cache hash, then the flags' HyperLogLogs.
# ARGV: group tag, now (Unix s), the windows (see `_READ_WINDOWS_LUA`), then per flag: flag key,
#       and '' when no window's figure is stale, else `seen|stale|phases`: its latest
#       evaluation (Unix s), the numbers of its stale windows (1-based, ',' between), its phase in
#       each window (',' between).
_COUNT_LUA = (
    _READ_WINDOWS_LUA
    + """
local tag, now = ARGV[1], tonumber(ARGV[2])
local windows, i = read_windows(3)
local function union(prefix, flag, w, current)
  local keys = {}
  for b = current - w[4], current do keys[#keys + 1] = prefix .. b .. ':' .. flag end
  return redis.call('PFCOUNT', unpack(keys))
end
local counts = {}
for f = 2, #KEYS do
  local flag, spec = ARGV[i], ARGV[i + 1]
  i = i + 2
  local entry = {redis.call('PFCOUNT', KEYS[f])}
  local seen, stale, phased = string.match(spec, '^([^|]*)|([^|]*)|(.*)$')
  seen = tonumber(seen or '0') or 0
  local phases = {}
  for phase in string.gmatch(phased or '', '%d+') do phases[#phases + 1] = tonumber(phase) end
  for n in string.gmatch(stale or '', '%d+') do
    local w = windows[tonumber(n)]
    local current = math.floor((now + phases[tonumber(n)]) / w[3])
    local field = w[1] .. ':' .. flag
    local cached = redis.call('HGET', KEYS[1], field)
    if cached and tonumber(string.match(cached, '^%[(%-?%d+),')) == current then
      entry[#entry + 1] = cached
    else
      local users, variants = 0, {}
      if seen >= now - w[2] - w[3] then
        users = union(tag .. ':wb:' .. w[1] .. ':', flag, w, current)
        local index = tag .. ':wvar:' .. flag
        for _, variant in ipairs(redis.call('ZRANGEBYSCORE', index, now - w[2] - w[3], '+inf')) do
          local served = #variant .. ':' .. variant .. ':' .. flag
          variants[#variants + 1] = variant
          variants[#variants + 1] = union(tag .. ':wv:' .. w[1] .. ':', served, w, current)
        end
      end
      local text = cjson.encode({current, users, variants})
      redis.call('HSET', KEYS[1], field, text)
      entry[#entry + 1] = text
    end
  end
  counts[f - 1] = entry
end
return counts
"""
)

# Forgets the flags named: their fields in the group's counts hash and window cache, their
# HyperLogLogs, their variants' index and the buckets of the windows given.
# KEYS: the group's flags sorted set, its counts hash, its window cache, then the flags' HyperLogLogs.
# ARGV: group tag, now (Unix s), the windows (see `_READ_WINDOWS_LUA`), then the flag keys.
_FORGET_LUA = (
    _READ_WINDOWS_LUA
    + """
local tag, now = ARGV[1], tonumber(ARGV[2])
local windows, i = read_windows(3)
local cached = redis.call('HKEYS', KEYS[3])
for a = i, #ARGV do
  local flag = ARGV[a]
  redis.call('HDEL', KEYS[2], 'total:' .. flag, 'errors:' .. flag, 'seen:' .. flag, 'pin:' .. flag)
  for _, field in ipairs(cached) do
    if string.match(field, '^%d+:(.*)$') == flag then redis.call('HDEL', KEYS[3], field) end
  end
  local index = tag .. ':wvar:' .. flag
  local variants = redis.call('ZRANGE', index, 0, -1)
  for _, w in ipairs(windows) do
    local current = math.floor(now / w[3])
    for b = current - w[4], current + 1 do  -- a flag's phase puts its buckets up to one later
      redis.call('DEL', tag .. ':wb:' .. w[1] .. ':' .. b .. ':' .. flag)
      for _, variant in ipairs(variants) do
        redis.call('DEL', tag .. ':wv:' .. w[1] .. ':' .. b .. ':' .. #variant .. ':' .. variant .. ':' .. flag)
      end
    end
  end
  redis.call('DEL', index)
  redis.call('ZREM', KEYS[1], flag)
end
if #KEYS > 3 then redis.call('DEL', unpack(KEYS, 4)) end
return #ARGV - i + 1
"""
)

# Moves one flag from the layout of flagmetrics 0.1 (single node only: three hashes and a
# HyperLogLog per flag, outside any hash tag) into its group, adding to what is there already.
# KEYS: old totals, old errors, old pins, old HyperLogLog, flags sorted set, counts hash, flag HyperLogLog.
# ARGV: flag key, now (Unix s).
_MIGRATE_LUA = """
local flag = ARGV[1]
local total = redis.call('HGET', KEYS[1], flag)
local pin = redis.call('HGET', KEYS[3], flag)
if not total and not pin then return 0 end
if total then redis.call('HINCRBY', KEYS[6], 'total:' .. flag, total) end
local errors = redis.call('HGET', KEYS[2], flag)
if errors then redis.call('HINCRBY', KEYS[6], 'errors:' .. flag, errors) end
if pin and redis.call('HEXISTS', KEYS[6], 'pin:' .. flag) == 0 then redis.call('HSET', KEYS[6], 'pin:' .. flag, pin) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PFMERGE', KEYS[7], KEYS[7], KEYS[4])
  redis.call('DEL', KEYS[4])
end
redis.call('ZADD', KEYS[5], 'NX', ARGV[2], flag)
redis.call('HDEL', KEYS[1], flag)
redis.call('HDEL', KEYS[2], flag)
redis.call('HDEL', KEYS[3], flag)
return 1
"""

_SCHEMES: Final = ("redis", "rediss", "unix")
_HEALTH_CHECK_INTERVAL_S: Final = 30  # a connection idle for longer is checked with a PING before use
_MASTER_CHECK_INTERVAL_S: Final = 1.0  # behind Sentinel, how often a store asks the sentinels where the master is
_LAYOUT_CHECK_INTERVAL_S: Final = 60.0  # how often a store looks for keys of the old layout
# Errors of an outage or a failover, after redis-py's own retries: the batch is kept and sent again.
_TRANSIENT: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    MasterNotFoundError,  # no sentinel names a master that is up: Sentinel is failing over (a ConnectionError)
    ReadOnlyError,  # a demoted master, or a node that is a replica now
    ClusterDownError,
    TryAgainError,
    RedisClusterException,  # no node reachable, slots not covered: the cluster is failing over or down
)

# Replies Redis refuses a write with until a failover or a replica's return: the batch is kept too.
# NOREPLICAS: the master has fewer replicas in sync than its `min-replicas-to-write` (as a master
# whose replica was just promoted has); redis-py gives it no class of its own.
_TRANSIENT_REPLIES: Final = ("NOREPLICAS",)

_Call = tuple[AsyncScript, Sequence[str | bytes], Sequence[Any]]


def _transient(error: object) -> bool:
    """Whether an error or reply is an outage or a failover rather than Redis refusing the request."""
    if isinstance(error, _TRANSIENT):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_TRANSIENT_REPLIES)


class KeyLayout:
    """Where each piece of a flag's fleet state lives: the group and hash tag of a flag, and its keys."""

    __slots__ = ("_groups", "_keys", "prefix", "tags")

    def __init__(self, prefix: str) -> None:
        """Lay keys out under `prefix`, which must not hold `{` or `}` (they would move the hash tag)."""
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(f"`key_prefix` must be non-empty and hold no braces, got {prefix!r}")
        self.prefix = prefix
        self.tags: tuple[str, ...] = tuple(_spread_tag(prefix, group) for group in range(GROUPS))
        """The hash tag of each group, `{<prefix>:<n>}`, chosen so the groups fall in evenly spaced slots."""
        self._groups: dict[str, int] = {}
        self._keys: dict[str, bytes] = {}

    def group(self, flag_key: str) -> int:
        """The group of a flag: a hash of its key, the same in every process and release."""
        group = self._groups.get(flag_key)
        if group is None:
            digest = hashlib.blake2b(flag_key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            group = int.from_bytes(digest, "little") % GROUPS
            if len(self._groups) < _REMEMBERED_FLAGS:
                self._groups[flag_key] = group
        return group

    def flags(self, group: int) -> str:
        """The sorted set of a group's flags, scored by their last write."""
        return f"{self.tags[group]}:flags"

    def seq(self, group: int, writer: str) -> str:
        """The last batch of `writer` applied to a group."""
        return f"{self.tags[group]}:seq:{writer}"

    def counts(self, group: int) -> str:
        """The hash of a group's counts: `total:<flag>`, `errors:<flag>`, `seen:<flag>`, `pin:<flag>`."""
        return f"{self.tags[group]}:counts"

    def window_cache(self, group: int) -> str:
        """The hash of a group's window figures, `<seconds>:<flag>`, each computed once per bucket."""
        return f"{self.tags[group]}:wc"

    def users(self, flag_key: str) -> str:
        """The HyperLogLog of a flag's users."""
        return f"{self.tags[self.group(flag_key)]}:u:{flag_key}"

    def users_encoded(self, flag_key: str) -> bytes:
        """The HyperLogLog key of a flag, encoded (remembered: a scrape asks for every flag's)."""
        key = self._keys.get(flag_key)
        if key is None:
            key = self.users(flag_key).encode()
            if len(self._keys) < _REMEMBERED_FLAGS:
                self._keys[flag_key] = key
        return key


def _spread_tag(prefix: str, group: int) -> str:
    """The first tag `{prefix:n}` whose slot falls in the group's share of the 16,384 slots."""
    low, high = group * _SLOTS // GROUPS, (group + 1) * _SLOTS // GROUPS
    n = 0
    while not low <= key_slot(f"{prefix}:{n}".encode()) < high:
        n += 1
    return f"{{{prefix}:{n}}}"


def _joined(members: Collection[bytes], flag_key: str) -> bytes:
    """User digests end to end, for the flush script to split; refused unless each is `DIGEST_SIZE` bytes."""
    joined = joined_digests(members)
    if joined is None:
        raise StoreError(
            f"user digests of {flag_key!r} must be {DIGEST_SIZE} bytes each (flagmetrics.buffer.digest_users)",
            transient=False,
        )
    return joined


class RedisStore:
    """Fleet state in Redis or Redis Cluster: every key under `key_prefix`, user ids only as digests."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        key_prefix: str = "flagmetrics",
        seq_ttl_s: int = 86_400,
        retention_s: int | None = None,
        windows: str = DEFAULT_WINDOWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Wrap a redis-py asyncio client (`Redis` or `RedisCluster`) created with `decode_responses=False`.

        Args:
            seq_ttl_s: How long a writer's last batch number is kept, in seconds: a batch delivered
                again later than that after its first delivery would be applied twice.
            retention_s: Forget a flag's state when no worker has written to it for that long, in
                seconds; None keeps it until a reset.
            windows: The trailing windows of the recent-users figures (`1h,24h,7d`; `off` for none).
            clock: The time (Unix seconds) a batch is written and a scrape reads at.
        """
        if retention_s is not None and (isinstance(retention_s, bool) or retention_s < 1):
            raise ConfigurationError(f"`retention_s` must be a positive number of seconds, got {retention_s!r}")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._layout = KeyLayout(key_prefix)
        self._seq_ttl_s = seq_ttl_s
        self._retention_s = retention_s
        self._windows = parse_windows(windows)
        self._clock = clock
        self._phase_cache: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._window_args: list[Any] = [len(self._windows)]
        for window in self._windows:
            self._window_args += (window.seconds, window.step, window.span)
        self._apply = client.register_script(_APPLY_LUA)
        self._list = client.register_script(_LIST_LUA)
        self._count = client.register_script(_COUNT_LUA)
        self._forget = client.register_script(_FORGET_LUA)
        self._migrate = client.register_script(_MIGRATE_LUA)
        self._next_layout_check = 0.0
        self._scripts_loaded = False
        pool = client.connection_pool if isinstance(client, aioredis.Redis) else None
        self._sentinel_pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._next_master_check = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        key_prefix: str = "flagmetrics",
        retention_s: int | None = None,
        windows: str = DEFAULT_WINDOWS,
        timeout_s: float = 1.0,
        retries: int = 2,
        **client_kwargs: Any,
    ) -> RedisStore:
        """Connect lazily to `url` (`redis://`, `rediss://` for TLS, `unix://`), AUTH taken from the URL.

        Args:
            cluster: `url` names any node of a Redis Cluster, or several separated by commas
                (`redis://:password@host1:6379,host2:6379`); redis-py's cluster client finds the
                others. Name more than one, so that a process starting while one is down still
                finds the cluster.
            timeout_s: Socket connect and read timeout in seconds.
            retries: Retries of a failed command, with redis-py's exponential backoff.
            client_kwargs: Passed on to `redis.asyncio.Redis.from_url` (or `RedisCluster.from_url`).
        """
        url, others = _startup_nodes(url, cluster)
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES or (cluster and parts.scheme == "unix"):
            schemes = "redis:// or rediss://" if cluster else "redis://, rediss:// or unix://"
            raise ConfigurationError(f"`url` must start with {schemes}, got {redact_url(url)!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"`url` names no host: {redact_url(url)!r}")
        options = _client_options(timeout_s, retries)
        if not cluster:
            options["health_check_interval"] = _HEALTH_CHECK_INTERVAL_S
        options.update(client_kwargs)
        options["decode_responses"] = False
        client: aioredis.Redis | RedisCluster
        try:
            if cluster:
                client = RedisCluster.from_url(url, startup_nodes=others or None, **options)
            else:
                client = aioredis.Redis.from_url(url, **options)
        except (ValueError, TypeError, RedisClusterException) as exc:
            raise ConfigurationError(f"`url` {redact_url(url)!r} is not a valid Redis URL: {exc}") from exc
        return cls(client, key_prefix=key_prefix, retention_s=retention_s, windows=windows)

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]] | str,
        service_name: str = "mymaster",
        *,
        key_prefix: str = "flagmetrics",
        retention_s: int | None = None,
        windows: str = DEFAULT_WINDOWS,
        timeout_s: float = 1.0,
        retries: int = 2,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        ssl: bool = False,
        sentinel_password: str | None = None,
        **client_kwargs: Any,
    ) -> RedisStore:
        """Connect lazily to the master the sentinels name for `service_name`, following it through failovers.

        redis-py's `Sentinel.master_for` gives the client: each new connection asks the sentinels where
        the master is, a connection to a master demoted by a failover is dropped, and the store asks
        the sentinels again once a second (see `_follow_master`), so the next attempt (a retry, or the
        next flush) goes to the new master.

        Args:
            sentinels: The sentinels as `(host, port)` pairs, or as a string: `host:port,host:port`
                (IPv6 in brackets, port 26379 when left out), or `redis://[[user]:password@]host1:26379,
                host2:26379[/db]` (`rediss://` for TLS) whose credentials, database, TLS and query options
                are the master's. Name every sentinel, so that a process starting while one is down
                still finds the master.
            service_name: The master's name in the sentinels' `sentinel monitor <name> ...`.
            timeout_s: Socket connect and read timeout in seconds, of the master and of each sentinel.
            retries: Retries of a failed command, with redis-py's exponential backoff; each one asks
                the sentinels for the master again.
            password: The master's password (AUTH); `username` for an ACL user.
            db: The master's database number.
            ssl: Connect to the master over TLS (options such as `ssl_ca_certs` go in `client_kwargs`).
            sentinel_password: The sentinels' own password (their `requirepass`), when they have one.
            client_kwargs: Passed on to `Sentinel.master_for`: options of the master's connections.
        """
        spec: SentinelSpec | None = None
        if isinstance(sentinels, str):
            spec = parse_sentinel(sentinels, setting="sentinels")
            addresses = list(spec.addresses)
        else:
            addresses = _addresses(sentinels)
        if not isinstance(service_name, str) or not service_name or any(c.isspace() for c in service_name):
            raise ConfigurationError(
                "`service_name` must be the master's name in the sentinels' configuration "
                f"(`sentinel monitor <name> ...`), got {service_name!r}"
            )
        if isinstance(db, bool) or not isinstance(db, int) or db < 0:
            raise ConfigurationError(f"`db` must be a database number (0 or more), got {db!r}")
        options = _client_options(timeout_s, retries)
        options["health_check_interval"] = _HEALTH_CHECK_INTERVAL_S
        options.update({"password": password, "username": username, "db": db, "ssl": ssl})
        if spec is not None and spec.url:
            given = [name for name, value in (("password", password), ("username", username)) if value is not None]
            given += ["db"] * (db != 0) + ["ssl"] * bool(ssl)
            if given:
                raise ConfigurationError(
                    f"`{given[0]}` given with a `sentinels` URL, which carries the master's credentials, database "
                    f"and TLS: give them in the URL or as arguments, not both ({redact_url(str(sentinels))!r})"
                )
            options.update({"db": spec.db, "ssl": spec.ssl})
            # As redis-py reads a URL: the query's options (its `db` over the path's), then the user part's credentials.
            options.update(_query_options(spec.query, str(sentinels)))
            options.update({k: v for k, v in (("username", spec.username), ("password", spec.password)) if v})
        options.update(client_kwargs)
        options["decode_responses"] = False
        # The sentinels take the master's socket timeouts (as redis-py's `Sentinel` does by default) and
        # their own password; redis-py gives them no retries, as it moves on to the next sentinel instead.
        sentinel_kwargs: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)
        client = sentinel.master_for(service_name, **options)
        return cls(client, key_prefix=key_prefix, retention_s=retention_s, windows=windows)

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        """The redis-py client."""
        return self._client

    @property
    def spool_target(self) -> str:
        """Names the state this store writes, alike in every process configured for it: a worker
        delivers spooled batches only to the store they were written for."""
        if isinstance(self._client, RedisCluster):
            where = "cluster:" + ",".join(sorted(self._client.nodes_manager.startup_nodes))
        elif (pool := self._sentinel_pool) is not None:
            sentinels = ",".join(_sentinel_addresses(pool))
            where = f"sentinel:{pool.service_name}@{sentinels}/{pool.connection_kwargs.get('db', 0)}"
        else:
            kwargs = self._client.connection_pool.connection_kwargs
            address = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            where = f"redis:{address}/{kwargs.get('db', 0)}"
        return f"{where}:{self._layout.prefix}"

    @property
    def key_prefix(self) -> str:
        """The prefix of every key this store writes."""
        return self._layout.prefix

    @property
    def layout(self) -> KeyLayout:
        """Where each key lives."""
        return self._layout

    @property
    def windows(self) -> tuple[Window, ...]:
        """The trailing windows this store keeps figures for."""
        return self._windows

    def _phases(self, flag_key: str) -> tuple[str, tuple[int, ...]]:
        """A flag's phase in each window, as the scripts take them (`,` between) and as numbers."""
        phases = self._phase_cache.get(flag_key)
        if phases is None:
            numbers = tuple(window.phase(flag_key) for window in self._windows)
            phases = (",".join(map(str, numbers)), numbers)
            if len(self._phase_cache) < _REMEMBERED_FLAGS:
                self._phase_cache[flag_key] = phases
        return phases

    @property
    def cluster(self) -> bool:
        """Whether the client is a Redis Cluster client."""
        return self._cluster

    async def push(self, batch: Batch) -> None:
        """Apply `batch`, one script per group it touches, exactly once per `(writer, seq)` and group."""
        await self._upgrade_layout()
        now = self._clock()
        entries: dict[int, list[tuple[str, FlagDelta | None, Pin | None]]] = {}
        for flag_key in {*batch.flags, *batch.pins, *batch.splits}:
            entry = (flag_key, batch.flags.get(flag_key), batch.pins.get(flag_key))
            entries.setdefault(self._layout.group(flag_key), []).append(entry)
        calls: list[_Call] = []
        events: list[int] = []
        for group, flags in sorted(entries.items()):
            keys = [
                self._layout.seq(group, batch.writer),
                self._layout.flags(group),
                self._layout.counts(group),
                self._layout.window_cache(group),
            ]
            args: list[Any] = [batch.seq, self._seq_ttl_s, self._retention_s or 0, now, self._layout.tags[group]]
            args += self._window_args
            args.append(len(flags))
            for flag_key, delta, pin in flags:
                keys.append(self._layout.users(flag_key))
                members = delta.members if delta is not None else ()
                args += (
                    flag_key,
                    delta.total if delta is not None else 0,
                    delta.errors if delta is not None else 0,
                    delta.seen if delta is not None and delta.total else 0,
                    json.dumps([pin.unique_users, pin.error_rate]) if pin is not None else "",
                    json.dumps(split) if (split := batch.splits.get(flag_key)) is not None else "",
                    self._phases(flag_key)[0],
                    _joined(members, flag_key),
                )
                variants = delta.variants if delta is not None else {}
                args.append(len(variants))
                for variant, served in variants.items():
                    args += (variant, _joined(served, flag_key))
            calls.append((self._apply, keys, args))
            events.append(sum(delta.total for _, delta, _ in flags if delta is not None))
        results = await self._run(calls, "write the batch", refusals=True)
        refused = [(n, result) for n, result in zip(events, results, strict=True) if isinstance(result, StoreError)]
        if refused:
            # The other groups' scripts applied their part: a retry skips it, a drop must not count it.
            raise StoreError(str(refused[0][1]), transient=False, refused_events=sum(n for n, _ in refused))

    async def snapshot(self) -> Snapshot:
        """Read every flag in two rounds of one script per group, whatever the number of flags.

        The first lists each group's flags with its counts (one moment per group, so each flag's
        error rate is consistent); the second counts their users.
        """
        await self._upgrade_layout()
        since = self._clock() - self._retention_s if self._retention_s else 0
        groups = await self._list_groups(since)
        names = [[raw.decode("utf-8", "replace") for raw in flags] for flags, _, _ in groups]
        now = self._clock()
        prefixes = [b"%d:" % window.seconds for window in self._windows]
        calls: list[_Call] = []
        # Per flag: the cached figure of each window that is still current, None where it must be computed.
        current: list[list[list[bytes | None]]] = []
        for group, ((raws, counts, cache), flags) in enumerate(zip(groups, names, strict=True)):
            if not flags:
                current.append([])
                continue
            args: list[Any] = [self._layout.tags[group], now, *self._window_args]
            kept: list[list[bytes | None]] = []
            for raw, flag_key in zip(raws, flags, strict=True):
                text, phases = self._phases(flag_key)
                cached: list[bytes | None] = []
                stale = []
                for n, (window, phase, prefix) in enumerate(zip(self._windows, phases, prefixes, strict=True), 1):
                    figure = cache.get(prefix + raw)
                    if figure is None or _cached_bucket(figure) != window.bucket(now, phase):
                        figure = None
                        stale.append(str(n))
                    cached.append(figure)
                kept.append(cached)
                spec = f"{counts.get(b'seen:' + raw, b'0').decode()}|{','.join(stale)}|{text}" if stale else ""
                args += (flag_key, spec)
            current.append(kept)
            keys: list[str | bytes] = [
                self._layout.window_cache(group),
                *(self._layout.users_encoded(flag) for flag in flags),
            ]
            calls.append((self._count, keys, args))
        counted = iter(await self._run(calls, "read the fleet state"))
        result: dict[str, FlagStats] = {}
        for (raws, counts, _), flags, kept in zip(groups, names, current, strict=True):
            if not flags:
                continue
            for raw, flag_key, entry, cached in zip(raws, flags, next(counted), kept, strict=True):
                total, pin = counts.get(b"total:" + raw), counts.get(b"pin:" + raw)
                if not total and not pin:  # a flag with neither evaluations nor a pin is left out
                    continue
                users, fresh = entry[0], iter(entry[1:])
                seen = counts.get(b"seen:" + raw)
                result[flag_key] = FlagStats(
                    total=int(total or 0),
                    errors=int(counts.get(b"errors:" + raw) or 0),
                    unique_users=_pin_users(pin, users) if pin else users,
                    pinned_error_rate=_pin_rate(pin) if pin else None,
                    last_evaluated_s=float(seen) if seen else None,
                    windows={
                        window.label: _window_stats(figure if figure is not None else next(fresh))
                        for window, figure in zip(self._windows, cached, strict=True)
                    },
                    split=_split(counts.get(b"split:" + raw)),
                )
        return Snapshot(flags=result)

    async def _list_groups(self, since: float) -> list[tuple[list[bytes], dict[bytes, bytes], dict[bytes, bytes]]]:
        """Each group's flags written since `since` (Unix s), with its counts and window cache by field."""
        calls: list[_Call] = [
            (
                self._list,
                [self._layout.flags(group), self._layout.counts(group), self._layout.window_cache(group)],
                [since],
            )
            for group in range(GROUPS)
        ]
        return [
            (list(flags), _fields(counts), _fields(cache))
            for flags, counts, cache in await self._run(calls, "read the fleet state")
        ]

    async def reset(self, flag_key: str | None = None) -> None:
        """Delete one flag's state, or every flag's (listing each group's flags first)."""
        await self._upgrade_layout()
        if flag_key is not None:
            names: list[list[str]] = [
                [flag_key] if group == self._layout.group(flag_key) else [] for group in range(GROUPS)
            ]
        else:
            names = [[raw.decode("utf-8", "replace") for raw in flags] for flags, _, _ in await self._list_groups(0)]
        now = self._clock()
        calls: list[_Call] = [
            (
                self._forget,
                [
                    self._layout.flags(group),
                    self._layout.counts(group),
                    self._layout.window_cache(group),
                    *map(self._layout.users, flags),
                ],
                [self._layout.tags[group], now, *self._window_args, *flags],
            )
            for group, flags in enumerate(names)
            if flags
        ]
        await self._run(calls, "reset the fleet state")

    async def close(self) -> None:
        """Close the connections (behind Sentinel, the sentinels' too)."""
        await self._client.aclose()
        if self._sentinel_pool is not None:
            await self._sentinel_pool.sentinel_manager.aclose()

    async def _run(self, calls: Sequence[_Call], doing: str, *, refusals: bool = False) -> list[Any]:
        """Run scripts: in one pipeline on a single node, concurrently on a cluster; raise `StoreError`.

        With `refusals`, a script Redis refuses gives a non-transient `StoreError` in its place in
        the results instead of raising, once every script has run.
        """
        if not calls:
            return []
        await self._follow_master()
        try:
            results = await (self._concurrently(calls) if self._cluster else self._pipelined(calls))
        except (RedisError, UnicodeError) as exc:
            if _transient(exc):
                raise StoreError(f"could not {doing} in Redis: {exc}") from exc
            raise StoreError(f"Redis refused to {doing}: {exc}", transient=False) from exc
        except Exception as exc:  # the client's own failures, as seen while connections break in a failover
            raise StoreError(f"could not {doing} in Redis, the client failed: {exc!r}") from exc
        checked: list[Any] = []
        for result in results:
            if _transient(result):
                raise StoreError(f"could not {doing} in Redis: {result}") from result
            if isinstance(result, RedisError | UnicodeError):
                error = StoreError(f"Redis refused to {doing}: {result}", transient=False)
                error.__cause__ = result
                if not refusals:
                    raise error
                result = error
            elif isinstance(result, Exception):
                raise StoreError(f"could not {doing} in Redis, the client failed: {result!r}") from result
            elif isinstance(result, BaseException):
                raise result
            checked.append(result)
        return checked

    async def _follow_master(self) -> None:
        """Behind Sentinel, ask the sentinels where the master is, at most once per `_MASTER_CHECK_INTERVAL_S`.

        redis-py asks them when it opens a connection, so an open connection to a master the sentinels
        have replaced, but that is not demoted yet (a failover of a live master, or one cut off from
        the sentinels), would keep taking writes that its demotion then throws away. The pool's own
        `get_master_address` closes the idle connections when the master has moved, and the next
        command connects to the new one. When the sentinels cannot say, the connections stay as they are.
        """
        pool = self._sentinel_pool
        if pool is None or time.monotonic() < self._next_master_check:
            return
        self._next_master_check = time.monotonic() + _MASTER_CHECK_INTERVAL_S
        with contextlib.suppress(RedisError):
            await pool.get_master_address()  # type: ignore[no-untyped-call]  # unannotated in redis-py

    async def _concurrently(self, calls: Sequence[_Call]) -> list[Any]:
        """Send every script at once, each to its slot's master; load the scripts first where Redis lacks them.

        The scripts are loaded on every master before the first calls (and again after a NOSCRIPT, as
        after a failover to a replica that never saw them), not by each call on its own, which would
        load them many times over at once.
        """
        client = self._client
        assert isinstance(client, RedisCluster)
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(2):
            if not self._scripts_loaded:
                await client.initialize()
                for script in (self._apply, self._list, self._count, self._forget):
                    await client.script_load(script.script)
                self._scripts_loaded = True
            replies = await asyncio.gather(
                *(client.evalsha(calls[i][0].sha, len(calls[i][1]), *calls[i][1], *calls[i][2]) for i in pending),
                return_exceptions=True,
            )
            for index, reply in zip(pending, replies, strict=True):
                results[index] = reply
            pending = [index for index, reply in zip(pending, replies, strict=True) if isinstance(reply, NoScriptError)]
            if not pending:
                break
            self._scripts_loaded = False
        return results

    async def _pipelined(self, calls: Sequence[_Call]) -> list[Any]:
        """Send every script in one pipeline; load the scripts Redis has forgotten and send those again."""
        client = self._client
        assert isinstance(client, aioredis.Redis)
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(2):
            async with client.pipeline(transaction=False) as pipe:
                for index in pending:
                    script, keys, args = calls[index]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            for index, reply in zip(pending, replies, strict=True):
                results[index] = reply
            missing = [index for index, reply in zip(pending, replies, strict=True) if isinstance(reply, NoScriptError)]
            if not missing:
                break
            for script in {calls[index][0] for index in missing}:  # a restart or SCRIPT FLUSH emptied the cache
                await client.script_load(script.script)
            pending = missing
        return results

    async def _upgrade_layout(self) -> None:
        """Move flags written in the layout of flagmetrics 0.1 into their groups (a single node only).

        Looked for once a minute, so that the workers of a rolling upgrade that still write the old
        layout are moved too; each flag moves in one script, exactly once.
        """
        if self._cluster or time.monotonic() < self._next_layout_check:
            return
        self._next_layout_check = time.monotonic() + _LAYOUT_CHECK_INTERVAL_S
        prefix = self._layout.prefix
        old = (f"{prefix}:totals", f"{prefix}:errors", f"{prefix}:pins")
        client = self._client
        assert isinstance(client, aioredis.Redis)
        try:
            if not await client.exists(old[0], old[2]):
                return
            totals, pins = await client.hkeys(old[0]), await client.hkeys(old[2])
            calls: list[_Call] = []
            for flag_key in sorted({_text(raw) for raw in (*totals, *pins)}):
                group = self._layout.group(flag_key)
                keys = [*old, f"{prefix}:hll:{flag_key}", self._layout.flags(group), self._layout.counts(group)]
                keys.append(self._layout.users(flag_key))
                calls.append((self._migrate, keys, [flag_key, time.time()]))
            for reply in await self._pipelined(calls):
                if isinstance(reply, BaseException):
                    raise reply
        except RedisError as exc:
            if _transient(exc):
                self._next_layout_check = 0.0  # look again next time
                raise StoreError(f"could not read the fleet state in Redis: {exc}") from exc
            raise StoreError(f"could not move the old keys to the new layout: {exc}", transient=False) from exc

    def __repr__(self) -> str:
        if isinstance(self._client, RedisCluster):
            kind = "cluster"
        elif (pool := self._sentinel_pool) is not None:
            kind = f"sentinel master {pool.service_name!r} at {','.join(_sentinel_addresses(pool))}"
        else:
            kind = "single node"
        return f"RedisStore(key_prefix={self._layout.prefix!r}, {kind})"


def _client_options(timeout_s: float, retries: int) -> dict[str, Any]:
    """The timeouts and retries of every client a store builds; raise `ConfigurationError` for bad ones."""
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not (math.isfinite(timeout_s) and timeout_s > 0)
    ):
        raise ConfigurationError(f"`timeout_s` must be a positive number of seconds, got {timeout_s!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"`retries` must be a whole number, 0 or more, got {retries!r}")
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        # Backoff between retries: 20 ms doubling, at most 0.5 s.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), retries),
    }


def _addresses(sentinels: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The sentinels given as `(host, port)` pairs, checked."""
    pairs = list(sentinels) if isinstance(sentinels, Sequence) else []
    if not pairs:
        raise ConfigurationError(
            "`sentinels` must name at least one sentinel, as (host, port) pairs or 'host:port,host:port', "
            f"got {sentinels!r}"
        )
    for pair in pairs:
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and pair[0]
            and isinstance(pair[1], int)
            and not isinstance(pair[1], bool)
            and 0 < pair[1] < 65536
        ):
            raise ConfigurationError(
                f"`sentinels` must be (host, port) pairs with a port of 1-65535, got {pair!r} in {sentinels!r}"
            )
    return [(host, port) for host, port in pairs]


def _query_options(query: str, sentinels: str) -> dict[str, Any]:
    """The master's connection options in a `sentinels` URL's query, read by redis-py as from any Redis URL."""
    if not query:
        return {}
    try:
        options: dict[str, Any] = dict(parse_url(f"redis://sentinel/?{query}"))
    except ValueError as exc:
        raise ConfigurationError(f"`sentinels` {redact_url(sentinels)!r} has a bad option: {exc}") from exc
    options.pop("host", None)
    return options


def _sentinel_addresses(pool: SentinelConnectionPool) -> list[str]:
    """The sentinels of a pool as sorted `host:port` (IPv6 in brackets): the same whatever order they answer in."""
    found = []
    for sentinel in pool.sentinel_manager.sentinels:
        kwargs = sentinel.connection_pool.connection_kwargs
        host, port = str(kwargs.get("host")), kwargs.get("port")
        found.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return sorted(found)


def _startup_nodes(url: str, cluster: bool) -> tuple[str, list[ClusterNode]]:
    """Split `scheme://auth@host1:port1,host2:port2/db` into a URL of the first host and the other nodes."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    first, *others = hosts.split(",")
    if not others:
        return url, []
    if not cluster:
        raise ConfigurationError(f"`url` names several hosts, which only a cluster takes: {redact_url(url)!r}")
    nodes = []
    for host in others:
        name, colon, port = host.rpartition(":")
        try:
            nodes.append(ClusterNode(name, int(port)) if colon else ClusterNode(host, 6379))
        except ValueError:
            raise ConfigurationError(f"`url` names a bad port: {redact_url(url)!r}") from None
    return f"{scheme}{sep}{auth}{at}{first}{slash}{path}", nodes


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A hash as HGETALL gives it, by field."""
    items = iter(flat)
    return dict(zip(items, items, strict=True))


def _cached_bucket(text: bytes | None) -> int | None:
    """The bucket a cached window figure was computed in."""
    if not text:
        return None
    head = text[1 : text.find(b",")]
    return int(head) if head.lstrip(b"-").isdigit() else None


@functools.lru_cache(maxsize=100_000)
def _window_stats(text: bytes) -> WindowStats:
    """A window's figures from the JSON the count script keeps: `[bucket, users, [variant, users, ...]]`."""
    _, users, flat = json.loads(text)
    if not flat:  # an empty Lua table is encoded as an object
        return WindowStats(int(users))
    pairs = iter(flat)
    return WindowStats(int(users), {str(variant): int(count) for variant, count in zip(pairs, pairs, strict=True)})


def _split(raw: bytes | None) -> dict[str, float] | None:
    """Expected weights as the store keeps them (JSON), or None."""
    return _parsed_split(raw) if raw else None


@functools.lru_cache(maxsize=100_000)
def _parsed_split(raw: bytes) -> dict[str, float]:
    return {str(variant): float(weight) for variant, weight in json.loads(raw).items()}


def _pin_users(pin_json: bytes | None, counted: int) -> int:
    """The unique users a scrape shows: the pinned figure, else the HyperLogLog's count."""
    pin = _pin(pin_json)
    return pin.unique_users if pin is not None else counted


def _pin_rate(pin_json: bytes | None) -> float | None:
    """The pinned error rate, or None."""
    pin = _pin(pin_json)
    return pin.error_rate if pin is not None else None


def _pin(raw: bytes | str | None) -> Pin | None:
    if not raw:
        return None
    users, rate = json.loads(raw)
    return Pin(unique_users=int(users), error_rate=float(rate))
