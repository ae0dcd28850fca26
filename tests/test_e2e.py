"""End to end: gunicorn with 4 uvicorn workers, known traffic, scrapes answered by several workers.

The tests run both examples: Litestar with litestar-flags (`flagmetrics.litestar`) and FastAPI with
OpenFeature (`flagmetrics.asgi`); they serve the same flags on the same routes, and the scrape is
rendered by the same code (test_asgi checks both answer alike).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from examples.traffic import plan, send
from tests.helpers import Gunicorn, assert_promtool_accepts, assert_scrape_is_true, landed, require_binary
from tests.processes import RedisServer, wait_for

pytestmark = pytest.mark.e2e

USERS = 1_200
SCRAPES = 12
LITESTAR, FASTAPI = "examples.app:app", "examples.fastapi_app:app"


# The FastAPI example differs from the Litestar one in how flagmetrics is wired in, not in the store.
@pytest.mark.parametrize(
    ("example", "store"),
    [(LITESTAR, "redis"), (LITESTAR, "local"), (FASTAPI, "local")],
    ids=["redis", "local", "fastapi"],
)
def test_every_worker_reports_the_fleet_truth(
    example: str, store: str, gunicorn: Callable[..., Gunicorn], request: pytest.FixtureRequest
) -> None:
    """4 workers, 1,200 users: every scrape, whichever worker answers, shows exact fleet figures."""
    env = {}
    if store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        env["FLAGMETRICS_REDIS_URL"] = redis_server.url
    app = gunicorn(example, **env)
    requests = list(plan(USERS))
    tally = asyncio.run(send(app.url, requests))
    assert tally.failed_requests == 0
    assert sum(tally.evaluations.values()) == len(requests)
    assert any(reason == "ERROR" for _, reason, _ in tally.evaluations)
    wait_for(lambda: landed(tally, app), 15, "the workers' flushes to land")

    answered_by: set[str] = set()
    for _ in range(SCRAPES):
        response = app.scrape()
        assert response.status_code == 200
        answered_by.add(response.headers["x-flagmetrics-worker"])
        assert_scrape_is_true(tally, response.text)
    # Keep scraping (and checking) until several workers have answered.
    for _ in range(100):
        if len(answered_by) >= 3:
            break
        response = app.scrape()
        answered_by.add(response.headers["x-flagmetrics-worker"])
        assert_scrape_is_true(tally, response.text)
    assert len(answered_by) >= 3, answered_by
    assert answered_by <= {str(pid) for pid in app.worker_pids()}


def test_scrape_passes_promtool(gunicorn: Callable[..., Gunicorn]) -> None:
    """A real scrape of the gunicorn-served app is clean for `promtool check metrics`."""
    require_binary("promtool", "prometheus")  # skip before starting anything
    app = gunicorn(FASTAPI)
    tally = asyncio.run(send(app.url, list(plan(200))))
    wait_for(lambda: landed(tally, app), 15, "the workers' flushes to land")
    body = app.scrape().content
    assert b"feature_flag_unique_users" in body
    assert_promtool_accepts(body)
