"""Redis outages under real gunicorn: at start, mid-run, flapping, frozen, and longer than the buffer.

No request may fail, /metrics answers within 1 s with counters and histograms and leaves the fleet
gauges out while the store is unreadable, and buffered evaluations land when Redis is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable

import httpx
import pytest

from examples.traffic import Request, Tally, parse_scrape, plan, send
from tests.helpers import Gunicorn, assert_scrape_is_true, landed
from tests.processes import RedisServer, wait_for

pytestmark = pytest.mark.e2e


def requests_for(first_user: int, users: int) -> list[Request]:
    """The example traffic for users `first_user` .. `first_user + users - 1`."""
    return [
        Request(r.flag_key, f"user-{int(r.user.split('-')[1]) + first_user:06d}", r.plan, r.kind) for r in plan(users)
    ]


def assert_outage_scrape(app: Gunicorn, tally: Tally) -> None:
    """During an outage: 200 within 1 s, exact counters, store_up 0 and no fleet gauges."""
    started = time.monotonic()
    response = app.scrape()
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 1.0, f"scrape took {elapsed:.2f} s"
    print(f"outage scrape: {elapsed * 1000:.0f} ms, store_up 0, {sum(tally.evaluations.values())} evaluations exact")
    scrape = parse_scrape(response.text)
    assert scrape.evaluations == dict(tally.evaluations)
    assert scrape.histogram_counts == dict(tally.totals())
    assert scrape.samples["flagmetrics_store_up"] == 0.0
    assert scrape.unique_users == {}
    assert scrape.error_rates == {}


def assert_users_exactly_as_without_outage(redis_server: RedisServer, tally: Tally, text: str) -> None:
    """The fleet HyperLogLogs equal ones built from the same users with no outage at all."""
    client = redis_server.client()
    scrape = parse_scrape(text)
    for flag, users in tally.users.items():
        scratch = f"scratch:{flag}"
        client.pfadd(scratch, *(hashlib.blake2b(u.encode(), digest_size=8).digest() for u in users))
        assert scrape.unique_users[flag] == client.pfcount(scratch), flag


def test_redis_down_at_start(gunicorn: Callable[..., Gunicorn], redis_server: RedisServer) -> None:
    """Workers start without Redis, serve every request, and deliver everything once Redis starts."""
    redis_server.stop()
    app = gunicorn(FLAGMETRICS_REDIS_URL=redis_server.url)
    tally = asyncio.run(send(app.url, list(plan(300))))
    assert tally.failed_requests == 0
    for _ in range(5):
        assert_outage_scrape(app, tally)
    errors = parse_scrape(app.scrape().text)
    assert errors.samples["flagmetrics_dropped_events_total"] == 0.0

    redis_server.start()
    wait_for(lambda: landed(tally, app), 15, "buffered evaluations to land")
    text = app.scrape().text
    assert_scrape_is_true(tally, text)
    assert_users_exactly_as_without_outage(redis_server, tally, text)


def test_redis_killed_mid_run_and_flapping(gunicorn: Callable[..., Gunicorn], redis_server: RedisServer) -> None:
    """Redis is killed and restarted three times under traffic; the figures end exact."""
    app = gunicorn(FLAGMETRICS_REDIS_URL=redis_server.url)
    tally = Tally()
    first = 0
    for phase in range(6):
        up = phase % 2 == 0
        part = asyncio.run(send(app.url, requests_for(first, 200)))
        first += 200
        assert part.failed_requests == 0
        tally.update(part)
        if up:
            wait_for(lambda: landed(tally, app), 15, "evaluations to land")
            redis_server.kill()
        else:
            assert_outage_scrape(app, tally)
            redis_server.start()
    wait_for(lambda: landed(tally, app), 15, "buffered evaluations to land")
    text = app.scrape().text
    assert_scrape_is_true(tally, text)
    assert_users_exactly_as_without_outage(redis_server, tally, text)
    store_errors = [line for line in text.splitlines() if line.startswith("flagmetrics_store_errors_total{")]
    assert any(float(line.rsplit(" ", 1)[1]) > 0 for line in store_errors), store_errors


def _latencies(app: Gunicorn, users: range) -> list[float]:
    timings = []
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for i in users:
            started = time.perf_counter()
            response = client.get("/evaluate/button_color", params={"user": f"lat-{i}"})
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
    return timings


def test_frozen_redis_slows_no_request(gunicorn: Callable[..., Gunicorn], redis_server: RedisServer) -> None:
    """With Redis frozen (connections hang), no request waits on it and scrapes stay under 1 s."""
    app = gunicorn(FLAGMETRICS_REDIS_URL=redis_server.url)
    before = _latencies(app, range(0, 200))
    redis_server.pause()
    try:
        during = _latencies(app, range(200, 400))
        for _ in range(3):
            started = time.monotonic()
            response = app.scrape()
            assert response.status_code == 200
            assert time.monotonic() - started < 1.0
            assert parse_scrape(response.text).samples["flagmetrics_store_up"] == 0.0
    finally:
        redis_server.resume()
    # A request that waited on Redis would take at least its socket timeout (1 s).
    median_ms = (statistics.median(before) * 1000, statistics.median(during) * 1000)
    print("request median: {:.2f} ms with Redis up, {:.2f} ms with Redis frozen".format(*median_ms))
    assert max(during) < 0.5, f"a request took {max(during):.2f} s while Redis was frozen"
    wait_for(
        lambda: abs(parse_scrape(app.scrape().text).unique_users.get("button_color", 0) - 400) <= 8,
        15,
        "the frozen batches to land",
    )


def test_outage_beyond_buffer_counts_every_drop(gunicorn: Callable[..., Gunicorn], redis_server: RedisServer) -> None:
    """Past the buffer's capacity user ids are dropped and counted exactly; error rates stay exact.

    The spool is off: with it, each failed flush moves the buffer to disk (see tests/test_spool.py for
    its own limit).
    """
    capacity = 100
    redis_server.stop()
    app = gunicorn(
        FLAGMETRICS_REDIS_URL=redis_server.url,
        FLAGMETRICS_BUFFER_CAPACITY=str(capacity),
        FLAGMETRICS_SPOOL_DIR="off",
        workers=1,
    )
    # 250 distinct (flag, user) pairs, some of them errors, sent one at a time.
    requests = [
        Request("button_color" if i % 2 else "search_ranking", f"user-{i:06d}", "free", "string" if i % 5 else "json")
        for i in range(250)
    ]
    tally = asyncio.run(send(app.url, requests, concurrency=1))
    assert tally.failed_requests == 0
    dropped = parse_scrape(app.scrape().text).samples["flagmetrics_dropped_events_total"]
    assert dropped == len(requests) - capacity

    redis_server.start()
    wait_for(lambda: landed(tally, app), 15, "the buffered evaluations to land")
    scrape = parse_scrape(app.scrape().text)
    assert scrape.error_rates == {flag: tally.error_rate(flag) for flag in tally.totals()}
    kept = requests[:capacity]
    for flag in tally.totals():
        expected = len({r.user for r in kept if r.flag_key == flag})
        assert abs(scrape.unique_users[flag] - expected) <= max(1, 0.02 * expected), flag
