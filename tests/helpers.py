"""Helpers the tests share: building exporters and batches, reading scrapes, checking them against the traffic.

Fixtures that start processes live in conftest.py; the processes themselves in tests/processes.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import fakeredis
import httpx
import pytest
from litestar_flags.analytics.models import FlagEvaluationEvent
from litestar_flags.types import EvaluationReason
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from examples.traffic import Tally, parse_scrape, plan, send
from flagmetrics import LocalStore, PrometheusExporter, RedisStore, StoreError
from flagmetrics.buffer import digest_users
from flagmetrics.collector import fleet_gauges, window_gauges
from flagmetrics.stores.base import Batch, FlagDelta, Pin, Snapshot, Store
from tests.processes import LOOPBACK, RedisCluster, RedisSentinels, children_of, pid_alive, stop_process, wait_for

T = TypeVar("T")
StoreT = TypeVar("StoreT", bound=Store)


# -- exporters and stores for unit tests ---------------------------------------------------------------


RedisStoreT = TypeVar("RedisStoreT", bound=RedisStore)


def fake_redis_store(server: fakeredis.FakeServer, cls: type[RedisStoreT]) -> RedisStoreT:
    """A `RedisStore` (or a subclass of it) on a fakeredis server."""
    return cls(fakeredis.aioredis.FakeRedis(server=server))


def fake_redis_snapshot(server: fakeredis.FakeServer) -> Snapshot:
    """The fleet state on a fakeredis server, read by a store of its own in a loop of its own."""

    async def main() -> Snapshot:
        store = fake_redis_store(server, RedisStore)
        try:
            return await store.snapshot()
        finally:
            await store.close()

    return asyncio.run(main())


def make_exporter(
    server: fakeredis.FakeServer | None = None, *, store: Store | None = None, **kwargs: Any
) -> tuple[PrometheusExporter, CollectorRegistry]:
    """An exporter with a registry of its own, on `store`, else on fakeredis `server`, else in memory."""
    registry = CollectorRegistry()
    if store is None:
        store = fake_redis_store(server, RedisStore) if server is not None else LocalStore(None)
    return PrometheusExporter(registry=registry, store=store, **kwargs), registry


def run(exporter: PrometheusExporter, scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario` on a fresh event loop, closing the exporter (and its store) afterwards."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await exporter.close()

    return asyncio.run(main())


def ev(
    flag_key: Any = "f",
    reason: Any = "DEFAULT",
    variant: Any = "on",
    user: Any = None,
    ms: Any = 1.0,
    error_code: str | None = None,
) -> SimpleNamespace:
    """A duck-typed evaluation event."""
    return SimpleNamespace(
        flag_key=flag_key,
        reason=reason,
        variant=variant,
        targeting_key=user,
        evaluation_duration_ms=ms,
        error_code=error_code,
    )


def flag_event(**fields: Any) -> FlagEvaluationEvent:
    """A litestar-flags event of flag `f`, changed by `fields`."""
    values: dict[str, Any] = {
        "timestamp": datetime.now(UTC),
        "flag_key": "f",
        "value": True,
        "reason": EvaluationReason.DEFAULT,
        "variant": "on",
        "targeting_key": None,
        "evaluation_duration_ms": 1.0,
    }
    values.update(fields)
    return FlagEvaluationEvent(**values)


def evaluations(registry: CollectorRegistry, flag_key: str, reason: str, variant: str) -> float | None:
    """One sample of the evaluations counter."""
    return registry.get_sample_value(
        "feature_flag_evaluations_total", {"flag_key": flag_key, "reason": reason, "variant": variant}
    )


def total_evaluations(registry: CollectorRegistry) -> float:
    """The sum of the evaluations counter over all its labels."""
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "feature_flag_evaluations"
        for sample in family.samples
        if sample.name == "feature_flag_evaluations_total"
    )


def invalid(registry: CollectorRegistry, defect: str) -> float | None:
    """`flagmetrics_invalid_events_total` of one defect."""
    return registry.get_sample_value("flagmetrics_invalid_events_total", {"defect": defect})


def dropped(registry: CollectorRegistry) -> float | None:
    """`flagmetrics_dropped_events_total`."""
    return registry.get_sample_value("flagmetrics_dropped_events_total")


def summary(snapshot: Snapshot | None) -> dict[str, tuple[int, int, int, float | None]]:
    """Each flag's (total, errors, unique users, error rate)."""
    assert snapshot is not None
    return {
        key: (stats.total, stats.errors, stats.unique_users, stats.error_rate) for key, stats in snapshot.flags.items()
    }


