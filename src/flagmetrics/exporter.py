"""Internal: `PrometheusExporter`: the API applications call, a drop-in for litestar-flags' exporter that is true
across gunicorn workers and hosts."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Histogram

from flagmetrics.admission import Admission
from flagmetrics.buffer import Buffer
from flagmetrics.collector import FleetGauge, fleet_gauges
from flagmetrics.compat import multiprocess_lock
from flagmetrics.config import Settings, metric_prefix
from flagmetrics.environment import multiprocess_dir
from flagmetrics.events import MAX_KEY_LENGTH, Defect, Reader, valid_label
from flagmetrics.exceptions import ConfigurationError, FlagMetricsError, StoreError
from flagmetrics.flusher import Flusher
from flagmetrics.logs import ThrottledLog, logger
from flagmetrics.metrics import DEFAULT_DURATION_BUCKETS, DefectCounter, Metrics
from flagmetrics.spool import Spool, spool_directory
from flagmetrics.stores import default_store
from flagmetrics.stores.base import Pin, Snapshot, Store, snapshot_within
from flagmetrics.windows import split_weights

__all__ = ["PROMETHEUS_AVAILABLE", "MetricsProvider", "PrometheusExporter"]

STORE_CLOSE_S = 1.0
"""Longest wait for the store to close its connections in `close()`, in seconds."""

PROMETHEUS_AVAILABLE = True
"""Kept for litestar-flags compatibility: prometheus_client is a dependency of flagmetrics."""


@runtime_checkable
class MetricsProvider(Protocol):
    """Pre-aggregated figures of one flag, as litestar-flags' `FlagMetrics` has them."""

    @property
    def unique_users(self) -> int:
        """Number of unique users who evaluated the flag."""
        ...

    @property
    def error_rate(self) -> float:
        """Error rate as a percentage (0-100)."""
        ...

    @property
    def total_evaluations(self) -> int:
        """Total number of evaluations."""
        ...


