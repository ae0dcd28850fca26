"""flagmetrics.asgi: the metrics as an ASGI app (in FastAPI, Starlette or bare), its auth, and the lifespan."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import fakeredis
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from flagmetrics import ConfigurationError, PrometheusExporter, Settings
from flagmetrics.asgi import Message, MetricsApp, Receive, Scope, Send, lifespan, metrics_app
from tests.helpers import fake_redis_snapshot, make_exporter

pytestmark = pytest.mark.usefixtures("clean_env")

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
EVENT = SimpleNamespace(flag_key="f", reason="DEFAULT", variant="on", targeting_key="u1", evaluation_duration_ms=1.0)


def event(user: str) -> SimpleNamespace:
    return SimpleNamespace(flag_key="f", reason="DEFAULT", variant="on", targeting_key=user, evaluation_duration_ms=1.0)


def get(app: Any, path: str = "/metrics", method: str = "GET", **headers: str) -> httpx.Response:
    """One request to `app`, in a loop of its own (httpx's ASGI transport runs no lifespan)."""

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(main())


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- serving ---------------------------------------------------------------------------------------


def test_serves_the_text_format_with_the_worker_pid(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server)[0]
    exporter.record_sync(EVENT)
    response = get(metrics_app(exporter))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["x-flagmetrics-worker"].isdigit()
    assert int(response.headers["content-length"]) == len(response.content)
    assert 'feature_flag_evaluations_total{flag_key="f",reason="DEFAULT",variant="on"} 1.0' in response.text


def test_serves_openmetrics_when_asked(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server)[0]
    response = get(metrics_app(exporter), accept=OPENMETRICS)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_head_answers_the_headers_without_a_body(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server)[0]
    exporter.record_sync(EVENT)
    response = get(metrics_app(exporter), method="HEAD")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_refused(server: fakeredis.FakeServer, method: str) -> None:
    response = get(metrics_app(make_exporter(server)[0]), method=method)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_same_answer_as_the_litestar_route(server: fakeredis.FakeServer) -> None:
    """Both integrations render through `flagmetrics.exposition.reply`: the same metrics and headers."""
    from litestar.testing import TestClient

    from tests.test_litestar import make_app

    exporter = make_exporter(server)[0]
    exporter.record_sync(EVENT)
    asgi = get(metrics_app(exporter))
    with TestClient(make_app(exporter)) as client:
        litestar = client.get("/metrics")
    assert asgi.headers["content-type"] == litestar.headers["content-type"]
    assert asgi.headers["x-flagmetrics-worker"] == litestar.headers["x-flagmetrics-worker"]
    line = 'feature_flag_evaluations_total{flag_key="f",reason="DEFAULT",variant="on"} 1.0'
    assert line in asgi.text
    assert line in litestar.text


def test_a_failed_render_answers_500_and_logs(
    server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> tuple[bytes, str]:
        raise OSError("disk gone")

    monkeypatch.setattr("flagmetrics.exposition.render", broken)
    with caplog.at_level(logging.ERROR, logger="flagmetrics"):
        response = get(metrics_app(make_exporter(server)[0]))
    assert response.status_code == 500
    assert response.text == "could not render the metrics\n"
    assert "could not render the metrics" in caplog.text


def test_websocket_scope_is_refused(server: fakeredis.FakeServer) -> None:
    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing may be sent")

    with pytest.raises(RuntimeError, match="HTTP only"):
        asyncio.run(metrics_app(make_exporter(server)[0])({"type": "websocket"}, receive, send))


# -- in the frameworks -----------------------------------------------------------------------------


def test_fastapi_route_serves_metrics_at_its_path(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server)[0]
    app = FastAPI(routes=[Route("/metrics", metrics_app(exporter))])
    assert get(app).status_code == 200
    assert "/metrics" not in get(app, "/openapi.json").text  # not an API endpoint


def test_mounted_app_serves_below_its_mount_and_starlette_redirects_the_bare_path(
    server: fakeredis.FakeServer,
) -> None:
    exporter = make_exporter(server)[0]
    exporter.record_sync(EVENT)
    app = Starlette(routes=[Mount("/metrics", app=metrics_app(exporter))])
    response = get(app, "/metrics/")
    assert response.status_code == 200
    assert "feature_flag_evaluations_total" in response.text
    redirect = get(app, "/metrics")
    assert (redirect.status_code, redirect.headers["location"]) == (307, "http://test/metrics/")


def test_metrics_app_is_an_asgi_app_to_starlette(server: fakeredis.FakeServer) -> None:
    """An instance, not a function: Starlette's Route passes it the raw ASGI call, not a Request."""
    app = metrics_app(make_exporter(server)[0])
    assert isinstance(app, MetricsApp)
    starlette = Starlette(routes=[Route("/metrics", app)])
    assert get(starlette).status_code == 200


# -- auth ------------------------------------------------------------------------------------------


def test_bearer_token_required(server: fakeredis.FakeServer) -> None:
    app = metrics_app(make_exporter(server)[0], bearer_token="s3cret")
    refused = get(app)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert get(app, authorization="Bearer wrong").status_code == 401
    assert get(app, authorization="Bearer s3cret").status_code == 200


def test_bearer_token_from_settings(server: fakeredis.FakeServer) -> None:
    app = metrics_app(make_exporter(server, settings=Settings(metrics_token="from-env"))[0])
    assert get(app).status_code == 401
    assert get(app, authorization="Bearer from-env").status_code == 200


def test_basic_auth(server: fakeredis.FakeServer) -> None:
    app = metrics_app(make_exporter(server)[0], basic_auth=("prom", "pw"))
    refused = get(app)
    assert (refused.status_code, refused.headers["www-authenticate"]) == (401, 'Basic realm="metrics"')
    assert get(app, authorization=basic("prom", "nope")).status_code == 401
    assert get(app, authorization=basic("prom", "pw")).status_code == 200


def test_head_needs_the_credentials_too(server: fakeredis.FakeServer) -> None:
    app = metrics_app(make_exporter(server)[0], bearer_token="s3cret")
    assert get(app, method="HEAD").status_code == 401


def test_empty_bearer_token_is_rejected(server: fakeredis.FakeServer) -> None:
    with pytest.raises(ConfigurationError, match="bearer_token"):
        metrics_app(make_exporter(server)[0], bearer_token="")


# -- the lifespan ----------------------------------------------------------------------------------


async def run_fastapi(app: FastAPI, exporter: PrometheusExporter, users: list[str]) -> bool:
    """Run `app`'s lifespan, record one event per user inside it; whether the flusher ran meanwhile."""
    async with app.router.lifespan_context(app):
        for user in users:
            exporter.record_sync(event(user))
        return exporter._flusher.running


def test_fastapi_lifespan_starts_the_flusher_and_flushes_at_shutdown(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, flush_interval_s=3600)[0]
    app = FastAPI(lifespan=lifespan(exporter))
    assert asyncio.run(run_fastapi(app, exporter, ["u1", "u2", "u1"])) is True
    stats = fake_redis_snapshot(server).flags["f"]
    assert (stats.total, stats.errors, stats.unique_users) == (3, 0, 2)


def test_lifespan_flushes_even_when_the_app_fails(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, flush_interval_s=3600)[0]

    async def main() -> None:
        async with lifespan(exporter)(None):
            exporter.record_sync(EVENT)
            raise RuntimeError("the app broke")

    with pytest.raises(RuntimeError, match="the app broke"):
        asyncio.run(main())
    assert fake_redis_snapshot(server).flags["f"].total == 1


def test_lifespan_inside_an_apps_own_lifespan(server: fakeredis.FakeServer) -> None:
    """Composed into a lifespan of the app's own, as an app with its own startup work does."""
    exporter = make_exporter(server, flush_interval_s=3600)[0]

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(exporter)(app):
            yield

    app = FastAPI(lifespan=own)
    assert asyncio.run(run_fastapi(app, exporter, ["u1"])) is True
    assert fake_redis_snapshot(server).flags["f"].total == 1


class LifespanDriver:
    """Plays the server's side of the ASGI lifespan protocol against an app."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []
        self.replied = asyncio.Event()

    async def receive(self) -> Message:
        return await self.incoming.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.replied.set()

    async def ask(self, kind: str) -> Message:
        self.replied.clear()
        await self.incoming.put({"type": kind})
        await asyncio.wait_for(self.replied.wait(), 10)
        return self.sent[-1]


def test_bare_asgi_app_hands_the_lifespan_to_the_metrics_app(server: fakeredis.FakeServer) -> None:
    """A bare ASGI app routes `/metrics` and the lifespan scope to the metrics app, as the docs show."""
    exporter = make_exporter(server, flush_interval_s=3600)[0]
    metrics = metrics_app(exporter)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or scope.get("path") == "/metrics":
            await metrics(scope, receive, send)
            return
        exporter.record_sync(event("u1"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> tuple[Message, bool, Message]:
        driver = LifespanDriver()
        task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, driver.receive, driver.send))
        started = await driver.ask("lifespan.startup")
        running = exporter._flusher.running
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/evaluate")).status_code == 204
            assert (await client.get("/metrics")).status_code == 200
        stopped = await driver.ask("lifespan.shutdown")
        await asyncio.wait_for(task, 10)
        return started, running, stopped

    started, running, stopped = asyncio.run(main())
    assert started == {"type": "lifespan.startup.complete"}
    assert running is True
    assert stopped == {"type": "lifespan.shutdown.complete"}
    assert fake_redis_snapshot(server).flags["f"].total == 1


def test_failed_startup_is_reported_to_the_server(
    server: fakeredis.FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = make_exporter(server)[0]

    async def broken() -> None:
        raise OSError("no loop for you")

    monkeypatch.setattr(exporter, "start", broken)

    async def main() -> Message:
        driver = LifespanDriver()
        task = asyncio.create_task(metrics_app(exporter)({"type": "lifespan"}, driver.receive, driver.send))
        failed = await driver.ask("lifespan.startup")
        await asyncio.wait_for(task, 10)
        return failed

    with caplog.at_level(logging.ERROR, logger="flagmetrics"):
        failed = asyncio.run(main())
    assert failed["type"] == "lifespan.startup.failed"
    assert "no loop for you" in failed["message"]
    assert "could not start the exporter" in caplog.text
