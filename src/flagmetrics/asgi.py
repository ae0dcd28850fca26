"""Any ASGI framework (FastAPI, Starlette, a bare ASGI callable): serve the metrics and run the flusher.

    exporter = PrometheusExporter()
    app = FastAPI(lifespan=lifespan(exporter))
    app.mount("/metrics", metrics_app(exporter))

`metrics_app` answers a scrape exactly as the Litestar plugin's route does (it is the same code):
every worker's counters and histograms plus the fleet gauges, OpenMetrics when the scraper asks,
rendered off the event loop, behind the same bearer token or basic auth. `lifespan` starts the
exporter's flusher with the app and delivers what is buffered when it stops.

Starlette answers a request for `/metrics` to an app mounted there with a redirect to `/metrics/`
(Prometheus follows it); a route serves `/metrics` itself:
`FastAPI(lifespan=lifespan(exporter), routes=[starlette.routing.Route("/metrics", metrics_app(exporter))])`.
Neither framework is needed by this module: it speaks ASGI 3 alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from flagmetrics.auth import Credentials, credentials_for
from flagmetrics.exposition import Reply, reply
from flagmetrics.logs import logger

if TYPE_CHECKING:
    from flagmetrics.exporter import PrometheusExporter

__all__ = ["MetricsApp", "lifespan", "metrics_app"]

Scope = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message = MutableMapping[str, Any]
"""An ASGI event, received or sent."""
Receive = Callable[[], Awaitable[Message]]
"""The ASGI `receive` callable."""
Send = Callable[[Message], Awaitable[None]]
"""The ASGI `send` callable."""

_ALLOWED = "GET, HEAD"


def lifespan(
    exporter: PrometheusExporter, *, shutdown_timeout_s: float = 5.0
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan in Starlette's and FastAPI's form: called with the app, it returns an async context manager.

    Entering it starts the exporter's background flusher on the running loop; leaving it stops the
    flusher, delivers what is buffered (waiting at most `shutdown_timeout_s` seconds, after which it
    goes to the spool) and closes the store. A bare ASGI app can enter it on its own lifespan events,
    or let `metrics_app` handle them.
    """

    @asynccontextmanager
    async def running(app: Any) -> AsyncIterator[None]:
        await exporter.start()
        try:
            yield
        finally:
            await exporter.close(shutdown_timeout_s)

    return running


def metrics_app(
    exporter: PrometheusExporter,
    *,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    shutdown_timeout_s: float = 5.0,
) -> MetricsApp:
    """An ASGI app serving the metrics of `exporter` on any path it is given (mount or route it).

    Args:
        exporter: The exporter whose metrics are served.
        bearer_token: Require `Authorization: Bearer <token>`; default `FLAGMETRICS_METRICS_TOKEN`.
        basic_auth: Require HTTP basic auth with this (user, password).
        shutdown_timeout_s: When it is the top-level app and runs the lifespan itself: the longest
            wait for the final flush, in seconds.
    """
    return MetricsApp(exporter, bearer_token=bearer_token, basic_auth=basic_auth, shutdown_timeout_s=shutdown_timeout_s)


class MetricsApp:
    """The ASGI app `metrics_app` returns: GET and HEAD answer a scrape; the lifespan protocol runs `lifespan`.

    Mounted in a framework, it never sees the lifespan events (the framework's own lifespan runs);
    as the top-level app, or handed the lifespan scope by a bare ASGI app, it starts and stops the
    exporter's flusher.
    """

    __slots__ = ("_credentials", "_exporter", "_lifespan")

    def __init__(
        self,
        exporter: PrometheusExporter,
        *,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        """See `metrics_app`."""
        self._exporter = exporter
        self._credentials: Credentials | None = credentials_for(
            exporter.settings, bearer_token=bearer_token, basic_auth=basic_auth
        )
        self._lifespan = lifespan(exporter, shutdown_timeout_s=shutdown_timeout_s)

    @property
    def exporter(self) -> PrometheusExporter:
        """The exporter this app serves."""
        return self._exporter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI connection: `http` (a scrape) or `lifespan`; anything else is refused."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._run_lifespan(receive, send)
        else:
            raise RuntimeError(f"flagmetrics' metrics app serves HTTP only, not {kind!r}")

    async def _http(self, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            answer = Reply(405, b"method not allowed\n", (("content-type", "text/plain"), ("allow", _ALLOWED)))
        else:
            headers = _headers(scope)
            answer = await reply(
                self._exporter,
                self._credentials,
                authorization=headers.get("authorization"),
                accept=headers.get("accept"),
            )
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
        raw.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else answer.body})

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol: start on `lifespan.startup`, flush and close on `lifespan.shutdown`."""
        running = self._lifespan(self)
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await running.__aenter__()
        except Exception as exc:
            logger.exception("flagmetrics: could not start the exporter")
            await send({"type": "lifespan.startup.failed", "message": f"flagmetrics could not start: {exc!r}"})
            return
        await send({"type": "lifespan.startup.complete"})
        try:
            while (await receive())["type"] != "lifespan.shutdown":
                pass
        except BaseException:
            await running.__aexit__(None, None, None)
            raise
        try:
            await running.__aexit__(None, None, None)
        except Exception as exc:
            logger.exception("flagmetrics: could not stop the exporter")
            await send({"type": "lifespan.shutdown.failed", "message": f"flagmetrics could not stop: {exc!r}"})
            return
        await send({"type": "lifespan.shutdown.complete"})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers, lower-case names (as ASGI gives them), the last of repeated ones."""
    return {bytes(name).decode("latin-1"): bytes(value).decode("latin-1") for name, value in scope.get("headers", ())}
