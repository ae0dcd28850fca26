"""The gunicorn hooks and the multiprocess directory: set before prometheus_client loads, emptied at
start, dead workers folded into archives without changing any total."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import samples
from tests.processes import REPO

pytestmark = pytest.mark.usefixtures("clean_env")


def check(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run one command of tests.workers.gunicorn_checks in a fresh interpreter."""
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    environ.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "tests.workers.gunicorn_checks", *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environ,
        timeout=60,
    )


def test_importing_the_hooks_sets_a_fresh_directory_and_on_exit_removes_it() -> None:
    result = check("fresh-directory")
    assert result.stdout.strip() == "False", result.stderr


def test_a_directory_given_by_the_environment_is_kept(tmp_path: Path) -> None:
    result = check("given-directory", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert result.stdout.strip() == str(tmp_path), result.stderr
    assert tmp_path.is_dir()


def test_prometheus_client_imported_first_is_refused() -> None:
    """Imported before the directory is set, prometheus_client keeps per-process values: refuse to go on."""
    result = check("prometheus-client-first")
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr
    assert "import flagmetrics.gunicorn before" in result.stderr


def test_an_exporter_in_a_process_that_imported_prometheus_client_too_early_is_refused(tmp_path: Path) -> None:
    result = check("exporter-too-early", str(tmp_path))
    assert result.returncode != 0
    assert "was imported before" in result.stderr


def test_on_starting_empties_the_directory_of_a_previous_run(tmp_path: Path) -> None:
    for name in ("counter_12.db", "histogram_archive.db", "flagmetrics-flag-abc.bin", "flagmetrics-state.lock"):
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "unrelated.txt").write_text("keep me")
    result = check("on-starting", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["unrelated.txt"]


def test_child_exit_folds_a_dead_worker_without_changing_the_scrape(tmp_path: Path) -> None:
    """Every sample of the scrape is the same before and after the dead workers' files are folded."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = []
    for n in (5, 40, 17):
        result = check("record", str(n), **env)
        assert result.returncode == 0, result.stderr
        pids.append(result.stdout.split()[-1])
    before = check("scrape", **env).stdout
    assert 'feature_flag_evaluations_total{flag_key="f",reason="SPLIT",variant="v0"} 22.0' in before

    result = check("child-exit", *pids, **env)
    assert result.returncode == 0, result.stderr
    assert not [p for p in tmp_path.glob("*.db") if "archive" not in p.name]
    after = check("scrape", **env).stdout
    assert samples(after).keys() == samples(before).keys()
    for key, value in samples(before).items():
        assert math.isclose(samples(after)[key], value, rel_tol=1e-12), key


def test_compact_leaves_a_live_pid_alone(tmp_path: Path) -> None:
    from flagmetrics.multiprocess import compact

    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"")
    assert compact(str(tmp_path), os.getpid()) == 0
    assert (tmp_path / f"counter_{os.getpid()}.db").exists()


def test_child_exit_survives_a_failed_compaction(tmp_path: Path) -> None:
    """Compaction that fails leaves the files counted as they are and only logs."""
    result = check("failed-compaction", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "could not compact" in result.stdout
