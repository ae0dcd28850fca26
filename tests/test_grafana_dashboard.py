"""examples/grafana/dashboard.json: every panel query is valid PromQL over metrics flagmetrics really exports.

How an expression is checked to be PromQL: promtool has no parse-only command, so every target
expression (after replacing Grafana's variables with valid stand-ins) is written as a recording rule
into a temporary rules file and checked with `promtool check rules`. That runs Prometheus' own PromQL
parser, offline and in milliseconds, with no server, port, data or timing involved, and it is the
same check the rules in examples/prometheus get. (`promtool query instant` would need a running
Prometheus; tests/test_prometheus_server.py additionally runs these queries against one.)

Which metric names exist is not a hard-coded list: it is read from a real scrape, rendered by
flagmetrics' own `render()` from an exporter with a fresh CollectorRegistry after it recorded a few
evaluations (one of them an ERROR), so renaming a metric in the library breaks this test. The names
are the sample names plus what each `# TYPE` line implies (a histogram's `_bucket`, `_sum` and
`_count`), so a family that has no sample yet (a counter with labels) still counts.

This module also holds the helpers the other Prometheus tests import (`exported_metric_names`,
`metric_names`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import yaml

from tests.helpers import FLEET_GAUGES, require_binary
from tests.processes import REPO

DASHBOARD = REPO / "examples" / "grafana" / "dashboard.json"

# Stand-ins for Grafana's built-in interval variables; any other `$var` becomes a plain word, which
# is valid inside a label matcher's string and a parse error anywhere else.
_GRAFANA_DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


# -- shared helpers ---------------------------------------------------------------------------------


async def _scrape_text() -> str:
    from prometheus_client import CollectorRegistry

    from flagmetrics.config import Settings
    from flagmetrics.exporter import PrometheusExporter
    from flagmetrics.stores.redis import RedisStore

    # A Redis store, so that the spool's gauges are in the scrape too (its directory is never created here).
    with tempfile.TemporaryDirectory() as scratch:
        exporter = PrometheusExporter(
            registry=CollectorRegistry(),
            store=RedisStore(fakeredis.aioredis.FakeRedis()),
            settings=Settings(spool_dir=os.path.join(scratch, "spool")),
        )
        return await _record_and_render(exporter)


async def _record_and_render(exporter: Any) -> str:
    from flagmetrics.events import Evaluation
    from flagmetrics.exposition import render

    try:
        for reason, variant, code in (
            ("SPLIT", "blue", None),
            ("STATIC", None, None),
            ("ERROR", None, "FLAG_NOT_FOUND"),
        ):
            await exporter.record(
                Evaluation(
                    flag_key="checkout",
                    reason=reason,
                    variant=variant,
                    targeting_key="user-1",
                    evaluation_duration_ms=0.5,
                    error_code=code,
                )
            )
        await exporter.flush()
        body, _ = await render(exporter)
    finally:
        await exporter.close()
    return body.decode()


@functools.cache
def exported_scrape() -> str:
    """A real scrape of an exporter with a fresh registry that recorded SPLIT, STATIC and ERROR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set in the test environment; the in-process scrape needs it unset")
    return asyncio.run(_scrape_text())


