"""`RedisStore` behind Redis Sentinel: `from_sentinel`, its spool target, the settings choosing it, failovers.

The unit tests build clients without connecting (redis-py connects on first use); the others start a
master, a replica and three sentinels of their own (`tests.processes.RedisSentinels`), and the last
one gunicorn too.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from examples.traffic import Tally, parse_scrape
from flagmetrics.config import Settings
from flagmetrics.exceptions import ConfigurationError, StoreError
from flagmetrics.stores import default_store
from flagmetrics.stores.base import FlagDelta, Snapshot, snapshot_within
from flagmetrics.stores.redis import KeyLayout, RedisStore
from tests.helpers import Gunicorn, Load, Scrapes, batch, run_with, users
from tests.processes import REPO, RedisSentinels, clean_environ, wait_for

PASSWORD = "pw-s3cret-71d0"
LAYOUT = KeyLayout("flagmetrics")
SENTINELS = "10.0.0.2:26379,10.0.0.1:26380,[fd00::3]:26379"


def sentinel_pool(store: RedisStore) -> SentinelConnectionPool:
    """The sentinel connection pool of a store's client."""
    client = store.client
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    return pool


def sentinel_kwargs(store: RedisStore) -> list[dict[str, Any]]:
    """The connection options of each sentinel client, in the order given."""
    return [dict(s.connection_pool.connection_kwargs) for s in sentinel_pool(store).sentinel_manager.sentinels]


def closed(store: RedisStore) -> None:
    """Close a store that never connected."""
    asyncio.run(store.close())


# -- from_sentinel ----------------------------------------------------------------------------------------


def test_from_sentinel_builds_a_master_for_client_with_the_stores_options() -> None:
    """A `redis.asyncio.Redis` on redis-py's sentinel pool: timeouts, retries with backoff, bytes, health checks."""
    store = RedisStore.from_sentinel(
        [("10.0.0.1", 26379), ("10.0.0.2", 26380)], "cache", timeout_s=0.25, retries=4, password=PASSWORD, db=3
    )
    pool = sentinel_pool(store)
    options = pool.connection_kwargs
    assert pool.service_name == "cache"
    assert pool.is_master
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (0.25, 0.25)
    assert options["retry"].get_retries() == 4
    assert isinstance(options["retry"]._backoff, ExponentialBackoff)
    assert options["decode_responses"] is False
    assert options["health_check_interval"] == 30
    assert (options["password"], options["username"], options["db"]) == (PASSWORD, None, 3)
    assert [(kw["host"], kw["port"]) for kw in sentinel_kwargs(store)] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert not store.cluster
    closed(store)


def test_the_sentinels_get_the_timeouts_and_their_own_password_never_the_masters() -> None:
    store = RedisStore.from_sentinel(SENTINELS, timeout_s=0.3, password=PASSWORD, sentinel_password="sentinel-pw")
    for kwargs in sentinel_kwargs(store):
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.3, 0.3)
        assert kwargs["password"] == "sentinel-pw"
        assert kwargs["retry"].get_retries() == 0  # redis-py moves on to the next sentinel instead
    assert sentinel_pool(store).connection_kwargs["password"] == PASSWORD
    closed(store)


def test_sentinels_without_a_password_are_asked_without_one() -> None:
    store = RedisStore.from_sentinel(SENTINELS, password=PASSWORD)
    assert all(kwargs.get("password") is None for kwargs in sentinel_kwargs(store))
    closed(store)


def test_a_string_names_the_sentinels_with_ipv6_in_brackets_and_26379_by_default() -> None:
    store = RedisStore.from_sentinel("s1:26380, [::1]:26381,s3")
    assert [(kw["host"], kw["port"]) for kw in sentinel_kwargs(store)] == [("s1", 26380), ("::1", 26381), ("s3", 26379)]
    closed(store)


def test_the_url_form_carries_the_masters_credentials_database_and_tls() -> None:
    store = RedisStore.from_sentinel(f"rediss://app:{PASSWORD.replace('-', '%2D')}@s1:26379,s2:26379/2")
    pool = sentinel_pool(store)
    options = pool.connection_kwargs
    assert (options["username"], options["password"], options["db"]) == ("app", PASSWORD, 2)
    assert pool.connection_class is SentinelManagedSSLConnection
    assert [(kw["host"], kw["port"]) for kw in sentinel_kwargs(store)] == [("s1", 26379), ("s2", 26379)]
    assert all(kw.get("password") is None for kw in sentinel_kwargs(store))
    closed(store)


