"""Internal: the background task that delivers a worker's buffer to the store, once per flush interval."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Counter

from flagmetrics.buffer import Buffer
from flagmetrics.exceptions import StoreError
from flagmetrics.logs import ThrottledLog, logger
from flagmetrics.stores.base import Batch, Store

__all__ = ["Flusher"]

# Longest one delivery may take before it is abandoned and retried, in seconds.
PUSH_TIMEOUT_S = 10.0
# Deliveries of one batch the store refuses (not an outage) before the batch is dropped and counted.
REFUSALS_BEFORE_DROP = 3


class Flusher:
    """Deliver the buffer to the store every `interval_s` seconds and once more when stopped."""

    def __init__(
        self,
        buffer: Buffer,
        store: Store,
        *,
        interval_s: float,
        hash_key: bytes,
        store_errors: Counter,
        dropped_events: Counter,
    ) -> None:
        self._buffer = buffer
        self._store = store
        self._interval_s = interval_s
        self._hash_key = hash_key
        self._store_errors = store_errors.labels(operation="flush")
        self._dropped = dropped_events
        self._lock = asyncio.Lock()
        self._refusals = 0
        self._task: asyncio.Task[None] | None = None
        self._log = ThrottledLog()

    @property
    def running(self) -> bool:
        """Whether the periodic task is alive."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the periodic task on the running event loop (idempotent)."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flagmetrics-flusher")

    async def flush(self) -> None:
        """Deliver the batch left in flight, then everything buffered; raise `StoreError` on failure.

        One round trip per flush, two when a batch left by a failed flush goes first.
        """
        async with self._lock:
            retrying = self._buffer.in_flight is not None
            for _ in range(2 if retrying else 1):
                batch = self._buffer.in_flight or self._buffer.cut(self._hash_key)
                if batch is None:
                    return
                try:
                    async with asyncio.timeout(PUSH_TIMEOUT_S):
                        await self._store.push(batch)
                except (StoreError, TimeoutError) as exc:
                    self._store_errors.inc()
                    if isinstance(exc, StoreError) and not exc.transient:
                        self._refused(batch, exc)
                    else:
                        self._log.warning(
                            "flush",
                            "flagmetrics: store unavailable, %d events kept for retry: %s",
                            batch.events,
                            exc,
                        )
                    raise StoreError(f"flush failed: {exc}") from exc
                self._refusals = 0
                self._buffer.delivered()

    def _refused(self, batch: Batch, exc: StoreError) -> None:
        """Count a refusal; past the limit, drop the batch so that later batches are not held up."""
        self._refusals += 1
        if self._refusals < REFUSALS_BEFORE_DROP:
            self._log.warning("refused", "flagmetrics: the store refused a batch, retrying: %s", exc)
            return
        self._refusals = 0
        self._buffer.drop_in_flight()
        lost = batch.events if exc.refused_events is None else exc.refused_events
        self._dropped.inc(lost)
        logger.error(
            "flagmetrics: the store refused a batch %d times; the %d evaluations it refused are counted in "
            "flagmetrics_dropped_events_total: %s",
            REFUSALS_BEFORE_DROP,
            lost,
            exc,
        )

    async def stop(self, timeout_s: float) -> None:
        """Stop the periodic task and flush a last time; count as dropped what cannot be delivered."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except (StoreError, TimeoutError):
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
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except StoreError:
                pass  # counted and logged by flush(); the batch stays in flight for the next round
            except Exception:
                logger.exception("flagmetrics: unexpected error in the flusher; it keeps running")
