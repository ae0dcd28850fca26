"""`FlagMetricsPlugin`: serves the metrics route and runs the exporter's flusher with the app's lifespan."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from flagmetrics.asgi import lifespan
from flagmetrics.auth import credentials_for
from flagmetrics.exceptions import ConfigurationError, MissingDependencyError

try:
    from litestar import Litestar, Request, Response, get
    from litestar.config.app import AppConfig
    from litestar.handlers import HTTPRouteHandler
    from litestar.plugins import InitPlugin
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("litestar", "litestar") from exc

from flagmetrics.exporter import PrometheusExporter
from flagmetrics.exposition import reply
from flagmetrics.logs import logger

__all__ = ["FlagMetricsPlugin"]


class FlagMetricsPlugin(InitPlugin):
    """Add a metrics route to a Litestar app and flush the exporter for the app's lifetime.

    Any worker answers a scrape with every worker's counters and histograms plus the fleet gauges;
    the file merge and rendering run in a thread, and OpenMetrics is served when the scraper asks.
    """

    __slots__ = ("_credentials", "_exporter", "_path", "_shutdown_timeout_s")

    def __init__(
        self,
        exporter: PrometheusExporter | None = None,
        *,
        path: str | None = "/metrics",
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        """Configure the route.

        Args:
            exporter: The exporter to serve and flush; a new one from the environment when None.
            path: Path of the metrics route; None adds no route (metrics served on their own port).
            bearer_token: Require `Authorization: Bearer <token>`; default `FLAGMETRICS_METRICS_TOKEN`.
            basic_auth: Require HTTP basic auth with this (user, password).
            shutdown_timeout_s: Longest wait for the final flush when the app stops, in seconds.
        """
        if path is not None and not path.startswith("/"):
            raise ConfigurationError(f"`path` must start with '/', got {path!r}")
        self._exporter = exporter if exporter is not None else PrometheusExporter()
        self._path = path
        self._credentials = credentials_for(self._exporter.settings, bearer_token=bearer_token, basic_auth=basic_auth)
        self._shutdown_timeout_s = shutdown_timeout_s

    @property
    def exporter(self) -> PrometheusExporter:
        """The exporter this plugin serves."""
        return self._exporter

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register the metrics route and the lifespan that starts and stops the flusher."""
        if self._path is not None:
            app_config.route_handlers.append(self._route(self._path))
        app_config.lifespan.append(self._lifespan)
        app_config.on_startup.append(self._attach_flag_client)
        return app_config

    async def _attach_flag_client(self, app: Litestar) -> None:
        """Report the evaluations of the client litestar-flags' plugin builds, in either plugin order."""
        try:
            from litestar_flags import FeatureFlagsPlugin
        except ImportError:
            return
        plugin = next((p for p in app.plugins if isinstance(p, FeatureFlagsPlugin)), None)
        if plugin is None:
            return
        if plugin.client is None:
            # Its startup hook comes after this one: run once more after it. Litestar calls the
            # startup hooks by iterating this very list, so an appended hook runs last.
            if self._attach_flag_client in app.on_startup[-1:]:
                logger.warning("flagmetrics: litestar-flags' client was not built at startup; not attached")
                return
            app.on_startup.append(self._attach_flag_client)
            return
        from flagmetrics.litestar_flags import instrument

        instrument(plugin.client, self._exporter)

    def _lifespan(self, app: Litestar) -> AbstractAsyncContextManager[None]:
        return lifespan(self._exporter, shutdown_timeout_s=self._shutdown_timeout_s)(app)

    def _route(self, path: str) -> HTTPRouteHandler:
        exporter = self._exporter
        credentials = self._credentials

        @get(path, include_in_schema=False, name="flagmetrics")
        async def metrics(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
            answer = await reply(
                exporter,
                credentials,
                authorization=request.headers.get("authorization"),
                accept=request.headers.get("accept"),
            )
            # The content type is given as a header so that Litestar does not append a second charset.
            return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))

        return metrics