def test_the_url_query_gives_further_options_of_the_master_as_redis_py_reads_them() -> None:
    store = RedisStore.from_sentinel("rediss://s1:26379/0?ssl_cert_reqs=none&socket_timeout=2.5")
    options = sentinel_pool(store).connection_kwargs
    assert (options["ssl_cert_reqs"], options["socket_timeout"]) == ("none", 2.5)
    closed(store)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://s1/1?password=q&db=2", ("q", 2)),
        ("redis://:u@s1/1?password=q", ("u", 1)),
        ("redis://s1", (None, 0)),
    ],
)
def test_the_url_user_part_wins_over_the_query_and_the_query_over_the_path(
    url: str, expected: tuple[str | None, int]
) -> None:
    """As redis-py reads a Redis URL."""
    store = RedisStore.from_sentinel(url)
    options = sentinel_pool(store).connection_kwargs
    assert (options["password"], options["db"]) == expected
    closed(store)


def test_ssl_takes_the_tls_connection_and_client_kwargs_reach_the_master() -> None:
    store = RedisStore.from_sentinel(SENTINELS, ssl=True, ssl_ca_certs="/etc/ca.pem", client_name="flagmetrics")
    pool = sentinel_pool(store)
    assert pool.connection_class is SentinelManagedSSLConnection
    assert (pool.connection_kwargs["ssl_ca_certs"], pool.connection_kwargs["client_name"]) == (
        "/etc/ca.pem",
        "flagmetrics",
    )
    closed(store)


def test_decode_responses_stays_off_whatever_client_kwargs_say() -> None:
    store = RedisStore.from_sentinel(SENTINELS, decode_responses=True)
    assert sentinel_pool(store).connection_kwargs["decode_responses"] is False
    closed(store)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"sentinels": []}, "`sentinels` must name at least one sentinel"),
        ({"sentinels": ""}, "`sentinels` names no sentinel"),
        ({"sentinels": ("s1", 26379)}, "`sentinels` must be (host, port) pairs"),
        ({"sentinels": [("s1", "26379")]}, "`sentinels` must be (host, port) pairs"),
        ({"sentinels": [("s1", 0)]}, "`sentinels` must be (host, port) pairs with a port of 1-65535"),
        ({"sentinels": [("", 26379)]}, "`sentinels` must be (host, port) pairs"),
        ({"sentinels": "s1:26379,s2:port"}, "`sentinels` names a bad port 'port' for 's2'"),
        ({"sentinels": "::1:26379"}, "`sentinels` names a bad sentinel address '::1:26379'"),
        ({"sentinels": "http://s1:26379"}, "`sentinels` must be sentinels as host:port,host:port or a redis://"),
        ({"service_name": ""}, "`service_name` must be the master's name"),
        ({"service_name": "my master"}, "`service_name` must be the master's name"),
        ({"timeout_s": 0}, "`timeout_s` must be a positive number of seconds"),
        ({"timeout_s": math.nan}, "`timeout_s` must be a positive number of seconds"),
        ({"retries": -1}, "`retries` must be a whole number"),
        ({"db": -1}, "`db` must be a database number"),
        ({"retention_s": 0}, "`retention_s` must be a positive number of seconds"),
        ({"key_prefix": "a{b}"}, "`key_prefix` must be non-empty and hold no braces"),
        ({"windows": "1x"}, "windows"),
    ],
)
def test_from_sentinel_names_the_argument_that_is_wrong(arguments: dict[str, Any], message: str) -> None:
    arguments = {"sentinels": SENTINELS, **arguments}
    with pytest.raises(ConfigurationError) as raised:
        RedisStore.from_sentinel(**arguments)
    assert message in str(raised.value)


