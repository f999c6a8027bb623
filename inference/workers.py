"""Serving processes: the gunicorn worker, the draining uvicorn server and the master's hooks.

On SIGTERM a worker first turns readiness to 503 and closes every connection after its next
response, while still serving, for ``server.drain_s``; then it stops accepting, lets in-flight
requests finish (at most ``server.graceful_timeout_s``) and exits. A worker that reached
gunicorn's ``max_requests`` drains the same way without failing readiness.

This module must not import prometheus-client: the master sets ``PROMETHEUS_MULTIPROC_DIR``
before anything imports it, and the workers inherit the choice across the fork.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, Final

import uvicorn
from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from .config import load_settings
from .protocol import StampingProtocol

#: The variable prometheus-client reads to turn multiprocess mode on.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: After the drain, how long to keep serving connections already accepted before closing
#: idle ones, so a request racing the listener's close is answered, not reset.
SETTLE_S: Final = 0.25

_metrics_dir: dict[str, str | None] = {"path": None, "created": None}


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the graceful shutdown.

    Args:
        config: The uvicorn configuration.
        drain_s: Seconds to drain before stopping (0: stop at once).
    """

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._drain_until: float | None = None
        self._settle_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM starts the drain; a second signal, or SIGINT/SIGQUIT, stops as uvicorn does."""
        from .middleware import begin_draining

        begin_draining(stopping=True)
        if sig == signal.SIGTERM and self._drain_until is None and self.drain_s > 0:
            self._drain_until = time.monotonic() + self.drain_s
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Keep uvicorn's housekeeping; end the main loop when the drain has run its course."""
        finished = await super().on_tick(counter)
        if self.should_exit:
            return True
        now = time.monotonic()
        if self._drain_until is None:
            if not finished:
                return False
            # gunicorn's max_requests was reached: recycle without failing readiness.
            from .middleware import begin_draining

            begin_draining(stopping=False)
            self._drain_until = now + self.drain_s
        if now < self._drain_until:
            return False
        if self._settle_until is None:
            for server in self.servers:
                server.close()
            self._settle_until = now + SETTLE_S
        return now >= self._settle_until


class Worker(UvicornWorker):  # type: ignore[misc]
    """gunicorn's uvicorn worker with this server's limits and drain."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        server = load_settings().server
        self.drain_s = server.drain_s
        # uvicorn's own limit answers a bare 503 without Retry-After, so it sits far above the
        # app's max_in_flight, as a backstop against connection floods only.
        self.CONFIG_KWARGS = {
            **UvicornWorker.CONFIG_KWARGS,
            "limit_concurrency": server.limit_concurrency,
            "timeout_graceful_shutdown": int(server.graceful_timeout_s),
            "http": StampingProtocol,
        }
        super().__init__(*args, **kwargs)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(self.config, self.drain_s)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def prepare_metrics_dir() -> str:
    """Give this server start a fresh metrics directory and export it to the workers.

    Called by the master before it forks. An inherited ``PROMETHEUS_MULTIPROC_DIR`` is emptied
    (a previous run's files would be summed into this one); otherwise a temporary directory
    is created and removed at exit. A configuration reload keeps the directory.
    """
    if _metrics_dir["path"] is not None:
        return _metrics_dir["path"]
    inherited = os.environ.get(MULTIPROC_ENV)
    if inherited:
        Path(inherited).mkdir(parents=True, exist_ok=True)
        for stale in Path(inherited).glob("*.db"):
            stale.unlink()
        path = inherited
    else:
        path = tempfile.mkdtemp(prefix="magic8-metrics-")
        _metrics_dir["created"] = path
    os.environ[MULTIPROC_ENV] = path
    _metrics_dir["path"] = path
    return path


def child_exit(server: Arbiter, worker: Any) -> None:
    """gunicorn hook: drop a dead worker's live gauges (its counters still count)."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Arbiter) -> None:
    """gunicorn hook: remove the metrics directory this master created."""
    created = _metrics_dir["created"]
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
