"""examples/prometheus: the rules pass `promtool check rules`, their unit tests pass `promtool test rules`
(and fail when a rule is broken), every rule is covered, and the example config passes
`promtool check config`.

promtool comes with Debian's `prometheus` package. Without it these tests are skipped, except when
FLAGMETRICS_REQUIRE_REDIS=1 (CI, which installs it): then they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import FLEET_GAUGES, require_binary
from tests.processes import REPO
from tests.test_grafana_dashboard import exported_metric_names, metric_names

EXAMPLES = REPO / "examples" / "prometheus"
RULES = EXAMPLES / "rules.yml"
RULES_TEST = EXAMPLES / "rules_test.yml"
RULES_TESTS = (RULES_TEST, EXAMPLES / "rules_days_test.yml")
"""The unit tests: every minute for minutes and hours, every hour for days."""
CONFIG = EXAMPLES / "prometheus.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool", "prometheus"), *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recordings() -> dict[str, dict[str, Any]]:
    return {rule["record"]: rule for rule in rules() if "record" in rule}


# -- promtool --------------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout + result.stderr


# Each mutation breaks one rule the way a careless edit would: (rule, field, old, new). The unit tests
# must notice every one.
MUTATIONS = {
    "fleet gauge summed instead of max": (
        "flagmetrics:feature_flag_unique_users:max",
        "expr",
        "max by",
        "sum by",
    ),
    "error ratio without zero branch": (
        "flagmetrics:feature_flag_error_ratio:rate5m",
        "expr",
        " or\n",
        " and\n",
    ),
    "wrong latency quantile": (
        "flagmetrics:feature_flag_evaluation_duration_seconds:p99_5m",
        "expr",
        "0.99",
        "0.95",
    ),
    "error threshold lowered": ("FeatureFlagHighErrorRate", "expr", "> 0.05", "> 0.03"),
    "traffic guard dropped": ("FeatureFlagHighErrorRate", "expr", "> 0.1", "> 0"),
    "error-rate delay shortened": ("FeatureFlagHighErrorRate", "for", "10m", "1m"),
    "latency threshold raised": ("FeatureFlagEvaluationSlow", "expr", "> 0.05", "> 0.2"),
    "latency delay shortened": ("FeatureFlagEvaluationSlow", "for", "10m", "1m"),
    "store-down delay shortened": ("FlagMetricsFleetStoreDown", "for", "5m", "1m"),
    "dropped-events window shortened": ("FlagMetricsEventsDropped", "expr", "[10m]", "[1m]"),
    "spool backlog over a minute": ("FlagMetricsSpoolBacklog", "expr", "[15m]", "[1m]"),
    "spool backlog on any batch seen": ("FlagMetricsSpoolBacklog", "expr", "min_over_time", "max_over_time"),
    "stale after 3 days": ("FeatureFlagStale", "expr", "30 * 86400", "3 * 86400"),
    "rolled out with several variants": ("FeatureFlagFullyRolledOut", "expr", "== 1", ">= 1"),
    "rolled out over the hour": ("FeatureFlagFullyRolledOut", "expr", 'window="7d"', 'window="1h"'),
    "split check at 1%": ("FeatureFlagSampleRatioMismatch", "expr", "< 0.001", "< 0.01"),
    "window gauge summed": ("flagmetrics:feature_flag_window_unique_users:max", "expr", "max by", "sum by"),
}


@pytest.mark.parametrize(("rule_name", "field", "old", "new"), MUTATIONS.values(), ids=MUTATIONS.keys())
def test_rules_unit_tests_catch_a_broken_rule(rule_name: str, field: str, old: str, new: str, tmp_path: Path) -> None:
    document = load(RULES)
    rule = next(r for g in document["groups"] for r in g["rules"] if rule_name in (r.get("record"), r.get("alert")))
    assert rule[field].count(old) == 1, f"the mutation no longer applies to {rule_name}: {old!r}"
    rule[field] = rule[field].replace(old, new)
    result = _unit_tests_on(document, tmp_path)
    assert result.returncode != 0, f"the unit tests still pass with {rule_name} {field} {new!r} instead of {old!r}"
    assert "FAILED" in result.stdout + result.stderr


def test_unmutated_rules_rewritten_still_pass(tmp_path: Path) -> None:
    """The control for the mutations: rewriting the rules file unchanged keeps the unit tests green."""
    result = _unit_tests_on(load(RULES), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _unit_tests_on(document: Any, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run the unit tests against `document` written as rules.yml in `directory`."""
    (directory / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    for path in RULES_TESTS:
        shutil.copy(path, directory / path.name)
    return promtool("test", "rules", *(str(directory / path.name) for path in RULES_TESTS))


def unit_tests() -> list[dict[str, Any]]:
    """Every test group of every unit-test file."""
    return [test for path in RULES_TESTS for test in load(path)["tests"]]


def test_example_config_passes_promtool_check() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid prometheus config file syntax" in result.stdout
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_example_config_scrapes_the_metrics_route_and_loads_the_rules() -> None:
    config = load(CONFIG)
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    app = jobs["flagmetrics-app"]
    assert app["metrics_path"] == "/metrics"
    targets = [t for static in app["static_configs"] for t in static["targets"]]
    assert targets == ["127.0.0.1:8000"], "the example scrapes the quick start's app"
    text = CONFIG.read_text()
    assert "flagmetrics serve" in text
    assert "max by (flag_key)" in text


# -- coverage of the unit tests --------------------------------------------------------------------


def _alert_cases() -> dict[str, list[list[Any]]]:
    cases: dict[str, list[list[Any]]] = {}
    for test in unit_tests():
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    return cases


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = _alert_cases()
    assert set(cases) == set(alerts())
    for name, expected in cases.items():
        assert any(expected), f"{name} is never tested firing"
        assert any(not e for e in expected), f"{name} is never tested not firing"


def test_every_recording_rule_is_tested() -> None:
    tested = {
        case["expr"].strip()
        for test in unit_tests()
        for case in test.get("promql_expr_test", [])
        if case.get("exp_samples")
    }
    assert set(recordings()) <= tested, set(recordings()) - tested


def test_unit_tests_use_only_series_flagmetrics_exports() -> None:
    """Input series named after the real metrics: a renamed metric breaks the rules and this test."""
    exported = exported_metric_names()
    for test in unit_tests():
        for series in test["input_series"]:
            name = re.match(r"[\w:]+", series["series"])
            assert name is not None, series["series"]
            assert name.group(0) in exported, series["series"]


# -- conventions -----------------------------------------------------------------------------------


def test_rules_query_only_exported_or_recorded_metrics() -> None:
    known = exported_metric_names() | set(recordings())
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule
        assert names <= known, f"{rule.get('record') or rule.get('alert')}: unknown {sorted(names - known)}"


def test_recording_rule_names() -> None:
    assert recordings()
    for name in recordings():
        assert re.fullmatch(r"flagmetrics:[a-z_]+:[a-z0-9_]+", name), name


def test_fleet_gauges_are_aggregated_with_max() -> None:
    """Every host reports the same fleet-wide value: summing over targets multiplies it."""
    using = [rule for rule in rules() if metric_names(rule["expr"]) & set(FLEET_GAUGES)]
    recorded = [rule for rule in using if "record" in rule]
    assert {rule["record"] for rule in recorded} == {f"flagmetrics:{gauge}:max" for gauge in FLEET_GAUGES}
    for rule in using:
        for gauge in metric_names(rule["expr"]) & set(FLEET_GAUGES):
            assert re.search(rf"max by \([\w, ]+\) \({gauge}\b", rule["expr"]), (rule, gauge)
    for rule in recorded:
        assert re.fullmatch(r"max by \(flag_key(, variant)?(, window)?\) \(feature_flag_\w+\)", rule["expr"].strip()), (
            rule
        )


def test_latency_percentiles_are_recorded() -> None:
    quantiles = {
        float(m.group(1))
        for rule in recordings().values()
        if (m := re.match(r"histogram_quantile\(([\d.]+), sum by \(flag_key, le\)", rule["expr"]))
    }
    assert quantiles == {0.5, 0.9, 0.99}


def test_alerts_have_severity_summary_and_description() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_required_alerts() -> None:
    found = alerts()
    assert set(found) == {
        "FeatureFlagHighErrorRate",
        "FeatureFlagEvaluationSlow",
        "FlagMetricsFleetStoreDown",
        "FlagMetricsEventsDropped",
        "FlagMetricsSpoolBacklog",
        "FeatureFlagStale",
        "FeatureFlagFullyRolledOut",
        "FeatureFlagSampleRatioMismatch",
    }
    assert "30 * 86400" in found["FeatureFlagStale"]["expr"]
    assert 'window="7d"' in found["FeatureFlagFullyRolledOut"]["expr"]
    assert "< 0.001" in found["FeatureFlagSampleRatioMismatch"]["expr"]
    assert found["FeatureFlagHighErrorRate"]["for"]
    assert "p99" in found["FeatureFlagEvaluationSlow"]["expr"]
    assert re.fullmatch(r"flagmetrics_store_up == 0", found["FlagMetricsFleetStoreDown"]["expr"].strip())
    assert found["FlagMetricsFleetStoreDown"]["for"]
    assert re.fullmatch(
        r"increase\(flagmetrics_dropped_events_total\[\w+\]\) > 0",
        found["FlagMetricsEventsDropped"]["expr"].strip(),
    )
