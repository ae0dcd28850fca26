"""End to end with a real Prometheus: gunicorn with 4 uvicorn workers, known traffic, and PromQL answers.

Prometheus (Debian's /usr/bin/prometheus) scrapes the example app every second on loopback ports
chosen here, with examples/prometheus/rules.yml loaded. Traffic is sent in two halves, and
Prometheus must have stored the first half before the second is sent, so that counters really grow
between two of its scrapes (rates are then > 0 and the rate-based recording rules have something to
compute). What Prometheus answers must equal what the app answered: exact evaluation counts per
(flag_key, reason, variant), exact fleet error rates, unique users within 2%, recording rules
evaluated from those series, every rule healthy, and every Grafana dashboard query executing.

Skipped without prometheus, except when FLAGMETRICS_REQUIRE_REDIS=1 (CI): then it fails.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from examples.traffic import Tally, plan, send
from tests.helpers import Gunicorn, landed, require_binary
from tests.processes import LOOPBACK, REPO, free_port, stop_process, wait_for
from tests.test_grafana_dashboard import TARGETS, metric_names, promql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

RULES = REPO / "examples" / "prometheus" / "rules.yml"
USERS = 1_000
BUDGET_S = 50.0  # the whole test, startup included; pytest-timeout kills it at 60 s
JOB = "flagmetrics-app"


@dataclass
class Prometheus:
    """A Prometheus server this test started on a free loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; return its `data`, raising unless Prometheus answered `success`."""
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')}")
        response = httpx.get(f"{self.url}{path}", params=params, timeout=5)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def by(self, expr: str, *labels: str) -> dict[Any, float]:
        """`expr`'s samples keyed by the values of `labels` (one label: the bare value); absent = ""."""
        result: dict[Any, float] = {}
        for sample in self.query(expr):
            key = tuple(sample["metric"].get(label, "") for label in labels)
            result[key[0] if len(key) == 1 else key] = float(sample["value"][1])
        return result

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text(errors='replace')}")
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """Start Prometheus scraping one target every second with rules.yml; stop it by its pid afterwards."""
    binary = require_binary("prometheus", "prometheus")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        directory = tmp_path / f"prometheus-{len(started)}"
        directory.mkdir()
        config = directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        port = free_port()
        log = directory / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{port}",
                ],
                cwd=directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Prometheus(proc=proc, port=port, log=log)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop_process(server.proc)


def _send(app: Gunicorn, requests: list[Any]) -> Tally:
    tally = asyncio.run(send(app.url, requests))
    assert tally.failed_requests == 0
    assert sum(tally.evaluations.values()) == len(requests)
    return tally


def _shows(prom: Prometheus, tally: Tally) -> bool:
    """Whether Prometheus' latest samples show the tally: exact counters and error rates, users within 2%."""
    if prom.by("feature_flag_evaluations_total", "flag_key", "reason", "variant") != dict(tally.evaluations):
        return False
    if prom.by("feature_flag_error_rate", "flag_key") != {flag: tally.error_rate(flag) for flag in tally.totals()}:
        return False
    users = prom.by("feature_flag_unique_users", "flag_key")
    return set(users) == set(tally.users) and all(
        abs(users[flag] - len(seen)) <= 0.02 * len(seen) for flag, seen in tally.users.items()
    )


