"""The request gate's shedding rules, on a real uvicorn server with the stamping protocol.

The app behind the gate here is a stand-in whose ``/score`` blocks its event loop for a while
(as scoring a batch does) and whose ``/hold`` waits until released (as a request waiting on a
market-data provider does), so each rule can be driven on purpose.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.asgi
import pytest
import uvicorn
from prometheus_client import REGISTRY

from inference.metrics import Recorder
from inference.middleware import DrainState, GatedApp, Limits
from inference.protocol import RECEIVED, UNCOUNT, StampingProtocol
from tests.fixtures import free_port
from tests.inference.servers import HOST, header_of, read_response, status_of

#: How long ``/score`` holds the event loop: several times the queueing limit below.
SCORE_S = 0.03
LIMITS = Limits(max_in_flight=1, max_queue_s=0.005, deadline_s=5.0, retry_after_s=1, slow_s=1.0)


class Score:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        time.sleep(SCORE_S)  # CPU-bound work: nothing else runs on the loop meanwhile
        resp.media = {"scored": True}


class Hold:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self.release.wait()
        resp.media = {"held": True}


def gated_app(limits: Limits = LIMITS) -> tuple[GatedApp, Hold]:
    app = GatedApp(
        limits=limits,
        recorder=Recorder(known_symbols=(), known_strategies=()),
        drain=DrainState(),
    )
    hold = Hold()
    app.add_route("/score", Score())
    app.add_route("/hold", hold)
    app.add_route("/health", Score())
    return app, hold


@dataclass
class Running:
    server: uvicorn.Server
    port: int
    app: GatedApp
    hold: Hold
    loop: asyncio.AbstractEventLoop


@pytest.fixture
def running() -> Iterator[Running]:
    app, hold = gated_app()
    port = free_port()
    config = uvicorn.Config(
        app, host=HOST, port=port, http=StampingProtocol, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        try:
            loop.run_until_complete(server.serve())
        finally:
            loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Running(server, port, app, hold, loops[0])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _send(port: int, path: str) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    return sock


def _settled_count(server: uvicorn.Server) -> int:
    """uvicorn's request count once the server thread has finished the last response."""
    # uvicorn counts a response just after writing it: the client can read it first.
    count, deadline = -1, time.monotonic() + 2
    while time.monotonic() < deadline:
        previous, count = count, server.server_state.total_requests
        if count == previous:
            break
        time.sleep(0.05)
    return count


def _answers(socks: list[socket.socket]) -> list[bytes]:
    answers = []
    for sock in socks:
        with sock:
            answers.append(read_response(sock))
    return answers


def _shed(reason: str) -> float:
    value = REGISTRY.get_sample_value("magic8_requests_shed_total", {"reason": reason})
    return value or 0.0


def test_requests_read_behind_a_batch_are_refused_instead_of_answered_late(
    running: Running,
) -> None:
    shed_before = _shed("queue")
    socks = [socket.create_connection((HOST, running.port), timeout=10) for _ in range(6)]
    time.sleep(0.2)  # every connection accepted
    request = f"GET /score HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    socks[0].sendall(request)
    time.sleep(SCORE_S / 3)  # the first batch now holds the loop: the next five queue behind it
    for sock in socks[1:]:
        sock.sendall(request)
    answers = _answers(socks)

    statuses = [status_of(answer) for answer in answers]
    assert statuses.count(200) >= 1
    refused = [answer for answer in answers if status_of(answer) == 503]
    # Five batches read together behind a 30 ms one: the first of them is admitted, the
    # others would wait a whole batch or more, far over the 5 ms limit.
    assert len(refused) >= 4
    for answer in refused:
        assert header_of(answer, b"retry-after") == b"1"
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert "waited more than 5 ms" in body["error"]
        assert body["retry_after"] == 1
    running.app.recorder.flush()
    assert _shed("queue") - shed_before == len(refused)
    # Refusals did no work: uvicorn's count (what max_requests recycles on) leaves them out.
    assert _settled_count(running.server) == statuses.count(200)


def test_requests_one_at_a_time_are_never_refused_however_slow(running: Running) -> None:
    for _ in range(5):
        (answer,) = _answers([_send(running.port, "/score")])
        assert status_of(answer) == 200


def test_concurrency_limit_refuses_while_a_request_waits_and_admits_after(
    running: Running,
) -> None:
    held = _send(running.port, "/hold")
    deadline = time.monotonic() + 5
    while running.app.in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (refused,) = _answers([_send(running.port, "/score")])
    assert status_of(refused) == 503
    assert b"more than 1 requests in flight" in refused
    # Probes are never shed.
    (probe,) = _answers([_send(running.port, "/health")])
    assert status_of(probe) == 200

    running.loop.call_soon_threadsafe(running.hold.release.set)
    (released,) = _answers([held])
    assert status_of(released) == 200
    (admitted,) = _answers([_send(running.port, "/score")])
    assert status_of(admitted) == 200
    assert _settled_count(running.server) == 3


# -- the rules in process, with the read time set by hand -------------------------------------


async def _call(app: GatedApp, path: str, received: float | None) -> tuple[int, dict[str, Any]]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    uncounted: list[bool] = []
    if received is not None:
        scope["extensions"] = {RECEIVED: received, UNCOUNT: lambda: uncounted.append(True)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    return sent[0]["status"], {"body": body, "uncounted": bool(uncounted)}


async def test_a_wait_with_nothing_served_meanwhile_is_a_pause_not_a_queue() -> None:
    app, _ = gated_app()
    # Read 50 ms ago, but no request was served since: the whole process was paused (a
    # collection, a descheduled vCPU). Refusing would not make anything faster.
    status, answer = await _call(app, "/score", time.perf_counter() - 0.05)
    assert status == 200
    assert not answer["uncounted"]
    # Now a request was served after this one was read: it waited in the queue.
    received = time.perf_counter() - 0.001
    await _call(app, "/score", None)
    await asyncio.sleep(0.01)
    status, answer = await _call(app, "/score", received)
    assert status == 503
    assert "waited" in answer["body"]["error"]
    assert answer["uncounted"]


async def test_the_deadline_runs_from_when_the_request_was_read() -> None:
    limits = Limits(max_in_flight=4, max_queue_s=10.0, deadline_s=0.02, retry_after_s=1, slow_s=1)
    app, _ = gated_app(limits)
    status, answer = await _call(app, "/hold", time.perf_counter() - 0.015)
    assert status == 503
    assert "deadline of 20 ms exceeded" in answer["body"]["error"]
    # A deadline miss did work before it was cut: it still counts towards recycling.
    assert not answer["uncounted"]


async def test_without_the_stamp_the_gate_times_from_its_own_entry() -> None:
    app, _ = gated_app()
    status, _answer = await _call(app, "/score", None)
    assert status == 200
