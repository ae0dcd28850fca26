"""Concurrent scrapes under load: eight at once all succeed, and once the load stops they agree exactly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from examples.traffic import Tally, parse_scrape, plan, send
from tests.helpers import Gunicorn, assert_scrape_is_true, landed
from tests.processes import RedisServer, wait_for

pytestmark = pytest.mark.e2e

SCRAPERS = 8


def scrape_together(app: Gunicorn) -> list[httpx.Response]:
    """Eight scrapes started at the same moment, each on its own connection."""
    start = threading.Barrier(SCRAPERS)

    def one() -> httpx.Response:
        start.wait(timeout=10)
        return app.scrape()

    with ThreadPoolExecutor(SCRAPERS) as pool:
        return list(pool.map(lambda _: one(), range(SCRAPERS)))


def test_eight_concurrent_scrapes_during_load(gunicorn: Callable[..., Gunicorn], redis_server: RedisServer) -> None:
    """During load every one of 8 concurrent scrapes succeeds; after it, all 8 show the same truth."""
    app = gunicorn(FLAGMETRICS_REDIS_URL=redis_server.url)
    result: dict[str, Tally] = {}
    load = threading.Thread(target=lambda: result.update(tally=asyncio.run(send(app.url, list(plan(400))))))
    load.start()
    rounds = 0
    while load.is_alive() or rounds < 3:
        for response in scrape_together(app):
            assert response.status_code == 200
            scrape = parse_scrape(response.text)
            assert scrape.samples["flagmetrics_store_up"] == 1.0
        rounds += 1
    load.join()
    tally = result["tally"]
    assert tally.failed_requests == 0, tally.failures

    wait_for(lambda: landed(tally, app), 15, "the flushes to land")
    responses = scrape_together(app)
    assert {response.status_code for response in responses} == {200}
    scrapes = [parse_scrape(response.text) for response in responses]
    assert all(scrape == scrapes[0] for scrape in scrapes)
    assert_scrape_is_true(tally, responses[0].text)
