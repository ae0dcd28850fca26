"""Internal: the background task that delivers a worker's buffer to the store, once per flush interval."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from functools import partial

from prometheus_client import Counter

from flagmetrics.buffer import Buffer
from flagmetrics.exceptions import StoreError
from flagmetrics.logs import ThrottledLog, logger
from flagmetrics.spool import Spool
from flagmetrics.stores.base import Batch, Store

__all__ = ["Flusher"]

# Longest one delivery may take before it is abandoned and retried, in seconds.
PUSH_TIMEOUT_S = 10.0
# Deliveries of one batch the store refuses (not an outage) before the batch is dropped and counted.
REFUSALS_BEFORE_DROP = 3
# With a spool, the longest the last flush at shutdown may take before the batches are spooled instead.
SHUTDOWN_TRY_S = 0.5
# Longest wait for the periodic task to give way when stopped: a store client may hold a cancellation.
CANCEL_WAIT_S = 0.5
# Batches of stopped workers one flush delivers from the spool at most, so its own flushes keep going.
ADOPTED_PER_FLUSH = 64


class Flusher:
    """Deliver the buffer to the store every `interval_s` seconds and once more when stopped.

    With a spool, a batch that cannot be delivered goes to disk at once (the memory is freed, and a
    SIGKILL loses at most what was buffered since the last flush); the flusher delivers its spooled
    batches first, oldest first, then the buffer, then batches stopped workers left in the spool.
    """

    def __init__(
        self,
        buffer: Buffer,
        store: Store,
        *,
        interval_s: float,
        hash_key: bytes,
        store_errors: Counter,
        dropped_events: Counter,
        spool: Spool | None = None,
        spool_deliveries: Counter | None = None,
        spool_errors: Counter | None = None,
    ) -> None:
        self._buffer = buffer
        self._store = store
        self._interval_s = interval_s
        self._hash_key = hash_key
        self._store_errors = store_errors.labels(operation="flush")
        self._dropped = dropped_events
        self._spool = spool
        self._spool_deliveries = spool_deliveries
        self._spool_write_errors = spool_errors.labels(operation="write") if spool_errors is not None else None
        self._lock = asyncio.Lock()
        self._refusals = 0
        self._failing = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._log = ThrottledLog()

    @property
    def running(self) -> bool:
        """Whether the periodic task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the periodic task on the running event loop (idempotent)."""
        if not self.running:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flagmetrics-flusher")

    async def flush(self) -> None:
        """Deliver spooled batches, the batch left in flight, then the buffer; raise `StoreError` on failure.

        One round trip per flush, two when a batch left by a failed flush goes first, plus one per
        spooled batch. On failure, with a spool, what is undelivered is spooled.
        """
        async with self._lock:
            try:
                await self._deliver_spooled()
                retrying = self._buffer.in_flight is not None
                for _ in range(2 if retrying else 1):
                    batch = self._buffer.in_flight or await self._buffer.cut_in_steps(self._hash_key)
                    if batch is None:
                        break
                    await self._push(batch, self._buffer.drop_in_flight)
                    self._buffer.delivered()
            except StoreError as exc:
                self._failing = True
                if exc.transient:
                    self.spool_undelivered()
                raise
            self._failing = False
            await self._adopt()

    async def _push(self, batch: Batch, drop: Callable[[], None]) -> None:
        """Deliver one batch; count and raise `StoreError` (transient or not) when it is not applied.

        `drop` forgets the batch once the store has refused it too often.
        """
        try:
            async with asyncio.timeout(PUSH_TIMEOUT_S):
                await self._store.push(batch)
        except (StoreError, TimeoutError) as exc:
            self._store_errors.inc()
            if isinstance(exc, StoreError) and not exc.transient:
                self._refused(batch, exc, drop)
                raise StoreError(f"flush failed: {exc}", transient=False) from exc
            self._log.warning(
                "flush", "flagmetrics: store unavailable, %d events kept for retry: %s", batch.events, exc
            )
            raise StoreError(f"flush failed: {exc}") from exc
        self._refusals = 0

    def _refused(self, batch: Batch, exc: StoreError, drop: Callable[[], None]) -> None:
        """Count a refusal; past the limit, drop the batch so that later batches are not held up."""
        self._refusals += 1
        if self._refusals < REFUSALS_BEFORE_DROP:
            self._log.warning("refused", "flagmetrics: the store refused a batch, retrying: %s", exc)
            return
        self._refusals = 0
        drop()
        lost = batch.events if exc.refused_events is None else exc.refused_events
        self._dropped.inc(lost)
        logger.error(
            "flagmetrics: the store refused a batch %d times; the %d evaluations it refused are counted in "
            "flagmetrics_dropped_events_total: %s",
            REFUSALS_BEFORE_DROP,
            lost,
            exc,
        )

    async def _deliver_spooled(self) -> None:
        """Deliver this process's spooled batches, oldest first, removing each once applied."""
        spool = self._spool
        if spool is None:
            return
        for seq in list(spool.pending):
            batch = spool.read_own(seq)
            if batch is None:  # damaged (counted) or gone
                spool.remove_own(seq)
                continue
            await self._push(batch, partial(spool.remove_own, seq))
            spool.remove_own(seq)
            self._delivered_from_spool()

    async def _adopt(self) -> None:
        """Deliver batches that stopped workers of this host left in the spool (best effort, bounded)."""
        spool = self._spool
        if spool is None:
            return
        budget = ADOPTED_PER_FLUSH
        try:
            for writer in spool.orphans():
                with spool.adopt(writer) as batches:
                    for path, batch in batches or ():
                        if budget <= 0:
                            return
                        if batch is not None:
                            try:
                                await self._push(batch, partial(_remove, path))
                            except StoreError as exc:
                                if exc.transient:
                                    return
                                if self._refusals:  # refused, but not yet given up on
                                    return
                            else:
                                self._delivered_from_spool()
                            budget -= 1
                        _remove(path)
        except OSError as exc:
            self._log.warning("spool-read", "flagmetrics: could not read the spool: %s", exc)

    def _delivered_from_spool(self) -> None:
        if self._spool_deliveries is not None:
            self._spool_deliveries.inc()

    def spool_undelivered(self) -> bool:
        """Spool the batch in flight and everything buffered; True when nothing undelivered is left in memory."""
        spool = self._spool
        if spool is None:
            return False
        try:
            while True:
                batch = self._buffer.in_flight or self._buffer.cut(self._hash_key)
                if batch is None:
                    return True
                spool.write(batch)
                self._buffer.delivered()
        except OSError as exc:
            if self._spool_write_errors is not None:
                self._spool_write_errors.inc()
            self._log.warning("spool-write", "flagmetrics: could not spool undelivered batches: %s", exc)
            return False

    async def stop(self, timeout_s: float) -> None:
        """Stop the periodic task and flush a last time; spool, or count as dropped, what cannot be delivered.

        Returns within about `timeout_s` (with a spool, `SHUTDOWN_TRY_S`) plus `CANCEL_WAIT_S`, even
        when the store client does not give way to a cancellation: tasks that outlive their bound are
        left behind, and what they hold is spooled or counted.
        """
        self._stopping = True
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=CANCEL_WAIT_S)
                self._task = None
            if self._spool is not None:
                # A worker waiting on the store at exit is a worker gunicorn cannot replace yet: with a
                # spool, a store that failed the last flush is not tried again, a healthy one answers
                # within SHUTDOWN_TRY_S.
                if self._failing:
                    raise StoreError("the last flush failed")
                timeout_s = min(timeout_s, SHUTDOWN_TRY_S)
            final = asyncio.ensure_future(self.flush())
            await asyncio.wait({final}, timeout=timeout_s)
            if not final.done():
                final.cancel()
                raise TimeoutError(f"no flush within {timeout_s} s")
            final.result()
        except (StoreError, TimeoutError):
            if not self.spool_undelivered():
                self._abandon()
        finally:
            if self._spool is not None:
                self._spool.close()

    def _abandon(self) -> None:
        events, users = self._buffer.abandon()
        if events:
            self._dropped.inc(events)
            logger.error(
                "flagmetrics: store unavailable at shutdown; %d evaluations (%d user ids) not "
                "delivered, counted in flagmetrics_dropped_events_total",
                events,
                users,
            )

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval_s)
            if self._stopping:  # a cancellation the store client swallowed
                return
            try:
                await self.flush()
            except StoreError:
                pass  # counted and logged by flush(); the batch is spooled or stays in flight for the next round
            except Exception:
                logger.exception("flagmetrics: unexpected error in the flusher; it keeps running")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