@pytest.mark.parametrize("given", [{"password": "other"}, {"username": "u"}, {"db": 1}, {"ssl": True}])
def test_a_url_and_the_masters_arguments_together_are_refused(given: dict[str, Any]) -> None:
    """The master's credentials, database and TLS come from the URL or the arguments, never half from each."""
    with pytest.raises(ConfigurationError, match=f"`{next(iter(given))}` given with a `sentinels` URL") as raised:
        RedisStore.from_sentinel(f"redis://:{PASSWORD}@s1:26379/0", **given)
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "sentinels",
    [
        f"redis://:{PASSWORD}@s1:port/0",
        f"redis://:{PASSWORD}@s1:26379/zero",
        f"redis://:{PASSWORD}@/0",
        f"redis://:{PASSWORD}@s1:26379/0?health_check_interval=soon",
        f"redis://:{PASSWORD.replace('-', '/')}@s1:26379/0",  # a password with an unencoded /
        f"http://:{PASSWORD}@s1:26379/0",
    ],
    ids=["bad-port", "bad-db", "no-host", "bad-option", "unencoded-slash", "http"],
)
def test_a_bad_url_is_refused_without_showing_the_password(sentinels: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisStore.from_sentinel(sentinels)
    assert str(raised.value).startswith("`sentinels`")
    assert PASSWORD not in str(raised.value)
    assert PASSWORD.split("-")[-1] not in str(raised.value)
    assert "***" in str(raised.value)


# -- failover errors ---------------------------------------------------------------------------------------


class FailingPipeline(RedisStore):
    """A store (on fakeredis) whose every pipeline raises `error`, or answers each script with it."""

    error: BaseException
    as_reply = False

    async def _pipelined(self, calls: Any) -> list[Any]:
        if self.as_reply:
            return [self.error for _ in calls]
        raise self.error


FAILOVER_ERRORS = [
    MasterNotFoundError("No master found for 'mymaster'"),
    ReadOnlyError("You can't write against a read only replica."),
    RedisConnectionError("The previous master is now a slave"),
    RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    RedisTimeoutError("Timeout reading from socket"),
    ResponseError("NOREPLICAS Not enough good replicas to write. script: 4d25, on @user_script:33."),
]


@pytest.mark.parametrize("as_reply", [False, True], ids=["raised", "in-the-reply"])
@pytest.mark.parametrize("error", FAILOVER_ERRORS, ids=lambda e: str(e).split()[0])
def test_a_failovers_errors_are_transient_so_the_batch_is_kept(error: BaseException, as_reply: bool) -> None:
    """No master yet, a demoted master, a dead one, one whose replica left (`min-replicas-to-write`):
    retried (and spooled) by the flusher, never dropped."""
    store = FailingPipeline(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer()))
    store.error, store.as_reply = error, as_reply
    with pytest.raises(StoreError) as pushed:
        run_with(store, lambda s: s.push(batch(1, {"a": FlagDelta(1, 0, users(0, 1))})))
    assert pushed.value.transient
    store = FailingPipeline(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer()))
    store.error, store.as_reply = error, as_reply
    with pytest.raises(StoreError) as read:
        run_with(store, lambda s: s.snapshot())
    assert read.value.transient


def test_a_refusal_that_is_not_a_failover_stays_permanent() -> None:
    store = FailingPipeline(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer()))
    store.error, store.as_reply = ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), True
    with pytest.raises(StoreError) as pushed:
        run_with(store, lambda s: s.push(batch(1, {"a": FlagDelta(1, 0)})))
    assert not pushed.value.transient


class Answering(RedisStore):
    """A store whose every script succeeds without Redis, for what happens around the scripts."""

    async def _pipelined(self, calls: Any) -> list[Any]:
        return [1 for _ in calls]

    async def _upgrade_layout(self) -> None:
        return None


@pytest.mark.parametrize("sentinels_answer", [True, False], ids=["answering", "down"])
def test_the_store_asks_the_sentinels_for_the_master_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch, sentinels_answer: bool
) -> None:
    """So that a master replaced while alive is left within a second; sentinels that cannot say stop no write."""
    asked: list[float] = []

    async def get_master_address(self: SentinelConnectionPool) -> tuple[str, int]:
        asked.append(time.monotonic())
        if not sentinels_answer:
            raise MasterNotFoundError("No master found for 'mymaster'")
        return ("10.0.0.9", 6379)

    monkeypatch.setattr(SentinelConnectionPool, "get_master_address", get_master_address)
    client = RedisStore.from_sentinel(SENTINELS).client
    store = Answering(client)

    async def scenario(store: RedisStore) -> None:
        for seq in range(1, 6):
            await store.push(batch(seq, {"a": FlagDelta(1, 0)}))

    run_with(store, scenario)
    assert len(asked) == 1


