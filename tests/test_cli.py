"""flagmetrics.cli: `serve` and `inspect` on real redis-server, Sentinel and host directories."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from flagmetrics import RedisStore, __version__
from flagmetrics.cli import main
from tests.processes import (
    LOOPBACK,
    REPO,
    RedisCluster,
    RedisSentinels,
    RedisServer,
    clean_environ,
    free_port,
    stop_process,
    wait_for,
)
from tests.workers.populate import populate

pytestmark = pytest.mark.usefixtures("clean_env")

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TOKEN = "scrape-token-1"
PASSWORD = "pw-s3cret-9f2c"
FLEET_GAUGES = {
    "feature_flag_unique_users",
    "feature_flag_error_rate",
    "flagmetrics_store_up",
    "feature_flag_last_evaluated_timestamp_seconds",
    "feature_flag_window_unique_users",
    "feature_flag_window_variant_unique_users",
    "feature_flag_split_p_value",
}


# What `inspect --json` must print for EVENTS and PINNED: exact counts and rates, sorted by flag key.
EXPECTED = {
    "banner": {"evaluations": 2, "errors": 0, "error_rate": 0.0, "unique_users": 2, "pinned": False},
    "checkout": {"evaluations": 4, "errors": 1, "error_rate": 0.25, "unique_users": 4, "pinned": False},
    "legacy": {"evaluations": 0, "errors": 0, "error_rate": 0.125, "unique_users": 500, "pinned": True},
    "search": {"evaluations": 3, "errors": 2, "error_rate": 2 / 3, "unique_users": 2, "pinned": False},
}


def core(document: dict[str, Any]) -> dict[str, Any]:
    """An `inspect --json` document with each flag's counts only (no time, window or split)."""
    flags = {flag: {k: v for k, v in row.items() if k in EXPECTED["banner"]} for flag, row in document["flags"].items()}
    return {**document, "flags": flags}


