"""Production serving: gunicorn master with uvicorn workers (``gunicorn -c gunicorn.conf.py``).

The master only reads configuration: models, onnxruntime and Numba load in each worker at its
lifespan start-up, never before the fork (no ``preload_app``).
"""

import os

from inference.cli import WORKER_THREAD_ENV
from inference.config import load_settings

# One thread per native pool per worker, so N workers on N cores do not oversubscribe.
for _name, _value in WORKER_THREAD_ENV.items():
    os.environ.setdefault(_name, _value)

_settings = load_settings()

wsgi_app = "inference.app:create_app()"
worker_class = "uvicorn_worker.UvicornWorker"
bind = [f"{_settings.server.host}:{_settings.server.port}"]
workers = _settings.server.workers
preload_app = False
graceful_timeout = 30
timeout = 60
keepalive = 5
max_requests = 100_000
max_requests_jitter = 10_000
accesslog = None
