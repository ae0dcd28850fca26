"""Worker lifecycle under real gunicorn: recycling, SIGTERM, SIGKILL and 500 dead workers.

Counters and histograms live in prometheus_client's mmap files, so no increment is lost even to
SIGKILL; the fleet store loses at most a killed worker's last flush interval; and no counter goes
backwards between two scrapes while workers die and their files are compacted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest

from examples.traffic import Request, Tally, parse_scrape, plan
from tests.helpers import Gunicorn, Scraper, assert_scrape_is_true, landed
from tests.processes import REPO, wait_for

pytestmark = pytest.mark.e2e

FLUSH_INTERVAL_S = 0.2
Answer = tuple[float, Request, dict[str, Any]]


def traffic(
    app: Gunicorn, requests: list[Request], actions: dict[int, Callable[[], None]], retried: list[Request] | None = None
) -> list[Answer]:
    """Send `requests` on 8 connections; run `actions[n]` (in another thread) after n answers.

    A request whose connection fails is sent again; it is also appended to `retried` when given.
    """
    answers: list[Answer] = []

    def enough(count: int) -> bool:
        return len(answers) >= count

    def act() -> None:
        for count, action in sorted(actions.items()):
            wait_for(partial(enough, count), 60, f"{count} answers")
            action()

    actor = threading.Thread(target=act, daemon=True)
    actor.start()

    async def send() -> None:
        queue = list(reversed(requests))
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as client:

            async def connection() -> None:
                while queue:
                    request = queue.pop()
                    params = {"user": request.user, "plan": request.plan, "kind": request.kind}
                    for _attempt in range(5):  # a killed worker's connection fails: ask again
                        try:
                            response = await client.get(f"/evaluate/{request.flag_key}", params=params)
                        except httpx.TransportError:
                            if retried is not None:
                                retried.append(request)
                            continue
                        if response.status_code == 200:
                            answers.append((time.monotonic(), request, response.json()))
                            break
                    else:
                        raise AssertionError(f"no answer for {request} after 5 attempts")

            await asyncio.gather(*(connection() for _ in range(8)))

    asyncio.run(send())
    actor.join(timeout=60)
    assert not actor.is_alive()
    return answers


def tally_of(answers: list[Answer]) -> Tally:
    tally = Tally()
    for _, request, answer in answers:
        tally.add(request, answer)
    return tally


@pytest.mark.parametrize("store", ["local", "redis"])
def test_recycling_and_sigterm_lose_nothing(
    store: str, gunicorn: Callable[..., Gunicorn], request: pytest.FixtureRequest
) -> None:
    """Workers recycled every ~250 requests and one SIGTERM: every figure exact, no counter goes back."""
    env = {"MAX_REQUESTS": "250"}
    if store == "redis":
        env["FLAGMETRICS_REDIS_URL"] = request.getfixturevalue("redis_server").url
    app = gunicorn(**env)
    scraper = Scraper(app)
    scraper.start()
    answers = traffic(app, list(plan(1000)), {2000: lambda: os.kill(app.worker_pids()[0], signal.SIGTERM)})
    tally = tally_of(answers)
    wait_for(lambda: landed(tally, app), 20, "every worker's flushes to land")
    scraper.stop(at_least=50)

    assert_scrape_is_true(tally, app.scrape().text)
    scraper.assert_clean()
    print(
        f"{store}: {len(answers)} requests, {app.worker_exits()} worker exits, {scraper.scrapes} scrapes "
        f"({len(scraper.dropped)} closed unanswered by a stopping worker), no counter went back"
    )
    served_by = {answer["pid"] for _, _, answer in answers}
    assert len(served_by) >= 8, f"expected recycled workers, saw pids {served_by}"


def test_sigkill_loses_no_counter_and_at_most_one_flush_interval(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """A worker killed with SIGKILL mid-traffic: counters exact, the store short by at most its last interval."""
    app = gunicorn()
    scraper = Scraper(app)
    scraper.start()
    killed: dict[str, float] = {}

    def kill() -> None:
        killed["at"] = time.monotonic()
        os.kill(app.worker_pids()[0], signal.SIGKILL)

    retried: list[Request] = []
    answers = traffic(app, list(plan(1000)), {2500: kill}, retried)
    tally = tally_of(answers)

    def extra() -> int | None:
        """Evaluations counted beyond the answers, or None while some answer is not counted yet."""
        counted = parse_scrape(app.scrape().text).evaluations
        if any(counted.get(key, 0) < n for key, n in tally.evaluations.items()):
            return None
        return int(sum(counted.values()) - sum(tally.evaluations.values()))

    # A request the killed worker had counted but not answered yet was sent again and counted twice:
    # at most the requests that were sent again, all of them the killed worker's last.
    settled = wait_for(lambda: (n := extra()) is not None and [n], 10, "counters to add up")
    assert settled
    counted_twice = settled[0]
    assert 0 <= counted_twice <= len(retried), (counted_twice, retried)
    scrape = parse_scrape(app.scrape().text)
    # Each evaluation is two writes (counter, then histogram): the kill may fall between the two of the
    # one evaluation the worker was recording, never more (record() runs on its one loop thread).
    assert 0 <= sum(scrape.evaluations.values()) - sum(scrape.histogram_counts.values()) <= 1

    # Only what the killed worker answered in its last flush interval may be missing from the store.
    window = len([t for t, _, _ in answers if killed["at"] - FLUSH_INTERVAL_S - 0.2 <= t <= killed["at"] + 0.2])

    def stored() -> dict[str, int]:
        return {flag: stats.total for flag, stats in app.fleet_snapshot().flags.items()}

    truth = sum(tally.totals().values())
    wait_for(lambda: truth - sum(stored().values()) <= window, 20, f"the store to come within {window} of {truth}")
    for flag, total in tally.totals().items():  # nothing counted twice but what was sent twice
        assert stored().get(flag, 0) <= total + sum(r.flag_key == flag for r in retried), flag
    print(f"SIGKILL: {truth} evaluations, store short by {truth - sum(stored().values())} (bound {window})")

    scraper.stop(at_least=50)
    scraper.assert_clean()


def test_500_dead_workers_are_folded_and_keep_scrapes_exact(gunicorn: Callable[..., Gunicorn]) -> None:
    """500 dead workers' files, compacted as they die: totals exact and monotonic, only archives left.

    What the folding saves each scrape is measured in benchmarks/scrape.py, not here.
    """
    dead = 500
    app = gunicorn()
    answers = traffic(app, list(plan(200)), {})
    tally = tally_of(answers)
    wait_for(lambda: landed(tally, app), 15, "the flushes to land")

    scraper = Scraper(app)
    scraper.start()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(app.multiproc_dir), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.workers.dead_workers", str(dead)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    scraper.stop(at_least=50)
    assert int(result.stdout) == 2 * dead  # a counter and a histogram file each
    scraper.assert_clean()

    scrape = parse_scrape(app.scrape().text)
    expected = dict(tally.evaluations)
    expected[("button_color", "SPLIT", "red")] = expected.get(("button_color", "SPLIT", "red"), 0) + 3 * dead
    assert scrape.evaluations == expected
    # Only the live workers' files and the two archives remain: every dead worker's files were folded.
    files = [name for name in os.listdir(app.multiproc_dir) if name.endswith(".db")]
    owners = {name.rsplit("_", 1)[1].removesuffix(".db") for name in files}
    assert owners <= {str(pid) for pid in app.worker_pids()} | {"archive"}, owners
    archives = [app.multiproc_dir / f"{kind}_archive.db" for kind in ("counter", "histogram")]
    assert all(archive.exists() for archive in archives)
