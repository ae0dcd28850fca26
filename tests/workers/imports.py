"""What importing flagmetrics loads, checked in a fresh interpreter.

python -m tests.workers.imports COMMAND
"""

from __future__ import annotations

import sys


def package() -> None:
    """Import the package and the gunicorn hooks; print whether prometheus_client got loaded."""
    import flagmetrics
    import flagmetrics.gunicorn

    assert flagmetrics.__all__
    print("prometheus_client" in sys.modules)


def local_store_path() -> None:
    """Build an exporter on the default local store; print the store's type and whether redis got loaded."""
    from prometheus_client import CollectorRegistry

    import flagmetrics

    exporter = flagmetrics.PrometheusExporter(registry=CollectorRegistry())
    print(type(exporter.store).__name__, "redis" in sys.modules)


COMMANDS = {"package": package, "local-store-path": local_store_path}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]]()
