"""Fixtures that start real processes (redis-server, gunicorn with uvicorn workers) on free loopback ports.

Every process is started here, waited for with a deadline, and stopped by the pid that was started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest

from flagmetrics.compat import values_in_multiprocess_mode
from tests.helpers import Gunicorn, require_binary, start_cluster, start_sentinels
from tests.processes import (
    LOOPBACK,
    REPO,
    RedisCluster,
    RedisSentinels,
    RedisServer,
    children_of,
    clean_environ,
    free_port,
    pid_alive,
    stop_process,
)

# Tests that start these processes through a fixture get the marker without saying so.
_MARKERS_BY_FIXTURE = {
    "redis_server": "redis",
    "redis_cluster": "redis",
    "fresh_redis_cluster": "redis",
    "redis_sentinels": "redis",
    "fresh_redis_sentinels": "redis",
    "gunicorn": "e2e",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that starts redis-server `redis` and every test that starts gunicorn `e2e`."""
    for item in items:
        for fixture, marker in _MARKERS_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


@pytest.fixture(autouse=True)
def private_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's exporters spool into its own directory, never the host's default one."""
    path = tmp_path / "spool"
    monkeypatch.setenv("FLAGMETRICS_SPOOL_DIR", str(path))
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, private_spool: Path) -> None:
    """No FLAGMETRICS_* settings (but the test's own spool) and no multiprocess directory leak into a test."""
    if values_in_multiprocess_mode():
        pytest.fail(
            "prometheus_client was imported in multiprocess mode: run the tests with PROMETHEUS_MULTIPROC_DIR unset",
            pytrace=False,
        )
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for name in list(os.environ):
        if name.startswith("FLAGMETRICS_") and name != "FLAGMETRICS_SPOOL_DIR":
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """A fakeredis server for fast unit tests (the real one is `redis_server`)."""
    return fakeredis.FakeServer()


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


# -- Redis Sentinel ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinels]:
    """A master, a replica and three sentinels for the session; tests keep apart by key prefix."""
    group = start_sentinels(tmp_path_factory.mktemp("sentinels"))
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def fresh_redis_sentinels(tmp_path: Path) -> Iterator[RedisSentinels]:
    """A master, a replica and three sentinels of this test's own, for tests that fail the master over."""
    group = start_sentinels(tmp_path / "sentinels")
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def cluster_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own on the session's cluster."""
    return "t" + hashlib.blake2b(request.node.nodeid.encode(), digest_size=6).hexdigest()
