"""Internal: the multiprocess environment: where PROMETHEUS_MULTIPROC_DIR points, and whether prometheus_client saw it.

This module does not import prometheus_client, so the gunicorn hooks can set the variable before
anything loads it, and every other module checks the same thing with the same message.
"""

from __future__ import annotations

import os
import tempfile
from typing import Final

from flagmetrics.compat import values_in_multiprocess_mode
from flagmetrics.exceptions import ConfigurationError

__all__ = ["MULTIPROC_ENV", "SPOOL_ENV", "claim_directory", "lasting_spool_dir", "multiprocess_dir"]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's variable naming the directory of every process's metric files."""


SPOOL_ENV: Final = "FLAGMETRICS_SPOOL_DIR"
"""flagmetrics' variable naming the spool directory."""


def lasting_spool_dir() -> str:
    """The spool directory used without a multiprocess directory of your own: kept across restarts and reboots."""
    # /var/tmp is shared: flagmetrics.spool checks the directories are this user's alone before use.
    return os.path.join("/var/tmp", f"flagmetrics-{os.getuid()}", "spool")  # noqa: S108


def _require_import_order() -> None:
    """Raise when prometheus_client was loaded in single-process mode: its values would stay private."""
    if values_in_multiprocess_mode() is False:
        raise ConfigurationError(
            f"prometheus_client was imported before `{MULTIPROC_ENV}` was set, so every process keeps its own "
            "values that no scrape of another process can see; import flagmetrics.gunicorn before anything that "
            f"imports prometheus_client (the shipped gunicorn.conf.py does), or export {MULTIPROC_ENV} before "
            "starting the app"
        )


def multiprocess_dir() -> str | None:
    """The multiprocess directory when `PROMETHEUS_MULTIPROC_DIR` is set, else None (a single process).

    Raises `ConfigurationError` when the variable is set but prometheus_client was imported before it
    was, or when it names no directory.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    _require_import_order()
    if not os.path.isdir(path):
        raise ConfigurationError(
            f"`{MULTIPROC_ENV}` points at {path!r}, which is not a directory; create it before "
            "starting the workers (flagmetrics.gunicorn.on_starting does)"
        )
    return path


def claim_directory() -> tuple[str, bool]:
    """Return the multiprocess directory, setting the variable to a new temporary one when unset.

    With a temporary one, `FLAGMETRICS_SPOOL_DIR` defaults to `lasting_spool_dir()`, not to the
    `spool` directory inside it.

    The second value says whether the directory is such a temporary one. Raises `ConfigurationError`
    when prometheus_client was already imported without the variable.
    """
    _require_import_order()
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        return path, False
    path = tempfile.mkdtemp(prefix="flagmetrics-multiproc-")
    os.environ[MULTIPROC_ENV] = path
    # The spool must outlive this temporary directory, so that a restart delivers what it holds.
    os.environ.setdefault(SPOOL_ENV, lasting_spool_dir())
    return path, True
