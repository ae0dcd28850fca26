"""End to end, under gunicorn with 4 uvicorn workers: recent users, exposure per variant, the last
evaluation and the split check, for both stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from functools import partial

import pytest

from examples.traffic import Request, Tally, send
from tests.helpers import Gunicorn, landed, samples
from tests.processes import RedisServer, wait_for

pytestmark = pytest.mark.e2e

WINDOW = "20s"
"""Long enough that users B, sent in a few seconds, are all still in the window while it is checked."""
FIRST_USERS = 500
SECOND_USERS = 1_000


def requests(prefix: str, count: int, flags: tuple[str, ...]) -> list[Request]:
    return [Request(flag, f"{prefix}-{i:05d}", "free", "json") for i in range(count) for flag in flags]


def gauge(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def recent(app: Gunicorn, flag: str) -> float | None:
    return gauge(app.scrape().text, "feature_flag_window_unique_users", flag_key=flag, window=WINDOW)


def within(value: float | None, expected: int, share: float) -> bool:
    return value is not None and abs(value - expected) <= share * expected


def caught_up(app: Gunicorn, exposures: Mapping[tuple[str, str], set[str]]) -> bool:
    """Every experiment's window figure, in all and per variant, within 3% of users B (one scrape)."""
    text = app.scrape().text
    for flag in ("checkout_copy", "pricing_test"):
        if not within(
            gauge(text, "feature_flag_window_unique_users", flag_key=flag, window=WINDOW), SECOND_USERS, 0.03
        ):
            return False
    return all(
        within(
            gauge(text, "feature_flag_window_variant_unique_users", flag_key=flag, variant=variant, window=WINDOW),
            len(served),
            0.03,
        )
        for (flag, variant), served in exposures.items()
    )


@pytest.mark.parametrize("store", ["redis", "local"])
def test_recent_users_exposure_last_evaluation_and_split_checks(
    store: str, gunicorn: Callable[..., Gunicorn], request: pytest.FixtureRequest
) -> None:
    env = {"FLAGMETRICS_WINDOWS": f"{WINDOW},1h"}
    if store == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        env["FLAGMETRICS_REDIS_URL"] = redis_server.url
    app = gunicorn("tests.workers.experiment_app:app", **env)

    # Users A evaluate, show in the window, then leave it.
    first = asyncio.run(send(app.url, requests("a", FIRST_USERS, ("checkout_copy",))))
    assert first.failed_requests == 0
    wait_for(lambda: within(recent(app, "checkout_copy"), FIRST_USERS, 0.03), 10, "users A in the window")
    wait_for(lambda: recent(app, "checkout_copy") == 0, 35, "users A to leave the window")

    # Users B evaluate two experiments: the window holds them only.
    started = time.time()
    second = asyncio.run(send(app.url, requests("b", SECOND_USERS, ("checkout_copy", "pricing_test"))))
    last_request = time.time()
    assert second.failed_requests == 0
    tally = Tally()
    tally.update(first)
    tally.update(second)
    wait_for(lambda: landed(tally, app), 15, "the workers' flushes to land")
    # A window's figure is computed once per bucket (a few seconds here), so it may lag the last
    # flushes by up to a bucket: wait until every figure checked below has caught up.
    wait_for(partial(caught_up, app, second.exposures), 10, "the window figures to take in users B")

    answered_by: set[str] = set()
    p_values: dict[str, list[float]] = {"checkout_copy": [], "pricing_test": []}
    for _ in range(8):
        response = app.scrape()
        answered_by.add(response.headers["x-flagmetrics-worker"])
        text = response.text
        window = gauge(text, "feature_flag_window_unique_users", flag_key="checkout_copy", window=WINDOW)
        assert within(window, SECOND_USERS, 0.03), window
        everyone = gauge(text, "feature_flag_unique_users", flag_key="checkout_copy")
        assert within(everyone, FIRST_USERS + SECOND_USERS, 0.02), everyone
        for (flag, variant), served in second.exposures.items():
            exposed = gauge(
                text, "feature_flag_window_variant_unique_users", flag_key=flag, variant=variant, window=WINDOW
            )
            assert within(exposed, len(served), 0.03), (flag, variant, exposed, len(served))
        for flag in ("checkout_copy", "pricing_test"):
            last = gauge(text, "feature_flag_last_evaluated_timestamp_seconds", flag_key=flag)
            assert last is not None
            assert started <= last <= last_request + 3, (flag, last, last_request)
            p_value = gauge(text, "feature_flag_split_p_value", flag_key=flag, window=WINDOW)
            assert p_value is not None, flag
            p_values[flag].append(p_value)
    assert time.time() < started + 20, "the checks ran after users B began to leave the window"
    print(f"{store}: window {window} for {SECOND_USERS}, all-time {everyone}, p-values {p_values}")
    assert len(answered_by) >= 2, answered_by
    # Served 50/50, expected 50/50 (from litestar-flags' weights); served 60/40, expected 50/50.
    assert min(p_values["checkout_copy"]) > 0.01, p_values
    assert max(p_values["pricing_test"]) < 0.001, p_values
    # The split of a flag without variants is not checked.
    assert gauge(text, "feature_flag_split_p_value", flag_key="new_checkout", window=WINDOW) is None
