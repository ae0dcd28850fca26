"""A worker process of the local store: push batches of users into a directory once told to go.

    python -m tests.workers.pusher DIRECTORY SIGNALS WRITER FIRST STOP STEP

Hashes users FIRST..STOP-1 into batches of STEP (each user evaluated twice, one error per batch),
writes SIGNALS/ready-WRITER, waits for SIGNALS/go, pushes every batch and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from flagmetrics.buffer import digest_users
from flagmetrics.stores.base import Batch, FlagDelta
from flagmetrics.stores.local import LocalStore

GO_TIMEOUT_S = 20.0


async def push(directory: str, batches: list[Batch]) -> None:
    store = LocalStore(directory)
    try:
        for batch in batches:
            await store.push(batch)
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    directory, signals, writer = argv[:3]
    first, stop, step = map(int, argv[3:6])
    batches = []
    for seq, start in enumerate(range(first, stop, step), 1):
        users = digest_users((f"user-{i}" for i in range(start, min(stop, start + step))), b"")
        batches.append(Batch(writer, seq, {"shared": FlagDelta(2 * len(users), 1, users)}))
    (Path(signals) / f"ready-{writer}").touch()
    deadline = time.monotonic() + GO_TIMEOUT_S
    while not (Path(signals) / "go").exists():
        if time.monotonic() > deadline:
            print("no go signal", file=sys.stderr)
            return 1
        time.sleep(0.001)
    asyncio.run(push(directory, batches))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
