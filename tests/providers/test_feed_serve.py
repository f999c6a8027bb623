"""End to end: ``magic8 feed`` and ``magic8 serve`` as processes, a real redis-server between."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import RedisServer
from tests.fixtures import batch_of_32, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

HEARTBEAT_TIMEOUT_S = 2.0
FEED_INTERVAL_S = 0.25


class Process:
    """A child process whose output goes to a file (a pipe could fill up and block it)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=self._log)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace")


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without MAGIC8_* variables, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAGIC8_")}
    return clean | variables


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.1
) -> float:
    """Poll ``check``; return the seconds it took or fail naming ``what``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - started


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def feed_command(redis_server: RedisServer) -> list[str]:
    return [
        sys.executable,
        "-m",
        "inference.cli",
        "feed",
        "--source",
        "synthetic",
        "--redis",
        redis_server.url,
        "--interval",
        str(FEED_INTERVAL_S),
    ]


@pytest.fixture
def server(redis_server: RedisServer, logs: Path) -> Iterator[tuple[Process, str]]:
    port = free_port()
    serve = Process(
        "serve",
        [sys.executable, "-m", "inference.cli", "serve", "--port", str(port)],
        environment(
            MAGIC8_PREDICTOR_DATA_SOURCE="redis",
            MAGIC8_PREDICTOR_REDIS_HOST="127.0.0.1",
            MAGIC8_PREDICTOR_REDIS_PORT=str(redis_server.port),
            MAGIC8_PREDICTOR_DATA_SOURCE__REDIS__HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
            MAGIC8_PREDICTOR_DATA_SOURCE__REDIS__RECONNECT_MAX_BACKOFF_S="0.5",
            # Off because of the prediction-cache defect test_fallback.py pins down.
            MAGIC8_PREDICTOR_PERFORMANCE__CACHE__PREDICTION_TTL="0",
        ),
        logs,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base), 90.0, "magic8 serve ready")
        yield serve, base
    finally:
        serve.stop()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v2/health/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def batch(base: str) -> list[dict[str, Any]]:
    body = {"requests": batch_of_32(None)}
    response = httpx.post(f"{base}/predict/batch", json=body, timeout=5.0)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    assert len(predictions) == 32
    return predictions


def redis_health(base: str) -> dict[str, Any]:
    providers = httpx.get(f"{base}/health", timeout=5.0).json()["providers"]
    entry: dict[str, Any] = next(p for p in providers if p["name"] == "redis")
    return entry


def test_feed_serve_redis_restart_and_stale(
    redis_server: RedisServer,
    server: tuple[Process, str],
    feed_command: list[str],
    logs: Path,
) -> None:
    serve, base = server
    feed = Process("feed", feed_command, environment(), logs)
    try:
        # 1. The feed publishes; the server answers from redis.
        def served_by_redis() -> bool:
            answers = batch(base)
            return all(a["data_source"] == "redis" and not a["stale"] for a in answers)

        wait_until(served_by_redis, 30.0, "answers from redis")
        assert all("error" not in answer for answer in batch(base))
        assert redis_health(base)["feed"]["alive"]

        # 2. redis-server restarts, losing every key: feed and server recover by themselves.
        loads = redis_health(base)["loads"]
        redis_server.restart()
        wait_until(lambda: redis_health(base)["loads"] > loads, 15.0, "mirror reloaded")
        wait_until(served_by_redis, 15.0, "fresh answers from redis after the restart")
        health = redis_health(base)
        assert health["state"] == "up"
        assert health["feed"]["alive"]
        assert serve.process.poll() is None  # the same server process throughout
    finally:
        assert feed.stop() == 0, feed.output()

    # 3. The feed stopped: within the heartbeat timeout every answer says stale.
    stopped = time.monotonic()
    wait_until(
        lambda: all(a["stale"] and a["data_source"] == "redis" for a in batch(base)),
        HEARTBEAT_TIMEOUT_S + 3.0,
        "stale answers after the feed stopped",
        step_s=0.05,
    )
    noticed = time.monotonic() - stopped
    assert noticed <= HEARTBEAT_TIMEOUT_S + 0.5, noticed
    assert not redis_health(base)["feed"]["alive"]