class PrometheusExporter:
    """Feature-flag evaluation metrics for Prometheus, correct for a whole gunicorn fleet.

    Counters and histograms are prometheus_client metrics (multiprocess mode under gunicorn, so every
    worker's counts add up); unique users and error rates are kept in a fleet store shared by all
    workers and hosts and computed at scrape time. `record()` never waits on the network: user ids go
    into an in-memory buffer that a background task hashes and flushes to the store.

    Metrics exported (with `prefix_` in front when a prefix is given):
    `feature_flag_evaluations_total{flag_key,reason,variant}`,
    `feature_flag_evaluation_duration_seconds{flag_key}`, `feature_flag_unique_users{flag_key}`,
    `feature_flag_error_rate{flag_key}`, `feature_flag_evaluation_errors_total{flag_key,error_code}`,
    plus `flagmetrics_*` self-metrics.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        prefix: str = "",
        duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS,
        *,
        store: Store | None = None,
        settings: Settings | None = None,
        flush_interval_s: float | None = None,
        buffer_capacity: int | None = None,
        scrape_timeout_s: float | None = None,
        max_flags: int | None = None,
        max_variants_per_flag: int | None = None,
        hash_key: str | None = None,
    ) -> None:
        """Create the metrics and choose the store.

        Args:
            registry: Registry for the counter and histogram; prometheus_client's default when None.
                Under multiprocess mode a scrape reads every worker's files instead.
            prefix: Prefix of every metric name (`"myapp"` gives `myapp_feature_flag_*`).
            duration_buckets: Histogram buckets in seconds.
            store: Fleet store; when None, a `RedisStore` if `FLAGMETRICS_REDIS_URL` or
                `FLAGMETRICS_REDIS_SENTINEL` is set, else a
                `LocalStore` beside the multiprocess files (or in memory for a single process).
            settings: All settings at once; by default read from `FLAGMETRICS_*` variables. The
                keyword arguments after it override single fields.
        """
        self._prefix = metric_prefix(prefix)
        overrides = {
            "flush_interval_s": flush_interval_s,
            "buffer_capacity": buffer_capacity,
            "scrape_timeout_s": scrape_timeout_s,
            "max_flags": max_flags,
            "max_variants_per_flag": max_variants_per_flag,
            "hash_key": hash_key,
        }
        self._settings = (settings or Settings.from_env()).with_(
            **{name: value for name, value in overrides.items() if value is not None}
        )
        self._multiprocess_dir = multiprocess_dir()
        self._metrics = Metrics.create(registry, self._prefix, tuple(duration_buckets))
        self._registry = registry
        self._gauges = fleet_gauges(self._prefix)
        self._store = store if store is not None else default_store(self._settings, self._multiprocess_dir)
        self._buffer = Buffer(self._settings.buffer_capacity, multiprocess_lock())
        self._admission = Admission(
            self._metrics,
            self._buffer,
            max_flags=self._settings.max_flags,
            max_variants_per_flag=self._settings.max_variants_per_flag,
        )
        self._read = Reader(self._admission.series).read
        self._defects = DefectCounter(self._metrics.invalid_events)
        self._dropped = self._metrics.dropped_events
        self._spool = self._open_spool()
        self._flusher = Flusher(
            self._buffer,
            self._store,
            interval_s=self._settings.flush_interval_s,
            hash_key=self._settings.hash_key.encode(),
            store_errors=self._metrics.store_errors,
            dropped_events=self._dropped,
            spool=self._spool,
            spool_deliveries=self._metrics.spool_deliveries,
            spool_errors=self._metrics.spool_errors,
        )
        self._start_pending = True
        self._fleet_keys: frozenset[str] = frozenset()
        self._declared_splits: set[str] = set()
        self._log = ThrottledLog()

    def _open_spool(self) -> Spool | None:
        """The spool of undelivered batches, for a store that names its target (`RedisStore`)."""
        target = getattr(self._store, "spool_target", None)
        directory = spool_directory(self._settings.spool_dir, self._multiprocess_dir)
        if not isinstance(target, str) or directory is None:
            return None
        corrupt = self._metrics.spool_errors.labels(operation="read")

        def on_corrupt(path: str, why: str) -> None:
            corrupt.inc()
            self._log.warning("spool-corrupt", "flagmetrics: set aside a damaged spool file %s: %s", path, why)

        def on_dropped(digests: int) -> None:
            self._dropped.inc(digests)
            self._log.warning(
                "spool-full",
                "flagmetrics: spool over %d bytes; %d user ids of the oldest batches dropped (counts kept), "
                "counted in flagmetrics_dropped_events_total",
                self._settings.spool_max_bytes,
                digests,
            )

        return Spool(
            directory,
            target,
            self._buffer.writer,
            max_bytes=self._settings.spool_max_bytes,
            on_corrupt=on_corrupt,
            on_dropped=on_dropped,
        )

    # -- properties kept from litestar-flags' exporter ---------------------------------------------

    @property
    def registry(self) -> CollectorRegistry | None:
        """The registry holding the counter and histogram (None: prometheus_client's default)."""
        return self._registry

    @property
    def evaluations_counter(self) -> Counter:
        """The evaluations counter."""
        return self._metrics.evaluations

    @property
    def duration_histogram(self) -> Histogram:
        """The evaluation duration histogram."""
        return self._metrics.duration

    @property
    def unique_users_gauge(self) -> FleetGauge:
        """The unique-users gauge; computed from the store at scrape time, so it cannot be `set`."""
        return self._gauges[0]

    @property
    def error_rate_gauge(self) -> FleetGauge:
        """The error-rate gauge; computed from the store at scrape time, so it cannot be `set`."""
        return self._gauges[1]

    @property
    def store(self) -> Store:
        """The fleet store."""
        return self._store

    @property
    def settings(self) -> Settings:
        """The settings in effect."""
        return self._settings

    @property
    def prefix(self) -> str:
        """The metric name prefix, with its trailing `_` (empty when none)."""
        return self._prefix

    @property
    def metrics(self) -> Metrics:
        """The prometheus_client metric objects, self-metrics included."""
        return self._metrics

    @property
    def spool_path(self) -> str | None:
        """The spool directory of undelivered batches, or None when this exporter's store has no spool."""
        return self._spool.directory if self._spool is not None else None

    @property
    def multiprocess_path(self) -> str | None:
        """prometheus_client's multiprocess directory, or None in a single process."""
        return self._multiprocess_dir

    # -- the hot path ------------------------------------------------------------------------------

    async def record(self, event: Any) -> None:
        """Record one evaluation event; never raises and never waits on the network."""
        self.record_sync(event)

    def record_sync(self, event: Any) -> None:
        """Record one evaluation event from synchronous code (any thread); never raises."""
        try:
            series, duration_s, user, error_code, defects = self._read(event)
            if defects:
                self._defects.count(defects, type(event).__name__)
            if series is None:
                return
            # From here on the evaluation is counted, so nothing below may abort half-way.
            if not series.record(duration_s, error_code, user):
                self._dropped.inc()
            if self._start_pending:
                self._start()
        except Exception:
            self._defects.count((Defect.EVENT,), type(event).__name__)
            self._log.warning("internal", "flagmetrics: could not record a %s", type(event).__name__)

    def _start(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start_pending = False
        self._flusher.start()

    # -- the rest of litestar-flags' API -----------------------------------------------------------

    async def record_batch(self, events: Iterable[Any]) -> None:
        """Record several evaluation events."""
        for event in events:
            self.record_sync(event)

    async def start(self) -> None:
        """Start the background flusher on the running loop (the Litestar plugin does this)."""
        self._start()

    async def flush(self) -> None:
        """Deliver everything buffered to the store now; raise `StoreError` when it cannot.

        What could not be delivered stays buffered and is retried by the background flusher.
        """
        await self._flusher.flush()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the flusher, deliver what is buffered (waiting at most `timeout_s`) and close the store.

        Unlike litestar-flags' exporter this does not clear any figures: they belong to the fleet.
        """
        await self._flusher.stop(timeout_s)
        self._start_pending = True
        # Bounded: closing connections to a frozen server must not hold up a stopping worker.
        closing = asyncio.ensure_future(self._store.close())
        await asyncio.wait({closing}, timeout=STORE_CLOSE_S)

    async def reset_flag_stats(self, flag_key: str) -> None:
        """Forget a flag's unique users, error counts and pinned figures for the whole fleet.

        Counters and histograms are not reset (Prometheus counters only go up). Evaluations that
        other workers buffered before the reset may still arrive within one flush interval.
        """
        self._buffer.discard(flag_key)
        self._discard_spooled(flag_key)
        await self._store.reset(flag_key)

    async def reset_all_stats(self) -> None:
        """Forget every flag's unique users, error counts and pinned figures for the whole fleet."""
        self._buffer.discard()
        self._discard_spooled(None)
        await self._store.reset()

    def _discard_spooled(self, flag_key: str | None) -> None:
        if self._spool is None:
            return
        try:
            self._spool.discard(flag_key)
        except OSError as exc:
            self._metrics.spool_errors.labels(operation="write").inc()
            self._log.warning("spool-write", "flagmetrics: could not take a reset flag out of the spool: %s", exc)

    def update_from_metrics(self, flag_key: str, metrics: MetricsProvider | dict[str, Any]) -> None:
        """Pin a flag's unique users and error rate (given in percent, 0-100) for every worker.

        The pinned figures replace the computed ones in every worker's scrape from the next flush
        on, until `reset_flag_stats(flag_key)`.
        """
        if not valid_label(flag_key):
            raise ConfigurationError(
                f"`flag_key` must be a printable string of 1 to {MAX_KEY_LENGTH} characters, got {flag_key!r}"
            )
        if isinstance(metrics, dict):
            users = metrics.get("unique_users") or 0
            rate = metrics.get("error_rate") or 0.0
        else:
            users, rate = metrics.unique_users, metrics.error_rate
        try:
            users, rate = int(users), float(rate)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigurationError(f"`metrics` for {flag_key!r} holds non-numeric figures: {exc}") from exc
        if users < 0 or not 0.0 <= rate <= 100.0:
            raise ConfigurationError(
                f"`metrics` for {flag_key!r} needs unique_users >= 0 and error_rate in 0..100, got {users} and {rate}"
            )
        self._buffer.pin(flag_key, Pin(unique_users=users, error_rate=rate / 100.0))
        if self._start_pending:
            self._start()

    async def update_from_aggregator(
        self,
        aggregator: Any,
        flag_keys: Sequence[str],
        window_seconds: int = 3600,
    ) -> None:
        """Pin flags' figures from an aggregator's `get_flag_metrics` (awaited when async).

        Every flag is tried; failures are raised together afterwards as one `FlagMetricsError`.
        """
        getter = getattr(aggregator, "get_flag_metrics_async", None) or getattr(aggregator, "get_flag_metrics", None)
        if getter is None:
            raise ConfigurationError("`aggregator` has neither get_flag_metrics nor get_flag_metrics_async")
        failed: list[str] = []
        for flag_key in flag_keys:
            try:
                result = getter(flag_key, window_seconds)
                if inspect.isawaitable(result):
                    result = await result
                self.update_from_metrics(flag_key, result)
            except Exception as exc:
                failed.append(f"{flag_key!r}: {exc}")
        if failed:
            raise FlagMetricsError(
                f"could not update {len(failed)} of {len(flag_keys)} flags from the aggregator: " + "; ".join(failed)
            )

    def expect_split(self, flag_key: str, weights: Mapping[str, float], *, declared: bool = True) -> None:
        """Declare the weights a flag's variants are served with, for the split check of every scrape.

        `weights` maps each variant to its share (any scale: `{"control": 50, "treatment": 50}`); the
        gauge `feature_flag_split_p_value{flag_key,window}` then tests each window's users per
        variant against it. Kept in the fleet store (a reset leaves it), replaced by the next call.
        With `declared` False (weights read from flag definitions, as `instrument` does), the call
        is ignored for a flag whose split this process declared itself.
        """
        if not valid_label(flag_key):
            raise ConfigurationError(
                f"`flag_key` must be a printable string of 1 to {MAX_KEY_LENGTH} characters, got {flag_key!r}"
            )
        checked = split_weights(flag_key, weights)
        if declared:
            self._declared_splits.add(flag_key)
        elif flag_key in self._declared_splits:
            return
        self._buffer.expect(flag_key, checked)
        if self._start_pending:
            self._start()

    def get_tracked_flag_keys(self) -> list[str]:
        """Flag keys recorded by this process or present in the fleet state at its last scrape."""
        return sorted(self._admission.flag_keys() | self._fleet_keys)

    # -- scrape side -------------------------------------------------------------------------------

    async def fleet_snapshot(self) -> Snapshot | None:
        """Read the fleet state for a scrape, or None when the store cannot be read in time."""
        try:
            snapshot = await snapshot_within(self._store, self._settings.scrape_timeout_s)
        except StoreError as exc:
            self._metrics.store_errors.labels(operation="snapshot").inc()
            self._log.warning("snapshot", "flagmetrics: fleet gauges left out, store unreadable: %s", exc)
            return None
        except Exception:  # a store's own defect must cost the scrape its gauges, not its answer
            self._metrics.store_errors.labels(operation="snapshot").inc()
            logger.exception("flagmetrics: fleet gauges left out, the store failed")
            return None
        self._fleet_keys = frozenset(snapshot.flags)
        return snapshot
