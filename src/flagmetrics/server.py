"""Internal: a threaded HTTP server for the metrics on a port of their own: prometheus_client's WSGI app, with auth."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from flagmetrics.auth import Credentials
from flagmetrics.exposition import ScrapeSource

__all__ = ["start_metrics_server"]

_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing per request."""


def _require(credentials: Credentials, app: _WSGIApp) -> _WSGIApp:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if credentials.allows(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", credentials.challenge)],
        )
        return [b"unauthorized\n"]

    return guarded


def start_metrics_server(
    source: ScrapeSource,
    port: int,
    addr: str = "127.0.0.1",
    *,
    credentials: Credentials | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `source` on `addr:port` from a daemon thread; returns the server and its thread.

    prometheus_client's WSGI app does the content negotiation (OpenMetrics) and compression.
    """
    app: _WSGIApp = make_wsgi_app(source)
    if credentials is not None:
        app = _require(credentials, app)
    # IPv6 addresses need an IPv6 socket: take the family the address resolves to.
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class: type[WSGIServer] = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    httpd: WSGIServer = make_server(addr, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="flagmetrics-metrics-server", daemon=True)
    thread.start()
    return httpd, thread
