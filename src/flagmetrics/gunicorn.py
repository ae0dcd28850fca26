"""Gunicorn hooks: a multiprocess directory set before prometheus_client loads, and dead-worker bookkeeping.

Import this module first in gunicorn.conf.py: on import it sets PROMETHEUS_MULTIPROC_DIR (to a fresh
temporary directory when unset), and it refuses to go on when prometheus_client was imported before,
because every worker would then keep values nobody else can see::

    from flagmetrics.gunicorn import child_exit, on_exit, on_starting
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from flagmetrics.exceptions import ConfigurationError

__all__ = ["child_exit", "multiprocess_dir", "on_exit", "on_starting"]

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _claim_directory() -> tuple[str, bool]:
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigurationError(
            f"prometheus_client was imported before `{_ENV}` was set, so gunicorn's workers would "
            "each keep their own values; import flagmetrics.gunicorn before anything that imports "
            f"prometheus_client, or export {_ENV} before starting gunicorn"
        )
    path = os.environ.get(_ENV)
    if path:
        return path, False
    path = tempfile.mkdtemp(prefix="flagmetrics-multiproc-")
    os.environ[_ENV] = path
    return path, True


multiprocess_dir, _temporary = _claim_directory()
"""The directory every worker of this master writes its metric files and fleet state to."""


def on_starting(server: Any) -> None:
    """Create the multiprocess directory, or empty it of a previous run's files."""
    from flagmetrics.multiprocess import prepare_directory

    prepare_directory(multiprocess_dir)


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
