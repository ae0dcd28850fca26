"""`FlagMetricsPlugin`: serves the metrics route and runs the exporter's flusher with the app's lifespan."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from flagmetrics.exceptions import ConfigurationError, MissingDependencyError

try:
    from litestar import Litestar, Request, Response, get
    from litestar.config.app import AppConfig
    from litestar.handlers import HTTPRouteHandler
    from litestar.plugins import InitPlugin
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("litestar", "litestar") from exc

from flagmetrics.exporter import PrometheusExporter
from flagmetrics.exposition import render

__all__ = ["FlagMetricsPlugin"]


class FlagMetricsPlugin(InitPlugin):
    """Add a metrics route to a Litestar app and flush the exporter for the app's lifetime.

    Any worker answers a scrape with every worker's counters and histograms plus the fleet gauges;
    the file merge and rendering run in a thread, and OpenMetrics is served when the scraper asks.
    """

    __slots__ = ("_basic", "_exporter", "_path", "_shutdown_timeout_s", "_token")

    def __init__(
        self,
        exporter: PrometheusExporter | None = None,
        *,
        path: str = "/metrics",
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        """Configure the route.

        Args:
            exporter: The exporter to serve and flush; a new one from the environment when None.
            path: Path of the metrics route.
            bearer_token: Require `Authorization: Bearer <token>`; default `FLAGMETRICS_METRICS_TOKEN`.
            basic_auth: Require HTTP basic auth with this (user, password).
            shutdown_timeout_s: Longest wait for the final flush when the app stops, in seconds.
        """
        if not path.startswith("/"):
            raise ConfigurationError(f"`path` must start with '/', got {path!r}")
        self._exporter = exporter if exporter is not None else PrometheusExporter()
        self._path = path
        token = bearer_token if bearer_token is not None else self._exporter.settings.metrics_token
        if token is not None and not token:
            raise ConfigurationError("`bearer_token` must not be empty; pass None to serve without auth")
        if basic_auth is not None and (len(basic_auth) != 2 or not all(basic_auth)):
            raise ConfigurationError("`basic_auth` must be a (user, password) pair of non-empty strings")
        self._token = token.encode() if token else None
        self._basic = f"{basic_auth[0]}:{basic_auth[1]}".encode() if basic_auth else None
        self._shutdown_timeout_s = shutdown_timeout_s

    @property
    def exporter(self) -> PrometheusExporter:
        """The exporter this plugin serves."""
        return self._exporter

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register the metrics route and the lifespan that starts and stops the flusher."""
        app_config.route_handlers.append(self._route())
        app_config.lifespan.append(self._lifespan)
        return app_config

    @asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        await self._exporter.start()
        try:
            yield
        finally:
            await self._exporter.close(self._shutdown_timeout_s)

    def _authorized(self, header: str | None) -> bool:
        if self._token is None and self._basic is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        scheme = scheme.lower()
        if self._token is not None and scheme == "bearer":
            return hmac.compare_digest(value.strip().encode(), self._token)
        if self._basic is not None and scheme == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, self._basic)
        return False

    def _route(self) -> HTTPRouteHandler:
        exporter = self._exporter
        authorized = self._authorized
        challenge = 'Bearer realm="metrics"' if self._token is not None else 'Basic realm="metrics"'

        @get(self._path, include_in_schema=False, name="flagmetrics")
        async def metrics(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
            if not authorized(request.headers.get("authorization")):
                return Response(
                    b"unauthorized\n",
                    status_code=401,
                    media_type="text/plain",
                    headers={"www-authenticate": challenge},
                )
            body, content_type = await render(exporter, request.headers.get("accept"))
            # Given as a header so that Litestar does not append a second charset.
            return Response(
                body,
                headers={"content-type": content_type, "x-flagmetrics-worker": str(os.getpid())},
            )

        return metrics
