"""A fleet: several hosts on one Redis, the e2e run on a Redis Cluster, and a cluster master failing over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from examples.traffic import Tally, parse_scrape, plan, send
from tests.helpers import Gunicorn, Load, Scrapes, assert_scrape_is_true, landed
from tests.processes import RedisCluster, RedisServer, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SCRAPE_TIMEOUT_S = 0.5
RENDERING_S = 1.0
"""Allowance for rendering a scrape on this machine, on top of the scrape timeout."""


def fleet_env(store: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that point an app at a single redis-server or at the session's cluster."""
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return {"FLAGMETRICS_REDIS_URL": server.url}
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    prefix: str = request.getfixturevalue("cluster_prefix")
    return {"FLAGMETRICS_REDIS_URL": cluster.url, "FLAGMETRICS_REDIS_CLUSTER": "1", "FLAGMETRICS_KEY_PREFIX": prefix}


def test_four_workers_on_a_cluster_report_the_fleet_truth(
    gunicorn: Callable[..., Gunicorn], request: pytest.FixtureRequest
) -> None:
    """The e2e run against a Redis Cluster: every scrape, whichever worker answers, shows exact figures."""
    app = gunicorn(**fleet_env("cluster", request))
    tally = asyncio.run(send(app.url, list(plan(1_200))))
    assert tally.failed_requests == 0
    wait_for(lambda: landed(tally, app), 20, "the workers' flushes to land")
    answered_by = set()
    for _ in range(40):
        response = app.scrape()
        assert response.status_code == 200
        answered_by.add(response.headers["x-flagmetrics-worker"])
        assert_scrape_is_true(tally, response.text)
        if len(answered_by) >= 3:
            break
    assert len(answered_by) >= 3, answered_by


@pytest.mark.parametrize("store", ["redis", "cluster"])
def test_two_hosts_on_one_redis_share_users_and_error_rates(
    store: str, gunicorn: Callable[..., Gunicorn], request: pytest.FixtureRequest
) -> None:
    """Each host counts its own traffic; both show the union of users and the fleet's error rate."""
    env = fleet_env(store, request)
    hosts = [gunicorn(workers=2, **env), gunicorn(workers=2, **env)]
    # Users 0-799 on the first host, 400-1,199 on the second: 400 users seen by both.
    tallies = asyncio.run(_send_both(hosts))
    assert [t.failed_requests for t in tallies] == [0, 0]
    fleet = Tally()
    for tally in tallies:
        fleet.update(tally)
    truth = {flag: (total, fleet.errors()[flag]) for flag, total in fleet.totals().items()}

    def stored() -> bool:
        return {flag: (s.total, s.errors) for flag, s in hosts[0].fleet_snapshot().flags.items()} == truth

    wait_for(stored, 20, "both hosts' flushes to land")
    for _ in range(6):
        for host, tally in zip(hosts, tallies, strict=True):
            scrape = parse_scrape(host.scrape().text)
            assert scrape.evaluations == dict(tally.evaluations)  # its own traffic, exactly
            assert scrape.histogram_counts == dict(tally.totals())
            assert scrape.error_rates == {flag: fleet.error_rate(flag) for flag in fleet.totals()}
            for flag, users in fleet.users.items():
                assert abs(scrape.unique_users[flag] - len(users)) <= 0.02 * len(users), flag
    assert len(fleet.users["new_checkout"]) == 1_200


async def _send_both(hosts: list[Gunicorn]) -> list[Tally]:
    first, second = hosts
    return list(await asyncio.gather(send(first.url, list(plan(800))), send(second.url, list(plan(800, first=400)))))


def test_a_cluster_master_failing_over_fails_no_request_and_no_scrape(
    gunicorn: Callable[..., Gunicorn], fresh_redis_cluster: RedisCluster
) -> None:
    """SIGKILL a master mid-traffic: requests all answered, scrapes within the timeout, gauges back."""
    cluster = fresh_redis_cluster
    app = gunicorn(
        FLAGMETRICS_REDIS_URL=cluster.url,
        FLAGMETRICS_REDIS_CLUSTER="1",
        FLAGMETRICS_SCRAPE_TIMEOUT_S=str(SCRAPE_TIMEOUT_S),
    )
    load, scrapes = Load(app), Scrapes(app)
    load.start()
    scrapes.start()
    try:
        wait_for(lambda: len(load.rounds) >= 10, 60, "traffic before the failover")
        cluster.master_nodes()[0].kill()
        killed_at = time.monotonic()
        cluster.wait_healthy(60)  # a replica has taken the dead master's slots
        healthy_at = time.monotonic()
        wait_for(lambda: len([at for at, _ in load.rounds if at > healthy_at]) >= 10, 60, "traffic after the failover")
    finally:
        load.stop()
    try:
        stored = wait_for(lambda: _settled(app, load.tally), 30, "the store to settle after the failover")
        settled_at = time.monotonic()
        assert stored is not None
    finally:
        scrapes.stop()

    truth = sum(load.tally.totals().values())
    lost = truth - sum(total for total, _ in stored.values())
    worst = max(took for _, took, _, _, _ in scrapes.seen)
    back = [at for at, _, _, up, _ in scrapes.seen if at > healthy_at and up == 1.0]
    print(
        f"failover: {truth} evaluations, {load.tally.failed_requests} failed requests, {len(scrapes.seen)} scrapes, "
        f"worst {worst:.3f} s, cluster healthy {healthy_at - killed_at:.1f} s after the kill, gauges back "
        f"{back[0] - killed_at:.1f} s after it, store settled {settled_at - killed_at:.1f} s after it, {lost} "
        "evaluations lost"
    )
    assert load.tally.failed_requests == 0
    assert all(status == 200 for _, _, status, _, _ in scrapes.seen)
    assert worst <= SCRAPE_TIMEOUT_S + RENDERING_S
    assert back
    for flag, total in load.tally.totals().items():  # nothing counted twice
        assert stored.get(flag, (0, 0))[0] <= total, flag
    # What the dead master acknowledged but had not yet sent to its replica is lost: on loopback,
    # replication keeps up within a flush interval, so at most the evaluations of the last second.
    last_second = load.answered_by(killed_at) - load.answered_by(killed_at - 1)
    assert 0 <= lost <= last_second


def _settled(app: Gunicorn, tally: Tally) -> dict[str, tuple[int, int]] | None:
    """The store's figures once the counters show every answer and two reads a flush apart agree."""
    if parse_scrape(app.scrape().text).evaluations != dict(tally.evaluations):
        return None
    first = {flag: (s.total, s.errors) for flag, s in app.fleet_snapshot().flags.items()}
    time.sleep(0.5)  # more than one flush interval of every worker
    again = {flag: (s.total, s.errors) for flag, s in app.fleet_snapshot().flags.items()}
    return first if again == first else None