def test_prometheus_stores_the_fleet_truth(
    gunicorn: Callable[..., Gunicorn], prometheus: Callable[[str], Prometheus]
) -> None:
    deadline = time.monotonic() + BUDGET_S

    def remaining() -> float:
        return max(0.5, deadline - time.monotonic())

    app = gunicorn(workers=4, FLAGMETRICS_FLUSH_INTERVAL_S="0.2")
    prom = prometheus(f"{LOOPBACK}:{app.port}")

    # First half; Prometheus must store it before the second half is sent.
    requests = list(plan(USERS))
    first_requests = list(plan(USERS // 2))
    assert requests[: len(first_requests)] == first_requests
    first = _send(app, first_requests)
    wait_for(lambda: landed(first, app), remaining(), "the first half's flushes to land in /metrics")
    wait_for(prom.ready, remaining(), f"prometheus to be ready (log: {prom.log})")
    wait_for(lambda: _shows(prom, first), remaining(), "prometheus to store the first half", interval_s=0.1)

    second = _send(app, requests[len(first_requests) :])
    tally = Tally()
    tally.update(first)
    tally.update(second)
    assert any(reason == "ERROR" for _, reason, _ in tally.evaluations)
    wait_for(lambda: landed(tally, app), remaining(), "the second half's flushes to land in /metrics")
    wait_for(lambda: _shows(prom, tally), remaining(), "prometheus to store all the traffic", interval_s=0.1)

    # Exact evaluation counts per (flag_key, reason, variant): the latest sample equals the tally.
    evaluations = prom.by("feature_flag_evaluations_total", "flag_key", "reason", "variant")
    assert evaluations == dict(tally.evaluations)
    assert prom.by("sum by (flag_key) (feature_flag_evaluations_total)", "flag_key") == dict(tally.totals())
    histogram_counts = prom.by("feature_flag_evaluation_duration_seconds_count", "flag_key")
    assert histogram_counts == dict(tally.totals())
    # Exact fleet error rates, and unique users within 2% (HyperLogLog).
    error_rates = prom.by("feature_flag_error_rate", "flag_key")
    assert error_rates == {flag: tally.error_rate(flag) for flag in tally.totals()}
    assert error_rates["retired_flag"] == 1.0
    assert error_rates["legacy_banner"] == 0.0
    users = prom.by("feature_flag_unique_users", "flag_key")
    for flag, seen in tally.users.items():
        assert abs(users[flag] - len(seen)) <= 0.02 * len(seen), (flag, users[flag], len(seen))
    assert prom.by("flagmetrics_store_up", "job") == {JOB: 1.0}
    assert prom.by("flagmetrics_dropped_events_total", "job") == {JOB: 0.0}

    # Recording rules, evaluated by Prometheus from the scraped series.
    def recorded() -> bool:
        return (
            prom.by("flagmetrics:feature_flag_unique_users:max", "flag_key") == users
            and prom.by("flagmetrics:feature_flag_error_rate:max", "flag_key") == error_rates
            and prom.by("flagmetrics:feature_flag_error_ratio:rate5m", "flag_key").get("retired_flag") == 1.0
        )

    wait_for(recorded, remaining(), "the recording rules to be evaluated", interval_s=0.1)
    ratios = prom.by("flagmetrics:feature_flag_error_ratio:rate5m", "flag_key")
    assert set(ratios) == set(tally.totals())
    assert ratios["retired_flag"] == 1.0  # every evaluation of a missing flag is an ERROR
    assert ratios["legacy_banner"] == 0.0  # no ERROR series at all: 0, not "no data"
    assert 0.0 < ratios["new_checkout"] < 1.0
    rates = prom.by("flagmetrics:feature_flag_evaluations:rate5m", "flag_key")
    assert set(rates) == set(tally.totals())
    assert all(rate > 0 for rate in rates.values()), rates
    p99 = prom.by("flagmetrics:feature_flag_evaluation_duration_seconds:p99_5m", "flag_key")
    assert set(p99) == set(tally.totals())

    # Every rule of rules.yml loaded and evaluated without error; the health alerts stay inactive.
    def rules_healthy() -> list[dict[str, Any]] | None:
        loaded = [rule for group in prom.get("/api/v1/rules")["groups"] for rule in group["rules"]]
        return loaded if loaded and all(rule["health"] == "ok" for rule in loaded) else None

    loaded = wait_for(rules_healthy, remaining(), "every rule to be evaluated healthy", interval_s=0.1)
    assert isinstance(loaded, list)
    expected = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(loaded) == len(expected)
    states = {rule["name"]: rule["state"] for rule in loaded if rule["type"] == "alerting"}
    assert states["FlagMetricsFleetStoreDown"] == "inactive"
    assert states["FlagMetricsEventsDropped"] == "inactive"

    # Every dashboard query runs; those over metrics the app exposes show data.
    scraped = {line.split("{")[0].split()[0] for line in app.scrape().text.splitlines() if line and line[0] != "#"}
    for where, expr in TARGETS:
        query = promql(expr, rate_interval="1m", variable=".*")
        result = prom.query(query)
        if metric_names(query) <= scraped:
            assert result, f"{where} shows no data: {query}"
            values = [float(sample["value"][1]) for sample in result]
            assert not all(math.isnan(v) for v in values), f"{where} is all NaN: {query}"
