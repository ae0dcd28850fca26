"""Internal: file locks in the multiprocess directory: one way to take them, and every wait bounded.

Two lock files guard two different sets of files, so that neither waits on the other: `METRICS_LOCK`
guards prometheus_client's metric files (scrapes read them shared, folding dead workers' files
rewrites them exclusive), `STATE_LOCK` guards the local store's flag files (scrapes read them
shared, workers apply their batches exclusive). Holders keep a lock for milliseconds, so a wait
longer than its timeout means something is wrong: it fails with `TimeoutError` instead of hanging
a scrape or a worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from typing import Final

__all__ = ["METRICS_LOCK", "READ_TIMEOUT_S", "STATE_LOCK", "WRITE_TIMEOUT_S", "hold"]

METRICS_LOCK: Final = ".flagmetrics.lock"
"""Guards prometheus_client's `*.db` files."""

STATE_LOCK: Final = "flagmetrics-state.lock"
"""Guards the local store's `flagmetrics-flag-*.bin` files."""

READ_TIMEOUT_S: Final = 2.0
"""Longest wait for a shared lock (a scrape), in seconds."""

WRITE_TIMEOUT_S: Final = 8.0
"""Longest wait for an exclusive lock, in seconds: writers may queue behind several others' batches."""

_POLL_S: Final = 0.001  # flock has no timeout of its own: try again every millisecond


@contextlib.contextmanager
def hold(directory: str, name: str, *, exclusive: bool, timeout_s: float | None = None) -> Iterator[None]:
    """Hold lock file `name` of `directory`, shared or exclusive, waiting at most `timeout_s`.

    The timeout defaults to `WRITE_TIMEOUT_S` for exclusive locks and `READ_TIMEOUT_S` for shared
    ones. Raises `TimeoutError` naming the lock when it stays taken, and `OSError` when the lock file
    cannot be opened.
    """
    if timeout_s is None:
        timeout_s = WRITE_TIMEOUT_S if exclusive else READ_TIMEOUT_S
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, operation)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{name} in {directory!r} stayed locked for {timeout_s} s") from None
                time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)  # closing releases the lock