def test_close_closes_the_sentinels_connections_too(monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisStore.from_sentinel(SENTINELS)
    manager = sentinel_pool(store).sentinel_manager
    closes: list[object] = []
    aclose = type(manager).aclose

    async def counted(self: Any) -> None:
        closes.append(self)
        await aclose(self)

    monkeypatch.setattr(type(manager), "aclose", counted)
    closed(store)
    assert closes == [manager]


# -- spool target and repr ---------------------------------------------------------------------------------


def test_spool_target_names_the_service_the_sorted_sentinels_the_database_and_the_prefix() -> None:
    store = RedisStore.from_sentinel(SENTINELS, "cache", db=4, key_prefix="shop")
    assert store.spool_target == "sentinel:cache@10.0.0.1:26380,10.0.0.2:26379,[fd00::3]:26379/4:shop"
    closed(store)


def test_spool_target_is_the_same_however_the_same_sentinels_are_given() -> None:
    """Order, spaces, a default port, the URL form or pairs: batches spooled by one are delivered by the other."""
    stores = [
        RedisStore.from_sentinel("s2:26379,s1:26380"),
        RedisStore.from_sentinel(" s1:26380 , s2 "),
        RedisStore.from_sentinel(f"redis://:{PASSWORD}@s1:26380,s2:26379/0"),
        RedisStore.from_sentinel([("s1", 26380), ("s2", 26379)], timeout_s=5, retries=0),
        default_store(Settings(redis_sentinel="s2:26379,s1:26380"), None),
    ]
    targets = {store.spool_target for store in stores if isinstance(store, RedisStore)}
    assert targets == {"sentinel:mymaster@s1:26380,s2:26379/0:flagmetrics"}
    for store in stores:
        asyncio.run(store.close())


def test_spool_target_stays_when_discovery_reorders_the_sentinels() -> None:
    """redis-py moves the sentinel that answered to the front of its list; the target must not move."""
    store = RedisStore.from_sentinel(SENTINELS)
    before = store.spool_target
    sentinels = sentinel_pool(store).sentinel_manager.sentinels
    sentinels.reverse()
    assert store.spool_target == before
    closed(store)


@pytest.mark.parametrize(
    "other",
    [
        {"service_name": "other"},
        {"db": 1},
        {"key_prefix": "other"},
        {"sentinels": "10.0.0.2:26379,10.0.0.1:26380"},
    ],
    ids=["service", "db", "prefix", "sentinels"],
)
def test_spool_target_differs_for_another_service_database_prefix_or_set_of_sentinels(other: dict[str, Any]) -> None:
    first, second = RedisStore.from_sentinel(SENTINELS), RedisStore.from_sentinel(**{"sentinels": SENTINELS, **other})
    assert first.spool_target != second.spool_target
    closed(first)
    closed(second)


def test_spool_target_is_alike_in_another_process_configured_the_same() -> None:
    """As gunicorn's workers are: each builds its store from the same FLAGMETRICS_* variables."""
    code = "from flagmetrics.config import Settings; from flagmetrics.stores import default_store; "
    code += "print(default_store(Settings.from_env(), None).spool_target)"
    environ = clean_environ(FLAGMETRICS_REDIS_SENTINEL=SENTINELS, FLAGMETRICS_REDIS_SENTINEL_MASTER="cache")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60, check=True
    )
    here = RedisStore.from_sentinel(SENTINELS, "cache")
    assert result.stdout.strip() == here.spool_target
    closed(here)


def test_spool_target_of_a_sentinel_store_is_not_a_single_nodes() -> None:
    """The sentinel pool has no host or port of its own; the target must not read them as `None:None`."""
    store = RedisStore.from_sentinel(SENTINELS)
    assert "None" not in store.spool_target
    assert store.spool_target.startswith("sentinel:")
    closed(store)


def test_repr_names_the_service_and_sentinels_without_a_password() -> None:
    store = RedisStore.from_sentinel(f"redis://:{PASSWORD}@s2:26379,s1:26379/0", "cache", key_prefix="shop")
    assert repr(store) == "RedisStore(key_prefix='shop', sentinel master 'cache' at s1:26379,s2:26379)"
    closed(store)


# -- the settings that choose it ---------------------------------------------------------------------------


