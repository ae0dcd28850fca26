"""The multiprocess directory: preparing it, and reading prometheus_client's files under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
from collections.abc import Iterator

__all__ = ["LOCK_NAME", "directory_lock", "prepare_directory"]

LOCK_NAME = ".flagmetrics.lock"
"""Lock file in the multiprocess directory: scrapes hold it shared, compaction holds it exclusive."""


@contextlib.contextmanager
def directory_lock(path: str, *, exclusive: bool = False) -> Iterator[None]:
    """Hold the directory's lock, shared for reading the files, exclusive for rewriting them."""
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def prepare_directory(path: str) -> None:
    """Create `path`, or empty it of the files a previous run left (metric files and fleet state)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    with directory_lock(path, exclusive=True):
        for pattern in ("*.db", "flagmetrics-*"):
            for name in glob.glob(os.path.join(path, pattern)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)
