"""flagmetrics.litestar: the metrics route, its auth, and the flusher run by the app's lifespan."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from litestar import Litestar, Request, get
from litestar.testing import TestClient

from flagmetrics import ConfigurationError, PrometheusExporter, Settings
from flagmetrics.litestar import FlagMetricsPlugin
from tests.helpers import fake_redis_snapshot, make_exporter
from tests.processes import wait_for

pytestmark = pytest.mark.usefixtures("clean_env")

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def make_app(exporter: PrometheusExporter, **plugin_kwargs: Any) -> Litestar:
    """An app with the plugin and a route that records one evaluation on the app's own loop."""

    @get("/evaluate")
    async def evaluate(request: Request[Any, Any, Any]) -> str:
        user = request.query_params.get("user")
        await exporter.record(
            SimpleNamespace(
                flag_key="f", reason="DEFAULT", variant="on", targeting_key=user, evaluation_duration_ms=1.0
            )
        )
        return "ok"

    return Litestar(route_handlers=[evaluate], plugins=[FlagMetricsPlugin(exporter, **plugin_kwargs)])


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- the route -------------------------------------------------------------------------------------


def test_metrics_route_serves_text_format(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0])) as client:
        client.get("/evaluate", params={"user": "u1"})
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'feature_flag_evaluations_total{flag_key="f",reason="DEFAULT",variant="on"} 1.0' in response.text


def test_metrics_route_has_exactly_one_content_type_with_one_charset(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0])) as client:
        response = client.get("/metrics")
    content_types = response.headers.get_list("content-type")
    assert len(content_types) == 1
    assert content_types[0].count("charset") == 1


def test_metrics_route_serves_openmetrics_when_asked(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0])) as client:
        response = client.get("/metrics", headers={"accept": OPENMETRICS})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.headers["content-type"].count("charset") == 1
    assert response.text.endswith("# EOF\n")


def test_custom_path(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0], path="/internal/prom")) as client:
        moved = client.get("/internal/prom")
        default = client.get("/metrics")
    assert (moved.status_code, default.status_code) == (200, 404)
    assert "flagmetrics_store_up" in moved.text


def test_no_path_adds_no_route(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0], path=None)) as client:
        assert client.get("/metrics").status_code == 404


def test_no_path_still_flushes_at_shutdown(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, flush_interval_s=3600)[0]
    with TestClient(make_app(exporter, path=None)) as client:
        assert client.get("/evaluate", params={"user": "u1"}).status_code == 200
    assert fake_redis_snapshot(server).flags["f"].total == 1


def test_path_must_start_with_slash(server: fakeredis.FakeServer) -> None:
    with pytest.raises(ConfigurationError, match="`path`"):
        FlagMetricsPlugin(make_exporter(server)[0], path="metrics")


def test_empty_bearer_token_is_rejected(server: fakeredis.FakeServer) -> None:
    with pytest.raises(ConfigurationError, match="`bearer_token`"):
        FlagMetricsPlugin(make_exporter(server)[0], bearer_token="")


def test_incomplete_basic_auth_is_rejected(server: fakeredis.FakeServer) -> None:
    with pytest.raises(ConfigurationError, match="`basic_auth`"):
        FlagMetricsPlugin(make_exporter(server)[0], basic_auth=("user", ""))


# -- bearer token ----------------------------------------------------------------------------------


def test_bearer_token_required(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0], bearer_token="s3cret")) as client:
        response = client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert "feature_flag" not in response.text


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong", "Bearer s3cret-and-more", "Bearer ", "Basic czNjcmV0", "s3cret", "Token s3cret"],
)
def test_wrong_bearer_token_is_refused(server: fakeredis.FakeServer, header: str) -> None:
    with TestClient(make_app(make_exporter(server)[0], bearer_token="s3cret")) as client:
        response = client.get("/metrics", headers={"authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "])
def test_right_bearer_token_is_accepted(server: fakeredis.FakeServer, header: str) -> None:
    with TestClient(make_app(make_exporter(server)[0], bearer_token="s3cret")) as client:
        response = client.get("/metrics", headers={"authorization": header})
    assert response.status_code == 200
    assert "flagmetrics_store_up" in response.text


def test_bearer_token_from_settings(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, settings=Settings(metrics_token="from-env"))[0]
    with TestClient(make_app(exporter)) as client:
        refused = client.get("/metrics")
        accepted = client.get("/metrics", headers={"authorization": "Bearer from-env"})
    assert (refused.status_code, accepted.status_code) == (401, 200)


