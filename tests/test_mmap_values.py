"""flagmetrics' direct writes into prometheus_client's multiprocess files, held against prometheus_client itself.

Each case runs tests/workers/mmap_values.py in a process of its own with a fresh multiprocess
directory (the suite itself runs prometheus_client in single-process mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.processes import REPO, clean_environ


def worker(directory: Path, *args: str, pythonpath: str | None = None) -> Any:
    directory.mkdir()
    env = clean_environ(PROMETHEUS_MULTIPROC_DIR=str(directory))
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, "-m", "tests.workers.mmap_values", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_same_events_give_the_same_samples_as_prometheus_client(tmp_path: Path) -> None:
    """Every sample, counters, error counters, overflow, buckets and sums, bit for bit."""
    fast = worker(tmp_path / "fast", "events", "fast")
    reference = worker(tmp_path / "reference", "events", "prometheus_client")
    assert fast["direct_series"] > 20  # the direct writes were used ...
    assert reference["direct_series"] == 0  # ... and not in the reference
    fast, reference = fast["samples"], reference["samples"]
    assert fast == reference
    assert fast['feature_flag_evaluation_duration_seconds_count{"flag_key": "flag_0"}'] == 429.0
    assert any("__overflow__" in key for key in fast)
    assert any('"error_code": "PARSE_ERROR"' in key for key in fast)


def test_threads_hammering_one_series_count_exactly(tmp_path: Path) -> None:
    found = worker(tmp_path / "threads", "threads", "8", "20000")
    assert (
        found['feature_flag_evaluations_total{"flag_key": "hammered", "reason": "SPLIT", "variant": "on"}'] == 160_000
    )
    assert found['feature_flag_evaluation_duration_seconds_count{"flag_key": "hammered"}'] == 160_000
    total = 0.0
    for _ in range(160_000):  # every observation is the same, so any order of the additions gives this
        total += 0.0005
    assert found['feature_flag_evaluation_duration_seconds_sum{"flag_key": "hammered"}'] == total
    # The buffer, updated under prometheus_client's lock in the same acquisition, counted every one too.
    assert found["one_lock"] is True
    assert found["buffered"] == [160_000, 1_000, 1_000]


def test_a_forked_child_writes_its_own_files(tmp_path: Path) -> None:
    """A child keeps counting after a fork, in its own files; the parent's are untouched by it."""
    found = worker(tmp_path / "fork", "fork")
    key = 'feature_flag_evaluations_total{"flag_key": "forked", "reason": "SPLIT", "variant": "on"}'
    assert found["parent"][key] == 107.0
    assert found["child"][key] == 30.0  # prometheus_client's fork handling: a file of its own, from zero
    assert found["all"][key] == 137.0
    count = 'feature_flag_evaluation_duration_seconds_count{"flag_key": "forked"}'
    assert found["parent"][count] == 107.0
    assert found["child"][count] == 30.0


def test_files_that_grow_keep_every_write(tmp_path: Path) -> None:
    """Series written through a map made before their file grew land with the ones written after."""
    found = worker(tmp_path / "grow", "grow")
    assert found["sizes"][0] > 1024 * 1024  # past prometheus_client's first size of a file
    assert found["series"] == found["all_three"] == 8_000


# The newest release of every minor version in the supported range (flagmetrics.compat.PROMETHEUS_CLIENT_RANGE).
SUPPORTED = ("0.20.0", "0.21.1", "0.22.1", "0.23.1", "0.24.1", "0.25.0", "0.26.0")


def test_the_versions_tested_cover_the_supported_range() -> None:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from flagmetrics.compat import PROMETHEUS_CLIENT_RANGE

    supported = SpecifierSet(PROMETHEUS_CLIENT_RANGE)
    assert all(version in supported for version in SUPPORTED)
    minors = {Version(v).minor for v in SUPPORTED}
    assert minors == set(range(20, 27)), "a minor version of the range is not tested"


@pytest.mark.parametrize("version", SUPPORTED)
def test_each_supported_prometheus_client_reads_the_same_samples(version: str, tmp_path: Path) -> None:
    """Installed apart (pip --target), each version gives the same samples both ways, and across a fork."""
    site = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            f"prometheus-client=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    path = f"{site}{os.pathsep}{REPO}"
    fast = worker(tmp_path / "fast", "events", "fast", pythonpath=path)
    reference = worker(tmp_path / "reference", "events", "prometheus_client", pythonpath=path)
    assert fast["version"] == reference["version"] == version
    assert fast["direct_series"] > 20
    assert fast["samples"] == reference["samples"]
    forked = worker(tmp_path / "fork", "fork", pythonpath=path)
    key = 'feature_flag_evaluations_total{"flag_key": "forked", "reason": "SPLIT", "variant": "on"}'
    assert (forked["parent"][key], forked["child"][key]) == (107.0, 30.0)