def write_directory(path: Path) -> None:
    """Fill a multiprocess directory the way gunicorn workers would (counter files and fleet state)."""
    subprocess.run(
        [sys.executable, "-m", "tests.workers.populate", str(path)],
        cwd=REPO,
        env=clean_environ(PROMETHEUS_MULTIPROC_DIR=str(path)),
        check=True,
        timeout=60,
    )
    assert any(name.startswith("counter_") for name in os.listdir(path)), os.listdir(path)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "dir"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The store options of a store holding EVENTS and PINNED: Redis, or a host's multiprocess directory."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        asyncio.run(populate(RedisStore.from_url(server.url)))
        return ["--redis-url", server.url]
    directory = tmp_path / "multiproc"
    directory.mkdir()
    write_directory(directory)
    return ["--dir", str(directory)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line in this process; return its exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- serve as a real process -------------------------------------------------------------------------


@dataclass
class Served:
    """A `flagmetrics serve` process this test started."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def scrape(self, token: str | None = TOKEN, accept: str | None = None) -> httpx.Response:
        headers = {"connection": "close"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        if accept is not None:
            headers["accept"] = accept
        return httpx.get(self.url, headers=headers, timeout=5)

    def terminate(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 5.0) -> int:
        """Send `sig` and return the exit code, failing the test unless it exits within `timeout_s`."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"flagmetrics serve did not stop within {timeout_s} s of {sig.name}:\n{self.output()}")


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str, **env: str) -> Iterator[Served]:
    """Start `python -m flagmetrics serve` on a free port, wait until it listens, and always stop it."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flagmetrics", "serve", "--port", str(port), *args],
            cwd=REPO,
            env=clean_environ(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(proc=proc, port=port, log=log)
    try:
        wait_for(
            lambda: proc.poll() is not None or "flagmetrics: serving" in served.output(),
            15,
            f"flagmetrics serve to listen on port {port}",
        )
        assert proc.poll() is None, f"flagmetrics serve exited with {proc.returncode}:\n{served.output()}"
        yield served
    finally:
        stop_process(proc)


def samples(text: str, *, openmetrics: bool = False) -> dict[tuple[str, str], float]:
    """The samples of a scrape with no label but `flag_key`, keyed by (name, flag_key); "" when unlabelled.

    The gauges with a window or variant label are left out (test_windows covers them).
    """
    parse = parse_openmetrics if openmetrics else text_string_to_metric_families
    return {
        (sample.name, sample.labels.get("flag_key", "")): sample.value
        for family in parse(text)
        for sample in family.samples
        if set(sample.labels) <= {"flag_key"} and "last_evaluated" not in sample.name
    }


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def expected_gauges(prefix: str = "") -> dict[tuple[str, str], float]:
    """The fleet gauges a scrape must show for EVENTS and PINNED."""
    gauges = {(f"{prefix}flagmetrics_store_up", ""): 1.0}
    for flag, row in EXPECTED.items():
        gauges[(f"{prefix}feature_flag_unique_users", flag)] = float(row["unique_users"])
        gauges[(f"{prefix}feature_flag_error_rate", flag)] = float(row["error_rate"])
    return gauges


# -- help and version --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        ([], ["serve", "inspect", "examples:"]),
        (
            ["serve"],
            [
                "--redis-url",
                "--redis-sentinel",
                "--redis-sentinel-master",
                "FLAGMETRICS_REDIS_SENTINEL_PASSWORD",
                "--dir",
                "--token",
                "--scrape-timeout",
                "FLAGMETRICS_FLEET_GAUGES=0",
                "examples:",
            ],
        ),
        (["inspect"], ["--redis-url", "--redis-sentinel", "--redis-sentinel-master", "--dir", "--json", "examples:"]),
    ],
)
def test_help_describes_each_command_with_an_example(
    capsys: pytest.CaptureFixture[str], argv: list[str], mentions: list[str]
) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    for text in mentions:
        assert text in out


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"flagmetrics {__version__}\n")


def test_python_dash_m_runs_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flagmetrics", "--version"], env=clean_environ(), capture_output=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (0, f"flagmetrics {__version__}\n".encode())


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "usage: flagmetrics" in err


def test_redis_url_and_dir_together_are_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "inspect", "--redis-url", "redis://127.0.0.1:6379/0", "--dir", str(tmp_path))
    assert code == 2
    assert "not allowed with argument" in err


# -- inspect -----------------------------------------------------------------------------------------


def test_inspect_json_has_exact_figures(capsys: pytest.CaptureFixture[str], store_args: list[str]) -> None:
    code, out, err = run(capsys, "inspect", *store_args, "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert core(document)["flags"] == EXPECTED
    assert list(document["flags"]) == sorted(EXPECTED)
    checkout = document["flags"]["checkout"]
    assert time.time() - 600 < checkout["last_evaluated"] <= time.time()
    assert checkout["windows"]["1h"]["unique_users"] == 4
    assert set(checkout["windows"]) == {"1h", "24h", "7d"}
    assert checkout["expected_split"] is None
    assert document["flags"]["legacy"]["last_evaluated"] is None


def test_inspect_table_has_exact_figures_sorted_by_flag(
    capsys: pytest.CaptureFixture[str], store_args: list[str]
) -> None:
    code, out, err = run(capsys, "inspect", *store_args)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "FLAG", "EVALUATIONS", "ERRORS", "ERROR", "RATE", "UNIQUE", "USERS",
        "USERS", "1h", "USERS", "24h", "USERS", "7d", "LAST", "EVALUATED",
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:5]]
    assert [row[:8] for row in rows] == [
        ["banner", "2", "0", "0.00%", "2", "2", "2", "2"],
        ["checkout", "4", "1", "25.00%", "4", "4", "4", "4"],
        ["legacy", "0", "0", "12.50%*", "500*", "0", "0", "0"],
        ["search", "3", "2", "66.67%", "2", "2", "2", "2"],
    ]
    assert [row[8:] for row in rows] == [[row[8], "ago"] for row in rows[:2]] + [["-"]] + [[rows[3][8], "ago"]]
    assert lines[5:7] == ["", "* pinned with update_from_metrics(): set from outside, not computed from evaluations"]


@pytest.mark.redis
def test_inspect_reads_the_redis_url_and_key_prefix_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    asyncio.run(populate(RedisStore.from_url(redis_server.url, key_prefix="shop")))
    monkeypatch.setenv("FLAGMETRICS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("FLAGMETRICS_KEY_PREFIX", "shop")
    code, out, _ = run(capsys, "inspect", "--json")
    assert code == 0
    assert core(json.loads(out)) == {"store": {"redis_url": redis_server.url, "key_prefix": "shop"}, "flags": EXPECTED}

    code, out, _ = run(capsys, "inspect", "--key-prefix", "other")
    assert (code, out) == (0, f"no flags recorded yet in Redis at {redis_server.url} (key prefix 'other')\n")


def test_inspect_an_empty_directory_says_no_flags_yet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "inspect", "--dir", str(tmp_path))
    assert (code, out) == (0, f"no flags recorded yet in the directory '{tmp_path}'\n")

    code, out, _ = run(capsys, "inspect", "--dir", str(tmp_path), "--json")
    assert (code, json.loads(out)) == (0, {"store": {"directory": str(tmp_path)}, "flags": {}})


@pytest.mark.parametrize("command", ["inspect", "serve"])
def test_no_store_exits_2_saying_how_to_give_one(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run(capsys, command)
    assert (code, out) == (2, "")
    assert err == (
        f"flagmetrics {command}: error: no fleet store given: pass `--redis-url` (or set FLAGMETRICS_REDIS_URL) "
        "to read Redis, `--redis-sentinel` (or set FLAGMETRICS_REDIS_SENTINEL) to read the Redis master its "
        "sentinels name, or `--dir` with the gunicorn multiprocess directory of a single host\n"
    )


@pytest.mark.parametrize("command", ["inspect", "serve"])
def test_a_missing_directory_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str) -> None:
    missing = tmp_path / "missing"
    code, _, err = run(capsys, command, "--dir", str(missing))
    assert code == 2
    assert f"`path` '{missing}' is not a directory" in err
    assert "--dir" in err


@pytest.mark.parametrize(("command", "extra"), [("inspect", []), ("serve", []), ("serve", ["--no-check"])])
def test_a_bad_url_exits_2_with_the_configuration_error(
    capsys: pytest.CaptureFixture[str], command: str, extra: list[str]
) -> None:
    code, out, err = run(capsys, command, "--redis-url", f"http://user:{PASSWORD}@x", *extra)
    assert (code, out) == (2, "")
    assert err == (
        f"flagmetrics {command}: error: `url` must start with redis://, rediss:// or unix://, "
        "got 'http://user:***@x' (set by --redis-url or FLAGMETRICS_REDIS_URL)\n"
    )


@pytest.mark.parametrize("command", ["inspect", "serve"])
def test_unreachable_redis_exits_2_quickly_naming_the_url_without_its_password(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    code, out, err = run(capsys, command, "--redis-url", f"redis://:{PASSWORD}@{LOOPBACK}:{port}/0")
    assert time.monotonic() - started < 3.0
    assert (code, out) == (2, "")
    assert err.startswith(
        f"flagmetrics {command}: error: could not read Redis at redis://:***@{LOOPBACK}:{port}/0 "
        "(key prefix 'flagmetrics'): "
    )
    assert "Connect" in err
    assert "check that Redis is running" in err
    assert ("--no-check" in err) is (command == "serve")
    assert PASSWORD not in err


def test_unreachable_redis_prints_one_line_and_no_traceback() -> None:
    """As a real process, with the URL (and its password, in the query) from the environment."""
    url = f"redis://{LOOPBACK}:{free_port()}/0?password={PASSWORD}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flagmetrics", "inspect"],
        env=clean_environ(FLAGMETRICS_REDIS_URL=url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 5.0
    assert (result.returncode, result.stdout) == (2, "")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"redis://{LOOPBACK}:" in result.stderr
    assert "password=***" in result.stderr
    assert PASSWORD not in result.stderr


@pytest.mark.redis
def test_a_password_protected_redis_is_read_and_its_password_never_printed(
    capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    redis_server.client().config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@{LOOPBACK}:{redis_server.port}/0"
    asyncio.run(populate(RedisStore.from_url(url)))

    code, out, err = run(capsys, "inspect", "--redis-url", url, "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["store"]["redis_url"] == f"redis://:***@{LOOPBACK}:{redis_server.port}/0"
    assert core(document)["flags"] == EXPECTED
    assert PASSWORD not in out

    wrong = f"redis://:wrong-{PASSWORD}@{LOOPBACK}:{redis_server.port}/0"
    code, out, err = run(capsys, "inspect", "--redis-url", wrong)
    assert (code, out) == (2, "")
    assert "could not read Redis at redis://:***@" in err
    assert PASSWORD not in err


# -- serve -------------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_serve_exports_only_the_fleet_gauges_and_survives_redis_going_away(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    asyncio.run(populate(RedisStore.from_url(redis_server.url)))
    with serving(tmp_path, "--redis-url", redis_server.url, "--token", TOKEN) as served:
        assert served.output() == (
            f"flagmetrics: serving the fleet gauges of Redis at {redis_server.url} (key prefix 'flagmetrics') "
            f"on {served.url} (bearer token required); stop with Ctrl-C or SIGTERM\n"
        )
        assert served.scrape(token=None).status_code == 401
        assert served.scrape(token="wrong").status_code == 401

        response = served.scrape()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert families(response.text) == FLEET_GAUGES
        assert "feature_flag_evaluations_total" not in response.text
        assert samples(response.text) == expected_gauges()
        assert 'feature_flag_window_unique_users{flag_key="checkout",window="1h"} 4.0' in response.text

        response = served.scrape(accept=OPENMETRICS)
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
        assert samples(response.text, openmetrics=True) == expected_gauges()

        redis_server.stop()
        started = time.monotonic()
        response = served.scrape()
        assert time.monotonic() - started < 1.0
        assert response.status_code == 200
        assert samples(response.text) == {("flagmetrics_store_up", ""): 0.0}

        assert served.terminate(signal.SIGTERM) == 0
        assert "Traceback" not in served.output()


@pytest.mark.timeout(60)
def test_serve_dir_exports_the_host_gauges_without_the_workers_counters(tmp_path: Path) -> None:
    """With the token from FLAGMETRICS_METRICS_TOKEN and a metric prefix; SIGINT stops it too."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    write_directory(directory)
    with serving(tmp_path, "--dir", str(directory), "--prefix", "shop", FLAGMETRICS_METRICS_TOKEN=TOKEN) as served:
        assert f"the directory '{directory}'" in served.output()
        assert served.scrape(token=None).status_code == 401
        response = served.scrape()
        assert response.status_code == 200
        assert families(response.text) == {f"shop_{name}" for name in FLEET_GAUGES}
        assert "evaluations_total" not in response.text
        assert samples(response.text) == expected_gauges("shop_")
        assert served.terminate(signal.SIGINT) == 0
        assert "Traceback" not in served.output()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_serve_no_check_starts_while_redis_is_down_and_recovers(tmp_path: Path, redis_server: RedisServer) -> None:
    asyncio.run(populate(RedisStore.from_url(redis_server.url)))
    redis_server.stop()
    with serving(tmp_path, "--no-check", FLAGMETRICS_REDIS_URL=redis_server.url) as served:
        assert "no auth" in served.output()
        assert samples(served.scrape(token=None).text) == {("flagmetrics_store_up", ""): 0.0}
        redis_server.start()  # same port and data directory: the data is back
        wait_for(
            lambda: samples(served.scrape(token=None).text) == expected_gauges(),
            10,
            "the fleet gauges once Redis is back",
        )
        assert served.terminate() == 0