def test_metrics_token_with_colon_is_a_bearer_token(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, settings=Settings(metrics_token="scraper:pa55"))[0]
    with TestClient(make_app(exporter)) as client:
        response = client.get("/metrics", headers={"authorization": "Bearer scraper:pa55"})
    assert response.status_code == 200


# -- basic auth ------------------------------------------------------------------------------------


def test_basic_auth_required(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0], basic_auth=("scraper", "pa55"))) as client:
        response = client.get("/metrics")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="metrics"'


@pytest.mark.parametrize(
    "headers",
    [
        basic("scraper", "wrong"),
        basic("other", "pa55"),
        basic("scraper", "pa55x"),
        {"authorization": "Basic not-base64!!"},
        {"authorization": "Basic " + base64.b64encode(b"scraperpa55").decode()},
        {"authorization": "Bearer pa55"},
        {"authorization": "Basic \u00e9".encode("latin-1")},
    ],
    ids=["wrong-password", "wrong-user", "longer-password", "malformed", "no-colon", "bearer", "non-ascii"],
)
def test_wrong_basic_credentials_are_refused(server: fakeredis.FakeServer, headers: dict[str, Any]) -> None:
    with TestClient(make_app(make_exporter(server)[0], basic_auth=("scraper", "pa55"))) as client:
        response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="metrics"'


def test_right_basic_credentials_are_accepted(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0], basic_auth=("scraper", "pa55"))) as client:
        response = client.get("/metrics", headers=basic("scraper", "pa55"))
    assert response.status_code == 200
    assert "flagmetrics_store_up" in response.text


def test_bearer_and_basic_both_accepted_when_both_configured(server: fakeredis.FakeServer) -> None:
    app = make_app(make_exporter(server)[0], bearer_token="tok", basic_auth=("scraper", "pa55"))
    with TestClient(app) as client:
        statuses = [
            client.get("/metrics", headers={"authorization": "Bearer tok"}).status_code,
            client.get("/metrics", headers=basic("scraper", "pa55")).status_code,
            client.get("/metrics").status_code,
        ]
    assert statuses == [200, 200, 401]


def test_other_routes_need_no_credentials(server: fakeredis.FakeServer) -> None:
    with TestClient(make_app(make_exporter(server)[0], bearer_token="s3cret")) as client:
        response = client.get("/evaluate", params={"user": "u1"})
    assert response.status_code == 200


# -- lifespan --------------------------------------------------------------------------------------


def scrape_until(client: TestClient[Any], line: str) -> str:
    """Scrape until `line` shows (the flusher delivered it); return that scrape."""

    def scrape() -> str:
        text: str = client.get("/metrics").text
        return text if line in text else ""

    return str(wait_for(scrape, 5, f"{line!r} in /metrics"))


def test_lifespan_starts_the_flusher(server: fakeredis.FakeServer) -> None:
    """A pin set from outside the app's loop reaches the store only through the running flusher."""
    exporter = make_exporter(server, flush_interval_s=0.02)[0]
    with TestClient(make_app(exporter)) as client:
        exporter.update_from_metrics("pinned", {"unique_users": 7, "error_rate": 50.0})
        seen = scrape_until(client, 'feature_flag_unique_users{flag_key="pinned"} 7.0')
    assert 'feature_flag_error_rate{flag_key="pinned"} 0.5' in seen


def test_shutdown_delivers_buffered_events_to_the_store(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, flush_interval_s=3600)[0]
    with TestClient(make_app(exporter)) as client:
        for user in ("u1", "u2", "u1"):
            assert client.get("/evaluate", params={"user": user}).status_code == 200
        assert fake_redis_snapshot(server).flags == {}
    stats = fake_redis_snapshot(server).flags["f"]
    assert (stats.total, stats.errors, stats.unique_users) == (3, 0, 2)


def test_metrics_route_reports_fleet_gauges_after_flush(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server, flush_interval_s=0.02)[0]
    with TestClient(make_app(exporter)) as client:
        client.get("/evaluate", params={"user": "u1"})
        client.get("/evaluate", params={"user": "u2"})
        seen = scrape_until(client, 'feature_flag_unique_users{flag_key="f"} 2.0')
    assert 'feature_flag_error_rate{flag_key="f"} 0.0' in seen


def test_plugin_exposes_its_exporter(server: fakeredis.FakeServer) -> None:
    exporter = make_exporter(server)[0]
    assert FlagMetricsPlugin(exporter).exporter is exporter