def test_default_store_uses_the_sentinels_when_redis_sentinel_is_set() -> None:
    settings = Settings(
        redis_sentinel=f"redis://:{PASSWORD}@s1:26379,s2:26379/5",
        redis_sentinel_master="cache",
        redis_sentinel_password="sentinel-pw",
        key_prefix="shop",
        retention_s=3600,
        windows="1h",
    )
    store = default_store(settings, None)
    assert isinstance(store, RedisStore)
    pool = sentinel_pool(store)
    assert (pool.service_name, pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == (
        "cache",
        PASSWORD,
        5,
    )
    assert {kwargs["password"] for kwargs in sentinel_kwargs(store)} == {"sentinel-pw"}
    assert (store.key_prefix, [w.label for w in store.windows], store._retention_s) == ("shop", ["1h"], 3600)
    asyncio.run(store.close())


def test_default_store_reads_the_sentinel_variables() -> None:
    environ = {
        "FLAGMETRICS_REDIS_SENTINEL": "s1:26379,s2:26379",
        "FLAGMETRICS_REDIS_SENTINEL_MASTER": "cache",
        "FLAGMETRICS_REDIS_SENTINEL_PASSWORD": "sentinel-pw",
    }
    store = default_store(Settings.from_env(environ), None)
    assert isinstance(store, RedisStore)
    assert sentinel_pool(store).service_name == "cache"
    assert {kwargs["password"] for kwargs in sentinel_kwargs(store)} == {"sentinel-pw"}
    asyncio.run(store.close())


# -- against real sentinels --------------------------------------------------------------------------------


def figures(snapshot: Snapshot) -> dict[str, tuple[int, int, int]]:
    return {key: (stats.total, stats.errors, stats.unique_users) for key, stats in snapshot.flags.items()}


def new_master(group: RedisSentinels, old: int | None) -> int | None:
    """The port of the master every sentinel names, once it is not `old`."""
    port = group.master_port()
    return port if port not in (old, None) else None


@pytest.mark.redis
def test_a_batch_goes_to_the_master_the_sentinels_name_and_is_read_back(redis_sentinels: RedisSentinels) -> None:
    store = RedisStore.from_sentinel(redis_sentinels.addresses, key_prefix="roundtrip")

    async def scenario(store: RedisStore) -> Snapshot:
        await store.push(batch(1, {"a": FlagDelta(5, 2, users(0, 4))}))
        await store.push(batch(1, {"a": FlagDelta(5, 2, users(0, 4))}))  # delivered again: applied once
        return await store.snapshot()

    assert figures(run_with(store, scenario)) == {"a": (5, 2, 4)}
    master = redis_sentinels.server_on(redis_sentinels.master_port() or 0)
    assert master is redis_sentinels.master
    assert int(master.client().hget(store.layout.counts(store.layout.group("a")), "total:a") or 0) == 5


@pytest.mark.redis
def test_an_unknown_service_fails_at_once_as_a_transient_store_error(redis_sentinels: RedisSentinels) -> None:
    store = RedisStore.from_sentinel(redis_sentinels.addresses, "no-such-master")
    started = time.monotonic()
    with pytest.raises(StoreError, match="No master found for 'no-such-master'") as raised:
        run_with(store, lambda s: snapshot_within(s, 5.0))
    assert raised.value.transient
    assert time.monotonic() - started < 2.0  # the sentinels answer at once; a few retries, no timeout


@pytest.mark.redis
@pytest.mark.timeout(60)
@pytest.mark.parametrize("min_replicas", [0, 1], ids=["default", "min-replicas-to-write-1"])
def test_a_master_replaced_while_alive_is_left_for_the_new_one_and_no_batch_counts_twice(
    fresh_redis_sentinels: RedisSentinels, min_replicas: int
) -> None:
    """`SENTINEL FAILOVER` promotes the replica while the master lives on: every batch is delivered (retried
    as the flusher would, transient errors only) and none twice; the batches the old master took before
    the sentinels named the new one are lost with its demotion, unless `min-replicas-to-write` makes it
    refuse them (NOREPLICAS) once its replica has left, so that they are sent again to the new master."""
    group = fresh_redis_sentinels
    assert group.master is not None
    group.master.client().config_set("min-replicas-to-write", min_replicas)  # on the old master only
    old = group.master_port()
    sent, failures = 0, []

    async def scenario(store: RedisStore) -> Snapshot:
        nonlocal sent
        seq, moved_at = 0, None
        while moved_at is None or time.monotonic() < moved_at + 3.0:  # two checks of the master at least
            seq += 1
            delta = FlagDelta(3, 1, users(seq * 3, seq * 3 + 3))
            for _ in range(200):
                try:
                    await store.push(batch(seq, {"a": delta}))
                    break
                except StoreError as exc:
                    failures.append(exc)
                    if not exc.transient:
                        pytest.fail(f"a permanent error in the failover: {exc}")
                    await asyncio.sleep(0.05)
            else:
                pytest.fail(f"batch {seq} not delivered: {failures[-1]}")
            sent += 3
            if seq == 5:
                group.sentinel_nodes[0].client().sentinel_failover(group.service)
            if moved_at is None and seq > 5 and new_master(group, old):
                moved_at = time.monotonic()
            await asyncio.sleep(0.02)
        return await store.snapshot()

    snapshot = run_with(RedisStore.from_sentinel(group.addresses, retries=1), scenario)
    stored = snapshot.flags["a"].total
    new = group.master_port()
    print(
        f"SENTINEL FAILOVER with min-replicas-to-write {min_replicas}: {sent} evaluations sent, {stored} stored, "
        f"{sent - stored} lost with the old master, {len(failures)} transient errors retried"
    )
    assert new not in (old, None)
    assert stored <= sent  # never twice
    counts = LAYOUT.counts(LAYOUT.group("a"))
    assert int(group.server_on(new or 0).client().hget(counts, "total:a") or 0) == stored  # on the new master
    if min_replicas:
        # At most the batch the replica had not read yet when it was promoted.
        assert sent - stored <= 3
        assert any("NOREPLICAS" in str(failure) for failure in failures)


# -- a master killed under gunicorn ------------------------------------------------------------------------

SCRAPE_TIMEOUT_S = 0.5
RENDERING_S = 1.0
"""Allowance for rendering a scrape on this machine (2 cores, shared), on top of the scrape timeout."""
CAUGHT_UP_LAG_S = 1.0
"""The store counts as caught up while it holds every evaluation answered this long ago (5 flushes)."""


class StoreWatch(threading.Thread):
    """Reads the fleet store through the sentinels every 0.1 s, noting the evaluations it holds (None: unreadable)."""

    def __init__(self, addresses: str) -> None:
        super().__init__(daemon=True)
        self._addresses = addresses
        self._stopping = threading.Event()
        self.seen: list[tuple[float, int | None]] = []

    def run(self) -> None:
        while not self._stopping.is_set():
            read = read_store(self._addresses, timeout_s=0.5)
            self.seen.append((time.monotonic(), None if read is None else sum(s.total for s in read.flags.values())))
            self._stopping.wait(0.1)

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)
        assert not self.is_alive()


