"""Limits against a real server: body size, batch size, concurrency shedding and the deadline."""

from __future__ import annotations

import socket
import time

import httpx
import msgspec
import pytest

from tests.fixtures import SEED_CURL_BODY, batch_of_32
from tests.inference.servers import (
    HOST,
    header_of,
    raw_request,
    read_response,
    serving,
    status_of,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]

TEN_MB = 10 * 1024 * 1024


def _post_head(port: int, extra: str) -> bytes:
    return (
        f"POST /predict/batch HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def _stall(port: int) -> socket.socket:
    """Open a request that promises a body and never sends it: it stays in flight."""
    sock = socket.create_connection((HOST, port))
    sock.sendall(_post_head(port, "Content-Length: 100\r\n"))
    return sock


def test_oversized_chunked_and_lying_bodies_get_413_without_memory_growth() -> None:
    with serving() as server:
        port = server.port
        baseline = httpx.post(f"{server.base}/predict/batch", json=SEED_CURL_BODY, timeout=10)
        assert baseline.status_code == 200
        rss_before = server.rss_kib()

        declared = raw_request(
            port, _post_head(port, f"Content-Length: {TEN_MB}\r\n"), b"x" * TEN_MB
        )
        assert status_of(declared) == 413
        assert b"exceeds" in declared

        chunk = b"x" * 65536
        chunked_body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (TEN_MB // 65536)
        chunked = raw_request(
            port, _post_head(port, "Transfer-Encoding: chunked\r\n"), chunked_body + b"0\r\n\r\n"
        )
        assert status_of(chunked) == 413

        # Declares 10 MB, sends 20 bytes: refused on the header, nothing waits for the rest.
        started = time.monotonic()
        lying = raw_request(port, _post_head(port, f"Content-Length: {TEN_MB}\r\n"), b"{" * 20)
        assert status_of(lying) == 413
        assert time.monotonic() - started < 2

        growth_mib = (server.rss_kib() - rss_before) / 1024
        assert growth_mib < 4, f"worker RSS grew by {growth_mib:.1f} MiB"
        after = httpx.post(f"{server.base}/predict/batch", json=SEED_CURL_BODY, timeout=10)
        assert after.status_code == 200


def test_overload_is_shed_with_retry_after_and_probes_still_answer() -> None:
    env = {"MAGIC8_PREDICTOR_PERFORMANCE__MAX_IN_FLIGHT": "1"}
    with serving(env=env) as server:
        stalled = _stall(server.port)
        try:
            time.sleep(0.3)
            shed = httpx.post(
                f"{server.base}/predict/batch", json={"requests": batch_of_32()}, timeout=10
            )
            assert shed.status_code == 503
            assert shed.headers["Retry-After"] == "1"
            assert shed.json()["retry_after"] == 1
            assert "overloaded" in shed.json()["error"]
            assert shed.headers["X-Request-ID"]
            for probe in ("/v2/health/live", "/v2/health/ready", "/health", "/metrics"):
                assert httpx.get(f"{server.base}{probe}", timeout=10).status_code == 200
        finally:
            stalled.close()
        time.sleep(0.2)
        again = httpx.post(f"{server.base}/predict/batch", json=SEED_CURL_BODY, timeout=10)
        assert again.status_code == 200
        metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
        assert 'magic8_requests_shed_total{reason="concurrency"} 1.0' in metrics


def test_a_request_past_its_deadline_gets_503() -> None:
    env = {"MAGIC8_PREDICTOR_PERFORMANCE__BATCH_PREDICTIONS__TIMEOUT_MS": "300"}
    with serving(env=env) as server:
        sock = _stall(server.port)
        with sock:
            sock.settimeout(5)
            started = time.monotonic()
            response = read_response(sock)
            elapsed = time.monotonic() - started
        assert status_of(response) == 503
        assert header_of(response, b"retry-after") == b"1"
        assert b"deadline" in response
        assert 0.2 < elapsed < 2
        ok = httpx.post(f"{server.base}/predict/batch", json=SEED_CURL_BODY, timeout=10)
        assert ok.status_code == 200


def test_batch_over_max_batch_size_is_413_naming_the_limit() -> None:
    env = {"MAGIC8_PREDICTOR_PERFORMANCE__BATCH_PREDICTIONS__MAX_BATCH_SIZE": "10"}
    with serving(env=env) as server:
        body = msgspec.json.encode({"requests": batch_of_32()})
        response = httpx.post(
            f"{server.base}/predict/batch",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
    assert response.status_code == 413
    assert response.json()["max_batch_size"] == 10
    assert response.json()["received"] == 32