def exported_metric_names() -> frozenset[str]:
    """Every series name a Prometheus scraping flagmetrics can store, derived from a real scrape.

    `_created` series are left out: prometheus_client emits them only in single-process mode, not
    under gunicorn's multiprocess mode, so no query may rely on them.
    """
    names: set[str] = set()
    for line in exported_scrape().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            elif kind == "summary":
                names.update((name, f"{name}_sum", f"{name}_count"))
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return frozenset(name for name in names if not name.endswith("_created"))


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIERS = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "start",
        "end",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers that are no function, keyword or label).

    Strings, label matchers, ranges and grouping label lists are removed first; what is left that
    is not followed by `(` (a function or aggregation) and is not a keyword is a metric name.
    """
    assert "__name__" not in expr, f"select metrics by name, not with a __name__ matcher: {expr}"
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPINGS.sub(" ", text)
    return {name for name in _IDENTIFIERS.findall(text) if name.lower() not in _KEYWORDS}


def promtool_check_exprs(exprs: dict[str, str], directory: Path) -> subprocess.CompletedProcess[str]:
    """Run `promtool check rules` on a file holding every expression as a recording rule."""
    rules = {"groups": [{"name": "expressions", "rules": [{"record": r, "expr": e} for r, e in exprs.items()]}]}
    path = directory / "expressions.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    promtool = require_binary("promtool", "prometheus")
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)


# -- the dashboard ----------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def _targets() -> list[tuple[str, str]]:
    """(`panel title/refId`, raw expression) of every target."""
    return [
        (f"{panel['title']}/{target['refId']}", target["expr"])
        for panel in _panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


TARGETS = _targets()


def promql(expr: str, rate_interval: str = _GRAFANA_DURATIONS["__rate_interval"], variable: str = "standin") -> str:
    """The expression with Grafana's variables replaced by valid stand-ins.

    Interval variables become durations; dashboard variables (`$flag_key`) become `variable`.
    """

    def standin(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name == "__rate_interval":
            return rate_interval
        return _GRAFANA_DURATIONS.get(name, variable)

    text = _GRAFANA_VARIABLE.sub(standin, expr)
    assert "$" not in text, f"a Grafana variable was left: {text}"
    return text


def _variables() -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in load_dashboard()["templating"]["list"]}


def test_targets_were_found() -> None:
    assert len(TARGETS) >= 10
    assert all(expr.strip() for _, expr in TARGETS)


@pytest.mark.parametrize(("where", "expr"), TARGETS, ids=[where for where, _ in TARGETS])
def test_target_is_valid_promql(where: str, expr: str, tmp_path: Path) -> None:
    result = promtool_check_exprs({"dashboard:target": promql(expr)}, tmp_path)
    assert result.returncode == 0, f"{where}: {expr}\n{result.stdout}{result.stderr}"
    assert "SUCCESS: 1 rules found" in result.stdout


def test_promql_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The parse check can fail: an unbalanced parenthesis is reported."""
    broken = 'sum by (flag_key (rate(feature_flag_evaluations_total{flag_key=~"$flag_key"}[$__rate_interval]))'
    result = promtool_check_exprs({"dashboard:target": promql(broken)}, tmp_path)
    assert result.returncode != 0
    assert "could not parse expression" in result.stdout + result.stderr


@pytest.mark.parametrize(("where", "expr"), TARGETS, ids=[where for where, _ in TARGETS])
def test_target_references_only_exported_metrics(where: str, expr: str) -> None:
    names = metric_names(promql(expr))
    assert names, f"{where} selects no metric: {expr}"
    unknown = names - exported_metric_names()
    assert not unknown, f"{where} queries metrics flagmetrics does not export: {sorted(unknown)}"


def test_exported_names_come_from_a_real_scrape() -> None:
    """The scrape the names come from shows the counter, histogram, error, fleet and self metrics."""
    names = exported_metric_names()
    assert {
        "feature_flag_evaluations_total",
        "feature_flag_evaluation_duration_seconds_bucket",
        "feature_flag_evaluation_errors_total",
        "feature_flag_unique_users",
        "feature_flag_error_rate",
        "flagmetrics_store_up",
    } <= names
    assert 'reason="ERROR"' in exported_scrape()
    assert 'error_code="FLAG_NOT_FOUND"' in exported_scrape()
    assert not any(name.endswith("_created") for name in names)


def test_metric_names_extracts_only_metrics() -> None:
    expr = (
        'sum by (flag_key, le) (rate(foo_bucket{a="b", c=~"x|y"}[5m] offset 1m)) '
        "/ on (flag_key) group_left (variant) bar:recorded > bool 1e-3 "
        "and baz unless histogram_quantile(0.99, qux)"
    )
    assert metric_names(expr) == {"foo_bucket", "bar:recorded", "baz", "qux"}


