"""`RedisStore`: fleet state in Redis, one HyperLogLog and two hash fields per flag, shared by every host."""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flagmetrics.config import redact_url
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.stores.base import Batch, FlagStats, Pin, Snapshot

__all__ = ["RedisStore"]

# Applies one worker batch unless this (writer, seq) was applied before, so a retried flush
# after a lost reply never counts twice. Redis does not undo a script's writes when it fails
# half-way, so everything that can fail comes first: the hashes' types are checked, then the
# PFADDs run (a key that is not a HyperLogLog fails there, and adding members again on a retry
# is harmless), and only then are counts added.
# Members go to PFADD in chunks to stay within Lua's argument limits.
# KEYS: seq key, totals hash, errors hash, pins hash, then one HyperLogLog key per flag.
# ARGV: seq, seq ttl (s), number of flags, number of pins, then per flag: key, total, errors,
#       member count, members...; then per pin: key, json.
_FLUSH_LUA = """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if seq <= last then return 0 end
for k = 2, 4 do
  local kind = redis.call('TYPE', KEYS[k]).ok
  if kind ~= 'none' and kind ~= 'hash' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a hash')
  end
end
local i = 5
for f = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[i + 3])
  i = i + 4
  local done = 0
  while done < n do
    local step = math.min(n - done, 512)
    redis.call('PFADD', KEYS[4 + f], unpack(ARGV, i + done, i + done + step - 1))
    done = done + step
  end
  i = i + n
end
i = 5
for f = 1, tonumber(ARGV[3]) do
  local flag, total, errors, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  if total > 0 then redis.call('HINCRBY', KEYS[2], flag, total) end
  if errors > 0 then redis.call('HINCRBY', KEYS[3], flag, errors) end
  i = i + 4 + n
end
for p = 1, tonumber(ARGV[4]) do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[1], seq, 'EX', tonumber(ARGV[2]))
return 1
"""

# Deletes every flag's state at once: the flags named in the totals and pins hashes, their
# HyperLogLogs (ARGV[1] is the HyperLogLog key prefix) and the hashes. Batch sequence keys stay,
# so a batch delivered again after the reset is still recognised.
# KEYS: totals hash, errors hash, pins hash.
_RESET_LUA = """
local names = redis.call('HKEYS', KEYS[1])
for _, name in ipairs(redis.call('HKEYS', KEYS[3])) do table.insert(names, name) end
for _, name in ipairs(names) do redis.call('DEL', ARGV[1] .. name) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return #names
"""

# PFCOUNT of every key given, in one command: a thousand flags cost one reply, not a thousand.
_COUNT_LUA = """
local counts = {}
for i, key in ipairs(KEYS) do counts[i] = redis.call('PFCOUNT', key) end
return counts
"""

_SCHEMES = ("redis", "rediss", "unix")