def read_store(addresses: str, timeout_s: float = 2.0) -> Snapshot | None:
    """The fleet state, read through the sentinels as a worker reads it; None when it cannot be read in time."""

    async def read() -> Snapshot | None:
        store = RedisStore.from_sentinel(addresses)
        try:
            return await snapshot_within(store, timeout_s)
        except StoreError:
            return None
        finally:
            await store.close()

    return asyncio.run(read())


def settled(app: Gunicorn, group: RedisSentinels, tally: Tally) -> Snapshot | None:
    """The store once the counters show every answer and two reads a flush apart agree."""
    if parse_scrape(app.scrape().text).evaluations != dict(tally.evaluations):
        return None
    first = read_store(group.addresses)
    time.sleep(0.5)  # more than one flush interval of every worker
    again = read_store(group.addresses)
    return first if first is not None and again is not None and figures(again) == figures(first) else None


def users_lost(group: RedisSentinels, tally: Tally, snapshot: Snapshot) -> dict[str, int]:
    """Per flag, how far the store's HyperLogLog is from one built on the new master from every user sent."""
    client = group.server_on(group.master_port() or 0).client()
    lost = {}
    for flag, sent in tally.users.items():
        scratch = f"scratch:{flag}"
        client.pfadd(scratch, *(hashlib.blake2b(u.encode(), digest_size=8).digest() for u in sent))
        lost[flag] = client.pfcount(scratch) - snapshot.flags[flag].unique_users
        client.delete(scratch)
    return lost


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_master_killed_behind_sentinel_fails_no_request_and_no_scrape(
    fresh_redis_sentinels: RedisSentinels, gunicorn: Callable[..., Gunicorn]
) -> None:
    """SIGKILL the master mid-traffic: every request answered, every scrape within its timeout, the fleet
    gauges left out while no master answers, then back on the promoted replica and true again."""
    group = fresh_redis_sentinels
    app = gunicorn(FLAGMETRICS_REDIS_SENTINEL=group.addresses, FLAGMETRICS_SCRAPE_TIMEOUT_S=str(SCRAPE_TIMEOUT_S))
    old = group.master_port()
    load, scrapes, watch = Load(app), Scrapes(app), StoreWatch(group.addresses)
    for thread in (load, scrapes, watch):
        thread.start()
    try:
        wait_for(lambda: len(load.rounds) >= 10, 30, "traffic before the kill")
        assert group.master is not None
        group.master.kill()  # SIGKILL, by the pid we started
        killed_at = time.monotonic()
        new = wait_for(lambda: new_master(group, old), 30, "the sentinels to name a new master")
        promoted_at = time.monotonic()
        wait_for(lambda: len([at for at, _ in load.rounds if at > promoted_at]) >= 10, 30, "traffic after it")
        load.stop()
        stored = wait_for(lambda: settled(app, group, load.tally), 20, "the store to settle after the failover")
        assert stored is not None
        final = app.scrape()
    finally:
        for thread in (load, scrapes, watch):
            thread.stop()

    truth = load.tally
    worst = max(took for _, took, _, _, _ in scrapes.seen)
    back = [at for at, _, _, up, _ in scrapes.seen if at > killed_at and up == 1.0]
    # The moment from which the store held, at every read, every evaluation answered CAUGHT_UP_LAG_S before.
    behind = [at for at, held in watch.seen if at > killed_at and (held or 0) < load.answered_by(at - CAUGHT_UP_LAG_S)]
    caught_up = min((at for at, _ in watch.seen if at > max(behind, default=killed_at)), default=math.inf)
    # What the dead master acknowledged but its replica never got. Every round brings new users, so
    # later traffic re-adds none of them: what the store lacks at the end is what the failover lost.
    evaluations_lost = sum(truth.totals().values()) - sum(stats.total for stats in stored.flags.values())
    lost_users = users_lost(group, truth, stored)
    print(
        f"sentinel failover (master {old} -> {new}): {sum(truth.totals().values())} evaluations, "
        f"{truth.failed_requests} failed requests, {len(scrapes.seen)} scrapes, worst {worst:.3f} s; "
        f"new master named {promoted_at - killed_at:.1f} s after the kill, fleet gauges back "
        f"{(back[0] if back else math.inf) - killed_at:.1f} s after it, store caught up (all answered "
        f"{CAUGHT_UP_LAG_S:.0f} s before) {caught_up - killed_at:.1f} s after it; lost to asynchronous "
        f"replication: {evaluations_lost} evaluations, users (HyperLogLog vs one of every user sent) {lost_users}"
    )
    assert truth.failed_requests == 0, truth.failures
    assert all(status == 200 for _, _, status, _, _ in scrapes.seen)
    assert worst <= SCRAPE_TIMEOUT_S + RENDERING_S
    assert all(up in (0.0, 1.0) for _, _, _, up, _ in scrapes.seen)
    assert not [seen for seen in scrapes.seen if seen[3] == 0.0 and seen[4]], "fleet gauges shown with store_up 0"
    assert [up for at, _, _, up, _ in scrapes.seen if killed_at < at < promoted_at].count(0.0) >= 1
    assert back, "the fleet gauges never came back"
    assert caught_up < math.inf
    for flag, (total, errors_stored, _) in figures(stored).items():  # nothing counted twice
        assert total <= truth.totals()[flag], flag
        assert errors_stored <= truth.errors()[flag], flag
    scrape = parse_scrape(final.text)
    assert scrape.samples["flagmetrics_store_up"] == 1.0
    assert scrape.evaluations == dict(truth.evaluations)
    counted: dict[str, float] = {}
    errors: dict[str, float] = {}
    for (flag, reason, _), value in scrape.evaluations.items():
        counted[flag] = counted.get(flag, 0) + value
        errors[flag] = errors.get(flag, 0) + (value if reason == "ERROR" else 0)
    assert scrape.error_rates == {flag: errors[flag] / counted[flag] for flag in counted}
    for flag, sent in truth.users.items():
        assert abs(scrape.unique_users[flag] - len(sent)) <= 0.02 * len(sent), flag