def test_serve_on_a_busy_port_exits_2_and_restores_the_signal_handlers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run(capsys, "serve", "--dir", str(tmp_path), "--port", str(port))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].startswith(f"flagmetrics serve: error: could not listen on {LOOPBACK}:{port} (")
    assert "choose another `--port`" in err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_serve_rejects_a_prefix_that_is_not_a_metric_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "serve", "--dir", str(tmp_path), "--prefix", "my-app")
    assert code == 2
    assert err == "flagmetrics serve: error: `--prefix` must be letters, digits and underscores, got 'my-app'\n"


def test_serve_names_the_option_of_an_invalid_setting(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "serve", "--dir", str(tmp_path), "--scrape-timeout", "120")
    assert code == 2
    assert err == (
        "flagmetrics serve: error: `scrape_timeout_s` must be between 0.01 and 60 seconds, got 120.0 "
        "(set by --scrape-timeout or FLAGMETRICS_SCRAPE_TIMEOUT_S)\n"
    )


def test_inspect_into_a_closed_pipe_exits_without_a_traceback(tmp_path: Path) -> None:
    """`flagmetrics inspect --json | head -1` must not end in a BrokenPipeError traceback."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    write_directory(directory)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flagmetrics", "inspect", "--dir", str(directory), "--json"],
        env=clean_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the output is written
    try:
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=30)
    finally:
        stop_process(proc)
        proc.stderr.close()
    assert (code, err) == (1, "")


# -- Redis Cluster ------------------------------------------------------------------------------------


def test_inspect_and_serve_read_a_redis_cluster(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_cluster: RedisCluster, cluster_prefix: str
) -> None:
    """`--redis-cluster` reads the same figures from a cluster as from a single node, with every node named."""
    asyncio.run(populate(RedisStore.from_url(redis_cluster.url, cluster=True, key_prefix=cluster_prefix)))
    options = ("--redis-cluster", "--redis-url", redis_cluster.url, "--key-prefix", cluster_prefix)
    code, out, err = run(capsys, "inspect", *options, "--json")
    assert (code, err) == (0, "")
    store = {"redis_url": redis_cluster.url, "key_prefix": cluster_prefix, "cluster": True}
    assert core(json.loads(out)) == {"store": store, "flags": EXPECTED}

    with serving(tmp_path, *options, "--token", TOKEN) as served:
        assert f"Redis Cluster at {redis_cluster.url}" in served.output()
        response = served.scrape()
        assert response.status_code == 200
        assert samples(response.text) == expected_gauges()
        assert served.terminate(signal.SIGTERM) == 0


def test_inspect_of_a_cluster_url_without_the_option_says_what_to_set(
    capsys: pytest.CaptureFixture[str], redis_cluster: RedisCluster
) -> None:
    """Several hosts in the URL without `--redis-cluster`: a one-line message naming the option."""
    code, out, err = run(capsys, "inspect", "--redis-url", redis_cluster.url)
    assert (code, out) == (2, "")
    assert "only a cluster takes" in err
    assert err.count("\n") == 1


# -- Redis Sentinel -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels(redis_sentinels: RedisSentinels) -> RedisSentinels:
    """The session's sentinels, holding EVENTS and PINNED under the key prefix `shop`."""
    asyncio.run(populate(RedisStore.from_sentinel(redis_sentinels.addresses, key_prefix="shop")))
    return redis_sentinels


