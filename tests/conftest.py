"""Fixtures that start real processes (redis-server, gunicorn with uvicorn workers) on free loopback ports.

Every process is started here, waited for with a deadline, and stopped by the pid that was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fakeredis
import httpx
import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.parser import text_string_to_metric_families

from examples.traffic import Tally, parse_scrape
from flagmetrics import LocalStore, RedisStore
from flagmetrics.buffer import digest_users
from flagmetrics.stores.base import Batch, FlagDelta, Pin, Snapshot, Store
from tests.processes import (
    LOOPBACK,
    REPO,
    RedisCluster,
    RedisServer,
    children_of,
    clean_environ,
    free_port,
    pid_alive,
    stop_process,
    wait_for,
)

StoreT = TypeVar("StoreT", bound=Store)


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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLAGMETRICS_* settings and no multiprocess directory leak into a test from the environment."""
    if getattr(values.ValueClass, "_multiprocess", False):
        pytest.fail(
            "prometheus_client was imported in multiprocess mode: run the tests with PROMETHEUS_MULTIPROC_DIR unset",
            pytrace=False,
        )
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for name in list(os.environ):
        if name.startswith("FLAGMETRICS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """A fakeredis server for fast unit tests (the real one is `redis_server`)."""
    return fakeredis.FakeServer()


UNICODE_KEY = ("flag-ключ-🚩-名前-" * 20)[:200]
"""A flag key of 200 characters outside ASCII."""


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


# -- redis-server ------------------------------------------------------------------------------------


def require_binary(name: str, package: str) -> str:
    """The path of a binary the tests start; skip without it, but fail when CI requires it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("FLAGMETRICS_REQUIRE_REDIS") == "1":
            pytest.fail(f"{name} is not installed and FLAGMETRICS_REQUIRE_REDIS=1 (apt-get install {package})")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer(binary=require_binary("redis-server", "redis-server"), directory=tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- gunicorn with uvicorn workers ---------------------------------------------------------------------


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


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn (`gunicorn.conf.py`, uvicorn workers) with extra environment; stop it afterwards."""
    started: list[Gunicorn] = []

    def start(app: str = "examples.app:app", workers: int = 4, **env: str) -> Gunicorn:
        port = free_port()
        multiproc_dir = tmp_path / f"multiproc-{port}"
        log = tmp_path / f"gunicorn-{port}.log"
        environ = clean_environ(
            BIND=f"{LOOPBACK}:{port}",
            WEB_CONCURRENCY=str(workers),
            PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
            FLAGMETRICS_FLUSH_INTERVAL_S="0.2",
        )
        environ.update(env)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"), app],
                cwd=REPO,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Gunicorn(
            proc=proc,
            port=port,
            workers=workers,
            log=log,
            multiproc_dir=multiproc_dir,
            redis_url=environ.get("FLAGMETRICS_REDIS_URL"),
            redis_cluster=environ.get("FLAGMETRICS_REDIS_CLUSTER") == "1",
            key_prefix=environ.get("FLAGMETRICS_KEY_PREFIX", "flagmetrics"),
            token=environ.get("FLAGMETRICS_METRICS_TOKEN"),
        )
        started.append(server)
        server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in started:
            workers = children_of(server.proc.pid)
            stop_process(server.proc, timeout_s=15)
            for pid in workers:  # a worker the master could not reap in time
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


# -- Redis Cluster ---------------------------------------------------------------------------------------


def start_cluster(directory: Path) -> RedisCluster:
    """3 masters and 3 replicas on free loopback ports, healthy."""
    cluster = RedisCluster(
        binary=require_binary("redis-server", "redis-server"),
        cli=require_binary("redis-cli", "redis-server"),
        directory=directory,
    )
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster for the session; tests keep apart by key prefix (see `cluster_prefix`)."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A Redis Cluster of this test's own, for tests that kill or change nodes."""
    cluster = start_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own on the session's cluster."""
    return "t" + hashlib.blake2b(request.node.nodeid.encode(), digest_size=6).hexdigest()
