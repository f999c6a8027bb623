"""Production serving: gunicorn master with uvicorn workers (``gunicorn -c gunicorn.conf.py``).

The master only reads configuration: models, onnxruntime and Numba load in each worker at its
lifespan start-up, never before the fork (no ``preload_app``). The master also gives each server
start a fresh prometheus-client multiprocess directory before anything imports the client, so
``GET /metrics`` on any worker sums every worker's counts.
"""

import os

from inference.cli import WORKER_THREAD_ENV
from inference.config import load_settings
from inference.workers import child_exit, on_exit, prepare_metrics_dir

# One thread per native pool per worker, so N workers on N cores do not oversubscribe.
for _name, _value in WORKER_THREAD_ENV.items():
    os.environ.setdefault(_name, _value)

prepare_metrics_dir()
_settings = load_settings()
_server = _settings.server

wsgi_app = "inference.app:create_app()"
worker_class = "inference.workers.Worker"
bind = [f"{_server.host}:{_server.port}"]
workers = _server.workers
preload_app = False
# The worker drains, then waits for in-flight requests; the master waits a little longer
# before it kills a worker.
graceful_timeout = int(_server.drain_s + _server.graceful_timeout_s) + 5
timeout = 60
keepalive = 5
max_requests = _server.max_requests
max_requests_jitter = _server.max_requests_jitter
accesslog = None

__all__ = ["child_exit", "on_exit"]
