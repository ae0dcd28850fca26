"""Access: a token on the metrics route and on the master's metrics port, Redis with AUTH and TLS, and
no raw user id ever reaching Redis, every key under the configured prefix.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from examples.traffic import parse_scrape, plan, send
from flagmetrics.stores.redis import KeyLayout
from tests.helpers import Gunicorn, assert_scrape_is_true, landed, require_binary
from tests.processes import LOOPBACK, RedisServer, free_port, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token"


def test_metrics_route_requires_the_token(gunicorn: Callable[..., Gunicorn]) -> None:
    """With FLAGMETRICS_METRICS_TOKEN set, /metrics answers 401 without the right bearer token."""
    app = gunicorn(FLAGMETRICS_METRICS_TOKEN=TOKEN)
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert b"feature_flag" not in response.content
        response = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert b"flagmetrics_store_up 1.0" in response.content


def test_metrics_port_on_the_master_outlives_its_workers(gunicorn: Callable[..., Gunicorn]) -> None:
    """The master serves every worker's metrics on its own port, with the token, across worker deaths."""
    port = free_port()
    app = gunicorn(FLAGMETRICS_METRICS_PORT=str(port), FLAGMETRICS_METRICS_TOKEN=TOKEN)
    tally = asyncio.run(send(app.url, list(plan(200))))
    wait_for(lambda: landed(tally, app), 15, "the flushes to land")
    url = f"http://{LOOPBACK}:{port}/metrics"
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url, timeout=10).status_code == 401
    assert_scrape_is_true(tally, httpx.get(url, headers=auth, timeout=10).text)

    old = set(app.worker_pids())
    for pid in old:  # every worker replaced: the master's port and the totals stay
        os.kill(pid, signal.SIGTERM)
    wait_for(
        lambda: len(new := set(app.worker_pids())) == app.workers and not new & old, 30, "the workers to be replaced"
    )
    assert_scrape_is_true(tally, httpx.get(url, headers=auth, timeout=10).text)
    response = httpx.get(url, headers={**auth, "accept": "application/openmetrics-text; version=1.0.0"}, timeout=10)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    openssl = require_binary("openssl", "openssl")
    names = ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    ca_key, ca, key, csr, cert = (directory / name for name in names)
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    new_key = ["-newkey", "rsa:2048", "-nodes"]
    for args in (
        ["req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test-ca"],
        ["req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-extfile", ext],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


class TLSRedisServer(RedisServer):
    """redis-server answering only TLS, with a password."""

    password: str = "redis-pa55"
    ca: Path = Path()

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=LOOPBACK, port=self.port, password=self.password, ssl=True, ssl_ca_certs=str(self.ca), socket_timeout=2
        )

    def ping(self) -> bool:
        return bool(self.client().ping())

    @property
    def url(self) -> str:
        return f"rediss://:{self.password}@{LOOPBACK}:{self.port}/0?ssl_ca_certs={self.ca}"


def test_redis_with_auth_and_tls(gunicorn: Callable[..., Gunicorn], tmp_path: Path) -> None:
    """A rediss:// URL with a password: the workers deliver over TLS; no password, no delivery."""
    ca, cert, key = _certificates(tmp_path)
    server = TLSRedisServer(binary=require_binary("redis-server", "redis-server"), directory=tmp_path / "redis")
    server.directory.mkdir()
    server.ca = ca
    server.extra_args = (
        "--requirepass", server.password,
        "--port", "0",
        "--tls-port", str(server.port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    server.start()
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis(host=LOOPBACK, port=server.port, socket_timeout=2).ping()  # plain text is refused
        app = gunicorn(FLAGMETRICS_REDIS_URL=server.url)
        tally = asyncio.run(send(app.url, list(plan(300))))
        wait_for(lambda: landed(tally, app), 15, "the flushes to land over TLS")
        assert_scrape_is_true(tally, app.scrape().text)

        wrong = gunicorn(FLAGMETRICS_REDIS_URL=server.url.replace(server.password, "wrong"))
        asyncio.run(send(wrong.url, list(plan(10))))
        scrape = parse_scrape(wrong.scrape().text)
        assert scrape.samples["flagmetrics_store_up"] == 0.0
    finally:
        server.stop()


class Monitor(threading.Thread):
    """Everything redis-server executes, from MONITOR on a raw connection."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self._sock = socket.create_connection((LOOPBACK, port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self.received = bytearray()

    def run(self) -> None:
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.received += chunk

    def stop(self) -> bytes:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self.join(timeout=10)
        return bytes(self.received)


def test_no_raw_user_id_reaches_redis(gunicorn: Callable[..., Gunicorn], redis_server: RedisServer) -> None:
    """MONITOR sees digests only, never a targeting key, and every key is under the prefix."""
    monitor = Monitor(redis_server.port)
    monitor.start()
    app = gunicorn(FLAGMETRICS_REDIS_URL=redis_server.url, FLAGMETRICS_KEY_PREFIX="fm-tenant-a")
    tally = asyncio.run(send(app.url, list(plan(300))))
    wait_for(lambda: landed(tally, app), 15, "the flushes to land")
    seen = monitor.stop()
    assert b"EVALSHA" in seen.upper() or b"EVAL" in seen.upper()
    assert KeyLayout("fm-tenant-a").users("button_color").encode() in seen
    for user in sorted({user for users in tally.users.values() for user in users}):
        assert user.encode() not in seen, user
    keys = [key.decode() for key in redis_server.client().scan_iter()]
    assert keys
    assert all(key.startswith("{fm-tenant-a:") for key in keys), keys