@pytest.mark.parametrize("command", ["inspect", "serve"])
@pytest.mark.parametrize("other", [["--redis-url", "redis://127.0.0.1:6379/0"], ["--dir", "."]], ids=["url", "dir"])
def test_redis_sentinel_with_another_store_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: str, other: list[str]
) -> None:
    code, _, err = run(capsys, command, "--redis-sentinel", "127.0.0.1:26379", *other)
    assert code == 2
    assert "not allowed with argument" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--redis-sentinel", "s1:26379,s2:port"],
            "`redis_sentinel` names a bad port 'port' for 's2' (1-65535) in 's1:26379,s2:port' "
            "(set by --redis-sentinel or FLAGMETRICS_REDIS_SENTINEL)",
        ),
        (
            ["--redis-sentinel", "s1:26379", "--redis-sentinel-master", "my master"],
            "`redis_sentinel_master` must be the master's service name in the sentinels' configuration "
            "(`sentinel monitor <name> ...`), got 'my master' "
            "(set by --redis-sentinel-master or FLAGMETRICS_REDIS_SENTINEL_MASTER)",
        ),
        (
            ["--redis-sentinel", "s1:26379", "--redis-cluster"],
            "`redis_sentinel` and `redis_cluster` do not go together (a Redis Cluster fails over by itself, "
            "without sentinels): drop `redis_cluster` (FLAGMETRICS_REDIS_CLUSTER) "
            "(set by --redis-sentinel or FLAGMETRICS_REDIS_SENTINEL)",
        ),
        (
            ["--redis-sentinel", "redis://s1:26379/0?health_check_interval=soon"],
            "`sentinels` 'redis://s1:26379/0?health_check_interval=soon' has a bad option: Invalid value for "
            "'health_check_interval' in connection URL. (set by --redis-sentinel or FLAGMETRICS_REDIS_SENTINEL)",
        ),
    ],
    ids=["bad-port", "bad-master", "cluster", "bad-option"],
)
@pytest.mark.parametrize("command", ["inspect", "serve"])
def test_a_bad_sentinel_setting_exits_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], command: str, options: list[str], message: str
) -> None:
    code, out, err = run(capsys, command, *options)
    assert (code, out) == (2, "")
    assert err == f"flagmetrics {command}: error: {message}\n"


