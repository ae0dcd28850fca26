"""Gunicorn hooks: a multiprocess directory set before prometheus_client loads, and dead-worker bookkeeping.

Import this module first in gunicorn.conf.py: on import it sets PROMETHEUS_MULTIPROC_DIR (to a fresh
temporary directory when unset), and it refuses to go on when prometheus_client was imported before,
because every worker would then keep values nobody else can see. Its first line:

    from flagmetrics.gunicorn import child_exit, on_exit, on_starting, post_fork, when_ready

With FLAGMETRICS_METRICS_PORT set, `when_ready` also serves the metrics on that port from the
master, which outlives every worker.
"""

from __future__ import annotations

import shutil
from typing import Any

from flagmetrics.environment import claim_directory

__all__ = ["child_exit", "multiprocess_dir", "on_exit", "on_starting", "post_fork", "when_ready"]

multiprocess_dir, _temporary = claim_directory()
"""The directory every worker of this master writes its metric files and fleet state to."""


def on_starting(server: Any) -> None:
    """Create the multiprocess directory, or empty it of a previous run's files."""
    from flagmetrics.multiprocess import prepare_directory

    prepare_directory(multiprocess_dir)


_metrics_server: Any = None


def when_ready(server: Any) -> None:
    """Serve the metrics on FLAGMETRICS_METRICS_PORT from the master, when that is set."""
    global _metrics_server
    from flagmetrics.auth import credentials_for
    from flagmetrics.config import Settings
    from flagmetrics.exposition import ScrapeSource
    from flagmetrics.server import start_metrics_server

    settings = Settings.from_env()
    if settings.metrics_port is None:
        return
    credentials = credentials_for(settings)
    source = ScrapeSource(settings, multiprocess_path=multiprocess_dir)
    _metrics_server, _ = start_metrics_server(
        source, settings.metrics_port, settings.metrics_addr, credentials=credentials
    )
    server.log.info("flagmetrics: metrics on http://%s:%s/", settings.metrics_addr, settings.metrics_port)


def post_fork(server: Any, worker: Any) -> None:
    """Close the master's metrics socket in the worker, which does not serve it."""
    if _metrics_server is not None:
        _metrics_server.socket.close()


def child_exit(server: Any, worker: Any) -> None:
    """Do prometheus_client's bookkeeping for a worker that exited and fold its files into the archive."""
    from prometheus_client.multiprocess import mark_process_dead

    from flagmetrics.multiprocess import compact

    mark_process_dead(worker.pid, multiprocess_dir)
    try:
        compact(multiprocess_dir, worker.pid)
    except OSError as exc:  # its files stay and are still counted; only scrapes get slower
        server.log.warning("flagmetrics: could not compact worker %s's metric files: %s", worker.pid, exc)


def on_exit(server: Any) -> None:
    """Remove the directory when it was a temporary one made for this master."""
    if _temporary:
        shutil.rmtree(multiprocess_dir, ignore_errors=True)
