"""Checks of the gunicorn hooks that need a fresh interpreter, one per command.

    python -m tests.workers.gunicorn_checks COMMAND [ARGS...]

Nothing is imported before the command runs, so each one decides what loads first.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable


def fresh_directory() -> None:
    """Importing the hooks sets a new directory before prometheus_client loads; on_exit removes it."""
    import flagmetrics.gunicorn as hooks

    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert path == hooks.multiprocess_dir
    assert os.path.isdir(path)
    assert "prometheus_client" not in sys.modules
    hooks.on_exit(None)
    print(os.path.exists(path))


def given_directory() -> None:
    """Print the directory the hooks use after on_exit."""
    import flagmetrics.gunicorn as hooks

    hooks.on_exit(None)
    print(hooks.multiprocess_dir)


def prometheus_client_first() -> None:
    """Import prometheus_client, then the hooks (which must refuse)."""
    import prometheus_client  # noqa: F401

    import flagmetrics.gunicorn  # noqa: F401


def exporter_too_early(directory: str) -> None:
    """Import prometheus_client, then set the directory and build an exporter (which must refuse)."""
    import prometheus_client  # noqa: F401

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from flagmetrics import PrometheusExporter

    PrometheusExporter()


def on_starting() -> None:
    """Run the on_starting hook."""
    import flagmetrics.gunicorn as hooks

    hooks.on_starting(None)


def record(count: str) -> None:
    """Record COUNT evaluations as one worker would, and print this process's pid."""
    from prometheus_client import CollectorRegistry

    from flagmetrics import LocalStore, PrometheusExporter
    from flagmetrics.events import Evaluation

    exporter = PrometheusExporter(registry=CollectorRegistry(), store=LocalStore(None))
    for i in range(int(count)):
        exporter.record_sync(Evaluation("f", "SPLIT", f"v{i % 3}", f"u{i}", 0.3 * (i % 7)))
    print(os.getpid())


def scrape() -> None:
    """Print every worker's counters and histograms of the directory, as a scrape renders them."""
    from flagmetrics.exposition import encode

    body, _ = encode(None, multiprocess_path=os.environ["PROMETHEUS_MULTIPROC_DIR"], fleet_gauges=False)
    sys.stdout.write(body.decode())


def child_exit(*pids: str) -> None:
    """Run the child_exit hook for each dead worker's pid."""
    import flagmetrics.gunicorn as hooks

    for pid in pids:
        hooks.child_exit(None, types.SimpleNamespace(pid=int(pid)))


def failed_compaction() -> None:
    """Run child_exit on a directory that is gone; the hook must only log (printed here)."""
    import flagmetrics.gunicorn as hooks

    hooks.multiprocess_dir += "/missing"
    log = types.SimpleNamespace(warning=lambda message, *args: print(message % args))
    hooks.child_exit(types.SimpleNamespace(log=log), types.SimpleNamespace(pid=2**22 + 7))


COMMANDS: dict[str, Callable[..., None]] = {
    "fresh-directory": fresh_directory,
    "given-directory": given_directory,
    "prometheus-client-first": prometheus_client_first,
    "exporter-too-early": exporter_too_early,
    "on-starting": on_starting,
    "record": record,
    "scrape": scrape,
    "child-exit": child_exit,
    "failed-compaction": failed_compaction,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
