"""Hold the local store's state lock of a directory until killed.

    python -m tests.workers.lock_holder DIRECTORY MARKER

Takes the exclusive lock, then creates MARKER to say so.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from flagmetrics.locks import STATE_LOCK


def main(argv: list[str]) -> None:
    directory, marker = argv[:2]
    fd = os.open(os.path.join(directory, STATE_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    Path(marker).touch()
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1:])