class DownStore:
    """A store that cannot be reached: every push, snapshot and reset fails."""

    def __init__(self) -> None:
        self.closed = False
        self.pushes = 0

    async def push(self, batch: Batch) -> None:
        self.pushes += 1
        raise StoreError("store down")

    async def snapshot(self) -> Snapshot:
        raise StoreError("store down")

    async def reset(self, flag_key: str | None = None) -> None:
        raise StoreError("store down")

    async def close(self) -> None:
        self.closed = True


class SwitchableStore(RedisStore):
    """A Redis store whose pushes fail while `down` is set."""

    down = False

    async def push(self, batch: Batch) -> None:
        if self.down:
            raise StoreError("store down")
        await super().push(batch)


class LostReplyStore(RedisStore):
    """Applies the first push but then loses the reply, as a timeout after the write would."""

    lost = 0

    async def push(self, batch: Batch) -> None:
        await super().push(batch)
        if not self.lost:
            self.lost += 1
            raise StoreError("reply lost")


async def redis_contents(client: Any, match: str | None = None) -> bytes:
    """Every key of a Redis database (matching `match`) and every value under it, as one byte string."""
    found: list[bytes] = []
    async for key in client.scan_iter(match=match):
        found.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            found.append(await client.get(key))
        elif kind == "hash":
            found += [item for pair in (await client.hgetall(key)).items() for item in pair]
        elif kind == "zset":
            found += [member for member, _ in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            found += list(await client.smembers(key))
        else:
            raise AssertionError(f"{key!r} holds a {kind} this check does not read")
    return b"\n".join(found)


FLEET_GAUGES = tuple(gauge.name for gauge in (*fleet_gauges(""), *window_gauges("")))
"""The gauges computed from the fleet store, the same on every target (without a prefix)."""

UNICODE_KEY = ("flag-ключ-🚩-名前-" * 20)[:200]
"""A flag key of 200 characters outside ASCII."""


# -- scrapes against the traffic ------------------------------------------------------------------------


def landed(tally: Tally, app: Gunicorn) -> bool:
    """True once the counters and the fleet store hold exactly every tallied evaluation.

    Until then it raises AssertionError naming what differs, which `wait_for` reports on timeout.
    """
    counted = parse_scrape(app.scrape().text).evaluations
    if counted != dict(tally.evaluations):
        raise AssertionError(f"counters differ from the traffic: {differences(counted, dict(tally.evaluations))}")
    stored = {flag: (stats.total, stats.errors) for flag, stats in app.fleet_snapshot().flags.items()}
    errors = tally.errors()
    expected = {flag: (total, errors[flag]) for flag, total in tally.totals().items()}
    if stored != expected:
        raise AssertionError(f"the store differs from the traffic: {differences(stored, expected)}")
    return True


def differences(seen: Mapping[Any, Any], expected: Mapping[Any, Any], most: int = 5) -> str:
    """The first `most` keys whose values differ, as `key: seen != expected`."""
    keys = [key for key in sorted({*seen, *expected}, key=repr) if seen.get(key) != expected.get(key)]
    shown = ", ".join(f"{key}: {seen.get(key)} != {expected.get(key)}" for key in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def assert_scrape_is_true(tally: Tally, text: str) -> None:
    """Exact counters, histogram counts and error rates; unique users within 2%."""
    scrape = parse_scrape(text)
    assert scrape.evaluations == dict(tally.evaluations)
    totals = tally.totals()
    assert scrape.histogram_counts == dict(totals)
    assert scrape.error_rates == {flag: tally.error_rate(flag) for flag in totals}
    assert set(scrape.unique_users) == set(totals)
    for flag, users in tally.users.items():
        assert abs(scrape.unique_users[flag] - len(users)) <= 0.02 * len(users), (flag, scrape.unique_users)
    assert scrape.samples["flagmetrics_store_up"] == 1.0
    assert scrape.samples["flagmetrics_dropped_events_total"] == 0.0


def assert_promtool_accepts(body: bytes) -> None:
    """`promtool check metrics` passes a scrape and has nothing to say about it."""
    promtool = require_binary("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text scrape, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample of `registry`, 0 when it does not exist (yet)."""
    return registry.get_sample_value(name, labels) or 0.0


def users(first: int, stop: int) -> frozenset[bytes]:
    """The digests of user ids user-`first` to user-`stop - 1`, as a batch carries them."""
    return digest_users((f"user-{i}" for i in range(first, stop)), b"")


def batch(seq: int, flags: dict[str, FlagDelta], pins: dict[str, Pin] | None = None, writer: str = "w") -> Batch:
    """A store batch from one writer."""
    return Batch(writer=writer, seq=seq, flags=flags, pins=pins or {})


def run_with(store: StoreT, scenario: Callable[[StoreT], Awaitable[Any]]) -> Any:
    """Run an async scenario against `store`, then close the store."""

    async def main() -> Any:
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def require_binary(name: str, package: str) -> str:
    """The path of a binary the tests start; skip without it, but fail when CI requires it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("FLAGMETRICS_REQUIRE_REDIS") == "1":
            pytest.fail(f"{name} is not installed and FLAGMETRICS_REQUIRE_REDIS=1 (apt-get install {package})")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


@dataclass
class Gunicorn:
    """gunicorn started from the repository's gunicorn.conf.py."""

    proc: subprocess.Popen[bytes]
    port: int
    workers: int
    log: Path
    multiproc_dir: Path
    redis_url: str | None = None
    redis_cluster: bool = False
    key_prefix: str = "flagmetrics"
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def worker_pids(self) -> list[int]:
        return [pid for pid in children_of(self.proc.pid) if pid_alive(pid)]

    def scrape(self, headers: dict[str, str] | None = None) -> httpx.Response:
        """One scrape of /metrics on a new connection, so that any worker may answer."""
        auth = {"authorization": f"Bearer {self.token}"} if self.token else {}
        with httpx.Client(timeout=10) as client:
            return client.get(f"{self.url}/metrics", headers={"connection": "close", **auth, **(headers or {})})

    def wait_ready(self, timeout_s: float = 30) -> None:
        wait_for(
            lambda: len(self.worker_pids()) == self.workers and self.scrape().status_code == 200,
            timeout_s,
            f"gunicorn with {self.workers} workers to answer (log: {self.log})",
        )

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the master as a deploy would (SIGTERM: workers finish and flush), waiting for it to exit."""
        stop_process(self.proc, timeout_s=timeout_s)

    def worker_exits(self) -> int:
        """How many workers exited so far (gunicorn logs every worker it boots)."""
        return self.logs().count("Booting worker with pid") - self.workers

    def fleet_snapshot(self) -> Snapshot:
        """Read the fleet store the app writes to, directly (raises while it is unreachable)."""
        if self.redis_url is None:
            return LocalStore(str(self.multiproc_dir)).read()

        async def read() -> Snapshot:
            store = RedisStore.from_url(self.redis_url or "", cluster=self.redis_cluster, key_prefix=self.key_prefix)
            try:
                return await store.snapshot()
            finally:
                await store.close()

        return asyncio.run(read())


def start_sentinels(directory: Path) -> RedisSentinels:
    """A master, one replica and three sentinels on free loopback ports, the replica in sync and seen."""
    group = RedisSentinels(binary=require_binary("redis-server", "redis-server"), directory=directory)
    group.start()
    return group


def start_cluster(directory: Path) -> RedisCluster:
    """3 masters and 3 replicas on free loopback ports, healthy."""
    cluster = RedisCluster(
        binary=require_binary("redis-server", "redis-server"),
        cli=require_binary("redis-cli", "redis-server"),
        directory=directory,
    )
    cluster.start()
    return cluster


class Scraper(threading.Thread):
    """Scrape continuously on fresh connections and note every sample that went backwards.

    A worker that is stopping closes the connections it accepted but has not read a request from
    (uvicorn's shutdown does), so a scrape may find its connection closed with no answer, as a
    Prometheus scrape would. Those are noted apart in `dropped`: at most one per worker exit, as
    one scrape is in flight at a time. Any other error, or an answer that is not 200, is a failure.
    """

    def __init__(self, app: Gunicorn, url: str | None = None) -> None:
        """Scrape the app's workers, or `url` (the master's metrics port)."""
        super().__init__(daemon=True)
        self._app = app
        self._url = url
        self._stopping = threading.Event()
        self.scrapes = 0
        self.failures: list[str] = []
        self.dropped: list[str] = []
        self.regressions: list[str] = []
        self.durations: list[float] = []
        """Seconds each answered scrape took."""

    def run(self) -> None:
        last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                response = self._app.scrape() if self._url is None else httpx.get(self._url, timeout=10)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # closed or reset unanswered
                self.dropped.append(repr(exc))
                continue
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            if response.status_code != 200:
                self.failures.append(f"status {response.status_code}")
                continue
            self.scrapes += 1
            self.durations.append(time.monotonic() - started)
            for key, value in monotonic_samples(response.text).items():
                if value < last.get(key, float("-inf")):
                    self.regressions.append(f"{key}: {last[key]} -> {value}")
                last[key] = value

    def stop(self, at_least: int) -> None:
        """Stop once `at_least` scrapes were made."""
        wait_for(lambda: self.scrapes >= at_least, 60, f"{at_least} scrapes")
        self._stopping.set()
        self.join(timeout=30)

    def assert_clean(self) -> None:
        """No failed scrape, no sample that went backwards, a closed connection only per worker exit."""
        assert self.failures == []
        assert self.regressions == []
        assert len(self.dropped) <= self._app.worker_exits(), self.dropped


def monotonic_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample that must never decrease: counters, histogram series and unique users."""
    samples = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("counter", "histogram") or family.name == "feature_flag_unique_users":
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# -- traffic and scrapes through a failover ---------------------------------------------------------------


class Load(threading.Thread):
    """Evaluations of new users, in rounds of 50 users, until stopped; tallied by the app's answers."""

    def __init__(self, app: Gunicorn) -> None:
        super().__init__(daemon=True)
        self._app = app
        self._stopping = threading.Event()
        self.tally = Tally()
        self.rounds: list[tuple[float, int]] = []
        """When each round ended and the evaluations answered by then, in all."""

    def run(self) -> None:
        first, answered = 0, 0
        while not self._stopping.is_set():
            tally = asyncio.run(send(self._app.url, list(plan(50, first=first)), concurrency=4))
            self.tally.update(tally)
            answered += sum(tally.evaluations.values())
            self.rounds.append((time.monotonic(), answered))
            first += 50

    def answered_by(self, moment: float) -> int:
        """Evaluations answered in the rounds that ended by `moment`."""
        return max((answered for at, answered in self.rounds if at <= moment), default=0)

    def stop(self) -> None:
        self._stopping.set()
        self.join(60)
        assert not self.is_alive()


class Scrapes(threading.Thread):
    """Scrapes on fresh connections throughout, noting each one's time, duration and fleet gauges."""

    def __init__(self, app: Gunicorn) -> None:
        super().__init__(daemon=True)
        self._app = app
        self._stopping = threading.Event()
        self.seen: list[tuple[float, float, int, float, bool]] = []
        """(started, seconds, status, store_up, whether any fleet gauge was in it)"""

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    response = client.get(f"{self._app.url}/metrics", headers={"connection": "close"})
                except httpx.TransportError:
                    self.seen.append((started, time.monotonic() - started, 0, -1.0, False))
                    continue
                took = time.monotonic() - started
                scrape = parse_scrape(response.text) if response.status_code == 200 else None
                up = scrape.samples.get("flagmetrics_store_up", -1.0) if scrape else -1.0
                gauges = bool(scrape and (scrape.unique_users or scrape.error_rates))
                self.seen.append((started, took, response.status_code, up, gauges))
                self._stopping.wait(0.05)

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)
        assert not self.is_alive()