def test_both_stores_in_the_environment_exit_2_saying_which_to_drop(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGMETRICS_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FLAGMETRICS_REDIS_SENTINEL", "127.0.0.1:26379")
    code, _, err = run(capsys, "inspect")
    assert code == 2
    assert "drop `redis_url` (FLAGMETRICS_REDIS_URL)" in err


@pytest.mark.parametrize("command", ["inspect", "serve"])
def test_unreachable_sentinels_exit_2_quickly_naming_them_without_any_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The master's password in the URL form and the sentinels' own are never printed."""
    monkeypatch.setenv("FLAGMETRICS_REDIS_SENTINEL_PASSWORD", f"sentinel-{PASSWORD}")
    ports = [free_port(), free_port()]  # nothing listens there
    sentinels = f"redis://:{PASSWORD}@{LOOPBACK}:{ports[0]},{LOOPBACK}:{ports[1]}/0"
    started = time.monotonic()
    code, out, err = run(capsys, command, "--redis-sentinel", sentinels, "--redis-sentinel-master", "cache")
    assert time.monotonic() - started < 3.0
    assert (code, out) == (2, "")
    assert err.startswith(
        f"flagmetrics {command}: error: could not read Redis Sentinel master 'cache' at "
        f"redis://:***@{LOOPBACK}:{ports[0]},{LOOPBACK}:{ports[1]}/0 (key prefix 'flagmetrics'): "
    )
    assert "No master found for 'cache'" in err
    assert "check that the sentinels are running and name a master that is up" in err
    assert ("--no-check" in err) is (command == "serve")
    assert PASSWORD not in err


@pytest.mark.parametrize(
    ("options", "environment", "reads"),
    [
        (
            ["--redis-sentinel", "127.0.0.1:{port}"],
            {"FLAGMETRICS_REDIS_URL": "redis://127.0.0.1:{port}/0", "FLAGMETRICS_REDIS_CLUSTER": "1"},
            "Redis Sentinel master 'mymaster' at 127.0.0.1:",
        ),
        (
            ["--redis-url", "redis://127.0.0.1:{port}/0"],
            {"FLAGMETRICS_REDIS_SENTINEL": "127.0.0.1:{port}", "FLAGMETRICS_REDIS_SENTINEL_PASSWORD": PASSWORD},
            "Redis at redis://127.0.0.1:",
        ),
    ],
    ids=["sentinel-over-url", "url-over-sentinel"],
)
def test_the_store_option_wins_over_the_variables_of_another_store(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    environment: dict[str, str],
    reads: str,
) -> None:
    port = free_port()  # nothing listens there: the message says which store was read
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(port=port))
    code, _, err = run(capsys, "inspect", *(option.format(port=port) for option in options))
    assert code == 2
    assert err.startswith(f"flagmetrics inspect: error: could not read {reads}")


def test_dir_wins_over_the_sentinel_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLAGMETRICS_REDIS_SENTINEL", "127.0.0.1:1")
    monkeypatch.setenv("FLAGMETRICS_REDIS_SENTINEL_PASSWORD", PASSWORD)
    code, out, _ = run(capsys, "inspect", "--dir", str(tmp_path))
    assert (code, out) == (0, f"no flags recorded yet in the directory '{tmp_path}'\n")


@pytest.mark.redis
def test_inspect_reads_the_master_the_sentinels_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sentinels: RedisSentinels
) -> None:
    options = ("--redis-sentinel", sentinels.addresses, "--redis-sentinel-master", "mymaster", "--key-prefix", "shop")
    code, out, err = run(capsys, "inspect", *options, "--json")
    assert (code, err) == (0, "")
    store = {"redis_sentinel": sentinels.addresses, "redis_sentinel_master": "mymaster", "key_prefix": "shop"}
    assert core(json.loads(out)) == {"store": store, "flags": EXPECTED}

    monkeypatch.setenv("FLAGMETRICS_REDIS_SENTINEL", sentinels.addresses)
    monkeypatch.setenv("FLAGMETRICS_KEY_PREFIX", "shop")
    code, out, _ = run(capsys, "inspect")
    assert code == 0
    assert out.splitlines()[1].split()[:5] == ["banner", "2", "0", "0.00%", "2"]


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_serve_exports_the_fleet_gauges_of_the_master_the_sentinels_name(
    tmp_path: Path, sentinels: RedisSentinels
) -> None:
    options = ("--redis-sentinel", sentinels.addresses, "--key-prefix", "shop", "--token", TOKEN)
    with serving(tmp_path, *options) as served:
        assert f"Redis Sentinel master 'mymaster' at {sentinels.addresses}" in served.output()
        response = served.scrape()
        assert response.status_code == 200
        assert samples(response.text) == expected_gauges()
        assert served.terminate(signal.SIGTERM) == 0
