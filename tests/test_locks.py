"""flagmetrics.locks: one way to take the directory's lock files, every wait bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flagmetrics import locks


def test_shared_holders_do_not_wait_for_each_other(tmp_path: Path) -> None:
    with (
        locks.hold(str(tmp_path), locks.METRICS_LOCK, exclusive=False),
        locks.hold(str(tmp_path), locks.METRICS_LOCK, exclusive=False, timeout_s=0.05),
    ):
        pass


def test_an_exclusive_holder_makes_others_time_out_naming_the_lock(tmp_path: Path) -> None:
    with locks.hold(str(tmp_path), locks.STATE_LOCK, exclusive=True):
        with (
            pytest.raises(TimeoutError, match=r"flagmetrics-state.lock .* stayed locked for 0.05 s"),
            locks.hold(str(tmp_path), locks.STATE_LOCK, exclusive=False, timeout_s=0.05),
        ):
            pass  # never reached
        with (
            pytest.raises(TimeoutError),
            locks.hold(str(tmp_path), locks.STATE_LOCK, exclusive=True, timeout_s=0.05),
        ):
            pass  # never reached


def test_the_two_lock_files_are_independent(tmp_path: Path) -> None:
    """A worker applying its batch never holds up a scrape of the metric files, and the other way round."""
    with (
        locks.hold(str(tmp_path), locks.STATE_LOCK, exclusive=True),
        locks.hold(str(tmp_path), locks.METRICS_LOCK, exclusive=True, timeout_s=0.05),
    ):
        pass


def test_a_waiter_gets_the_lock_once_it_is_released(tmp_path: Path) -> None:
    taken = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with locks.hold(str(tmp_path), locks.METRICS_LOCK, exclusive=True):
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(10)
        threading.Timer(0.05, release.set).start()
        with locks.hold(str(tmp_path), locks.METRICS_LOCK, exclusive=False, timeout_s=5):
            got_it_after_release = release.is_set()
    finally:
        release.set()
        thread.join(10)
    assert got_it_after_release


def test_the_default_timeouts_follow_the_kind_of_lock() -> None:
    assert locks.READ_TIMEOUT_S < locks.WRITE_TIMEOUT_S


def test_a_missing_directory_raises_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), locks.hold(str(tmp_path / "gone"), locks.METRICS_LOCK, exclusive=False):
        pass  # never reached
