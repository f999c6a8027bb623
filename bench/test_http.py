"""HTTP end to end on 127.0.0.1: one worker at c1, two workers at c8/c64, the peer at c1."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import loadtest
from bench.workload import body_ring, ring_size
from inference.config import Settings

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def bodies(settings: Settings) -> list[bytes]:
    """A ring of batch bodies that misses the prediction cache."""
    return body_ring(ring_size(settings.performance.cache.max_size))


@pytest.fixture(scope="module")
def one_worker(settings: Settings) -> Iterator[loadtest.Server]:
    """``magic8 serve`` with one uvicorn worker."""
    port = loadtest.free_port()
    command = loadtest.our_server_command(port, Path(settings.prediction.models_dir))
    with loadtest.serve("magic8-serve", command, port, "/v2/health/ready") as server:
        yield server


def test_c1_one_worker(benchmark: Any, one_worker: loadtest.Server, bodies: list[bytes]) -> None:
    """Concurrency 1 over one keep-alive connection (the client's time is included)."""
    connection = http.client.HTTPConnection(loadtest.LOOPBACK, one_worker.port, timeout=10)
    state = {"next": 0}

    def post() -> None:
        state["next"] = (state["next"] + 1) % len(bodies)
        connection.request(
            "POST", loadtest.BATCH_PATH, bodies[state["next"]], {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 200

    benchmark.group = "HTTP: 32-order batch"
    benchmark.extra_info["ready_seconds"] = one_worker.ready_seconds
    benchmark(post)
    connection.close()


@pytest.mark.parametrize("connections", [8, 64])
def test_two_workers(
    benchmark: Any, settings: Settings, bodies: list[bytes], connections: int
) -> None:
    """``magic8 serve --workers 2`` under load; latency and throughput in extra_info."""
    port = loadtest.free_port()
    command = loadtest.our_server_command(port, Path(settings.prediction.models_dir), workers=2)
    with loadtest.serve("magic8-serve-workers2", command, port, "/v2/health/ready"):
        loadtest.load(port, bodies, connections, 2.0)
        result = benchmark.pedantic(
            loadtest.load, args=(port, bodies, connections, 5.0), rounds=1, iterations=1
        )
    benchmark.group = "HTTP: 32-order batch under load"
    benchmark.extra_info.update(result.as_dict())
    assert result.errors == 0


def test_previous_design_c1(benchmark: Any, bodies: list[bytes], routed: list[Any]) -> None:
    """The previous design (FastAPI + pydantic + pandas + per-order xgboost) at concurrency 1."""
    port = loadtest.free_port()
    command = loadtest.peer_server_command(port, routed[0][0].path)
    with loadtest.serve("previous-design", command, port, "/health"):
        result = benchmark.pedantic(
            loadtest.load, args=(port, bodies, 1, 8.0), rounds=1, iterations=1
        )
    benchmark.group = "HTTP: 32-order batch under load"
    benchmark.extra_info.update(result.as_dict())
    assert result.errors == 0