class RedisStore:
    """Fleet state in Redis: every key under `key_prefix`, user ids only as digests."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "flagmetrics",
        seq_ttl_s: int = 86_400,
    ) -> None:
        """Wrap a redis-py asyncio client created with `decode_responses=False`."""
        if not key_prefix:
            raise ConfigurationError("`key_prefix` must not be empty; every key lives under it")
        self._client = client
        self._prefix = key_prefix
        self._seq_ttl_s = seq_ttl_s
        self._totals = f"{key_prefix}:totals"
        self._errors = f"{key_prefix}:errors"
        self._pins = f"{key_prefix}:pins"
        self._flush = client.register_script(_FLUSH_LUA)
        self._count = client.register_script(_COUNT_LUA)
        self._reset_all = client.register_script(_RESET_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "flagmetrics",
        timeout_s: float = 1.0,
        retries: int = 2,
        **client_kwargs: Any,
    ) -> RedisStore:
        """Connect lazily to `url` (`redis://`, `rediss://` for TLS, `unix://`), AUTH taken from the URL.

        Args:
            timeout_s: Socket connect and read timeout in seconds.
            retries: Retries of a failed command, with redis-py's exponential backoff.
            client_kwargs: Passed on to `redis.asyncio.Redis.from_url`.
        """
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ConfigurationError(f"`url` must start with redis://, rediss:// or unix://, got {redact_url(url)!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"`url` names no host: {redact_url(url)!r}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigurationError(f"`timeout_s` must be a positive number of seconds, got {timeout_s!r}")
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # Backoff between retries: 20 ms doubling, at most 0.5 s.
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), retries),
            "health_check_interval": 30,
        }
        options.update(client_kwargs)
        options["decode_responses"] = False
        try:
            client = aioredis.Redis.from_url(url, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"`url` {redact_url(url)!r} is not a valid Redis URL: {exc}") from exc
        return cls(client, key_prefix=key_prefix)

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client."""
        return self._client

    @property
    def key_prefix(self) -> str:
        """The prefix of every key this store writes."""
        return self._prefix

    def hll_key(self, flag_key: str) -> str:
        """The HyperLogLog key of a flag."""
        return f"{self._prefix}:hll:{flag_key}"

    async def push(self, batch: Batch) -> None:
        """Apply `batch` in one round trip, exactly once per `(writer, seq)`."""
        keys: list[str] = [f"{self._prefix}:seq:{batch.writer}", self._totals, self._errors, self._pins]
        args: list[Any] = [batch.seq, self._seq_ttl_s, len(batch.flags), len(batch.pins)]
        for flag_key, delta in batch.flags.items():
            keys.append(self.hll_key(flag_key))
            args += (flag_key, delta.total, delta.errors, len(delta.members))
            args.extend(delta.members)
        for flag_key, pin in batch.pins.items():
            args += (flag_key, json.dumps([pin.unique_users, pin.error_rate]))
        try:
            await self._flush(keys=keys, args=args)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreError(f"could not reach Redis: {exc}") from exc
        except (RedisError, UnicodeError) as exc:
            raise StoreError(f"Redis refused the batch: {exc}", transient=False) from exc

    async def snapshot(self) -> Snapshot:
        """Read every flag in two round trips, whatever the number of flags."""
        try:
            # One transaction: totals and errors from the same moment, so the error rate is consistent.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._totals)
                pipe.hgetall(self._errors)
                pipe.hgetall(self._pins)
                totals, errors, pins = await pipe.execute()
            flags = sorted(set(totals) | set(pins))
            counts: list[int] = []
            if flags:
                counts = await self._count(keys=[self.hll_key(_text(raw)) for raw in flags])
        except RedisError as exc:
            raise StoreError(f"could not read from Redis: {exc}") from exc
        result: dict[str, FlagStats] = {}
        for raw, users in zip(flags, counts, strict=True):
            pin = _pin(pins.get(raw))
            result[raw.decode("utf-8", "replace")] = FlagStats(
                total=int(totals.get(raw, 0)),
                errors=int(errors.get(raw, 0)),
                unique_users=pin.unique_users if pin else int(users),
                pinned_error_rate=pin.error_rate if pin else None,
            )
        return Snapshot(flags=result)

    async def reset(self, flag_key: str | None = None) -> None:
        """Delete one flag's state, or every flag's."""
        try:
            if flag_key is None:
                await self._reset_all(keys=[self._totals, self._errors, self._pins], args=[self.hll_key("")])
                return
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self.hll_key(flag_key))
                pipe.hdel(self._totals, flag_key)
                pipe.hdel(self._errors, flag_key)
                pipe.hdel(self._pins, flag_key)
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"could not reset Redis state: {exc}") from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisStore(key_prefix={self._prefix!r})"


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _pin(raw: bytes | None) -> Pin | None:
    if raw is None:
        return None
    users, rate = json.loads(raw)
    return Pin(unique_users=int(users), error_rate=float(rate))
