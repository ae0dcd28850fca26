"""Gunicorn settings: uvicorn workers with flagmetrics' multiprocess hooks.

    gunicorn -c gunicorn.conf.py examples.app:app          # Litestar with litestar-flags
    gunicorn -c gunicorn.conf.py examples.fastapi_app:app  # FastAPI with OpenFeature

Environment: BIND (default 127.0.0.1:8000), WEB_CONCURRENCY (workers, default 4), MAX_REQUESTS
(recycle a worker after that many requests, default 0: never), PROMETHEUS_MULTIPROC_DIR (default: a
fresh temporary directory removed at exit), FLAGMETRICS_METRICS_PORT (also serve the metrics on this
port from the master) and the other FLAGMETRICS_* settings of the README.
"""

import os

# First, before anything imports prometheus_client: sets PROMETHEUS_MULTIPROC_DIR.
from flagmetrics.gunicorn import child_exit, on_exit, on_starting, post_fork, when_ready  # noqa: F401

bind = [os.environ.get("BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "uvicorn_worker.UvicornWorker"
max_requests = int(os.environ.get("MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
# Seconds a worker has to finish in-flight requests and flush its buffer when stopped or recycled.
graceful_timeout = 10