def test_every_exported_family_is_on_the_dashboard() -> None:
    """A metric the library exports but no panel shows is a gap (a new metric needs a panel)."""
    shown = set().union(*(metric_names(promql(expr)) for _, expr in TARGETS))
    families = {line.split()[2] for line in exported_scrape().splitlines() if line.startswith("# TYPE ")}
    missing = {
        family
        for family in families
        if not family.endswith("_created") and not any(name.startswith(family) for name in shown)
    }
    assert not missing, f"no panel queries {sorted(missing)}"


def test_fleet_gauges_are_aggregated_with_max() -> None:
    """Every target scrapes the same fleet-wide value: summing over targets would multiply it."""
    fleet = FLEET_GAUGES
    uses = [(where, expr) for where, expr in TARGETS if any(g in expr for g in fleet)]
    assert len(uses) >= 6
    for where, expr in uses:
        for gauge in fleet:
            for match in re.finditer(rf"\b{gauge}\b", expr):
                before = expr[: match.start()]
                assert re.search(r"max by \(flag_key(, variant)?(, window)?\) \($", before), (
                    f"{where}: {gauge} not under max"
                )


def test_required_panels_exist() -> None:
    titles = {panel["title"]: panel for panel in _panels(load_dashboard())}
    required = {
        "Evaluations by variant": ("feature_flag_evaluations_total", "variant"),
        "Evaluations by reason": ("feature_flag_evaluations_total", "reason"),
        "Evaluation latency percentiles": ("feature_flag_evaluation_duration_seconds_bucket", "le"),
        "Unique users per flag": ("feature_flag_unique_users", "flag_key"),
        "Error rate per flag": ("feature_flag_error_rate", "flag_key"),
        "Errors by error code": ("feature_flag_evaluation_errors_total", "error_code"),
        "Fleet store up": ("flagmetrics_store_up", "instance"),
        "Store errors": ("flagmetrics_store_errors_total", "operation"),
        "Dropped events": ("flagmetrics_dropped_events_total", "instance"),
        "Invalid events": ("flagmetrics_invalid_events_total", "defect"),
        "Cardinality overflow": ("flagmetrics_cardinality_overflow_total", "kind"),
        "Recent users per window": ("feature_flag_window_unique_users", "window"),
        "Exposure per variant": ("feature_flag_window_variant_unique_users", "variant"),
        "Time since last evaluation": ("feature_flag_last_evaluated_timestamp_seconds", "time()"),
        "Split check (p-value)": ("feature_flag_split_p_value", "window"),
    }
    for title, (metric, label) in required.items():
        assert title in titles, f"missing panel {title!r}"
        exprs = [target["expr"] for target in titles[title]["targets"]]
        assert any(metric in expr and label in expr for expr in exprs), (title, exprs)


def test_latency_panel_shows_p50_p90_p99_from_the_histogram() -> None:
    panel = next(p for p in _panels(load_dashboard()) if p["title"] == "Evaluation latency percentiles")
    quantiles = set()
    for target in panel["targets"]:
        match = re.match(r"histogram_quantile\(([\d.]+), sum by \(flag_key, le\) \(rate\(", target["expr"])
        assert match, target["expr"]
        quantiles.add(float(match.group(1)))
    assert quantiles == {0.5, 0.9, 0.99}
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_flag_panels_filter_by_the_flag_key_variable() -> None:
    for where, expr in TARGETS:
        if "feature_flag_" in expr:
            for selector in re.findall(r"feature_flag_\w+(\{[^}]*\})?", expr):
                assert 'flag_key=~"$flag_key"' in selector, f"{where} does not filter by $flag_key: {expr}"


def test_template_variables() -> None:
    variables = _variables()
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    flag_key = variables["flag_key"]
    assert flag_key["type"] == "query"
    assert flag_key["multi"] is True
    assert flag_key["includeAll"] is True
    assert flag_key["allValue"] == ".*"
    query = flag_key["query"]["query"] if isinstance(flag_key["query"], dict) else flag_key["query"]
    match = re.fullmatch(r"label_values\((\w+), flag_key\)", query)
    assert match, query
    assert match.group(1) in exported_metric_names()


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in _panels(load_dashboard()):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], (panel["title"], target["refId"])


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"]
    assert dashboard["title"]
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    ids = [panel["id"] for panel in rows + _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels(dashboard):
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
