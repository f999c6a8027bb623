"""The real thing: `magic8 serve` in a subprocess, answered over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.fixtures import SEED_CURL_BODY, batch_of_32, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]


@contextmanager
def serving(*args: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGIC8_")}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "inference.cli", "serve", "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(log.read().decode(errors="replace"))
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready in 60 s")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_serve_answers_the_seed_curl_example_and_is_deterministic_across_restarts() -> None:
    body = {"requests": batch_of_32()}
    with serving() as base:
        seed = httpx.post(f"{base}/predict/batch", json=SEED_CURL_BODY, timeout=10)
        first = httpx.post(f"{base}/predict/batch", json=body, timeout=10).json()
    assert seed.status_code == 200
    assert len(seed.json()["predictions"]) == 2
    with serving() as base:
        second = httpx.post(f"{base}/predict/batch", json=body, timeout=10).json()
    assert [p["win_probability"] for p in first["predictions"]] == [
        p["win_probability"] for p in second["predictions"]
    ]


def test_serve_with_two_workers_runs_gunicorn() -> None:
    with serving("--workers", "2") as base:
        answers = [
            httpx.post(f"{base}/predict/batch", json=SEED_CURL_BODY, timeout=10) for _ in range(8)
        ]
    assert all(answer.status_code == 200 for answer in answers)
