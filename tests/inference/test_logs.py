"""Request ids, request log lines and the prediction log (bounded, never blocking)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inference.predictions_log import LoggedBatch, PredictionLog
from tests.fixtures import SEED_CURL_BODY, batch_of_32, demo_settings, running_app


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_request_id_is_echoed_or_generated_and_hostile_ids_are_replaced() -> None:
    async with running_app() as client:
        given = await client.simulate_get("/v2/health/live", headers={"X-Request-ID": "bot-42.a"})
        fresh = await client.simulate_get("/v2/health/live")
        hostile = await client.simulate_get("/v2/health/live", headers={"X-Request-ID": "x" * 500})
        injected = await client.simulate_get(
            "/v2/health/live", headers={"X-Request-ID": 'a"}\n{"level":"ERROR'}
        )
    assert given.headers["X-Request-ID"] == "bot-42.a"
    assert len(fresh.headers["X-Request-ID"]) == 16
    assert len(hostile.headers["X-Request-ID"]) == 16
    assert len(injected.headers["X-Request-ID"]) == 16


async def test_slow_requests_and_errors_are_logged_with_their_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = demo_settings(observability={"slow_request_ms": 0.001})
    async with running_app(settings) as client:
        capsys.readouterr()
        await client.simulate_post(
            "/predict/batch", json=SEED_CURL_BODY, headers={"X-Request-ID": "slow-1"}
        )
        await client.simulate_post("/predict", body=b"{", headers={"X-Request-ID": "bad-1"})
        await client.simulate_get("/v2/health/live", headers={"X-Request-ID": "fast-1"})
    lines = {line.get("request_id"): line for line in _lines(capsys.readouterr().err)}
    assert lines["slow-1"]["level"] == "WARNING"
    assert lines["slow-1"]["endpoint"] == "/predict/batch"
    assert lines["slow-1"]["status"] == 200
    assert lines["bad-1"]["status"] == 400
    assert "fast-1" in lines  # slower than the (tiny) threshold too


async def test_client_errors_are_logged_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    async with running_app() as client:
        capsys.readouterr()
        await client.simulate_post("/predict", body=b"{", headers={"X-Request-ID": "bad-2"})
    lines = {line.get("request_id"): line for line in _lines(capsys.readouterr().err)}
    assert lines["bad-2"]["level"] == "INFO"
    assert lines["bad-2"]["status"] == 400


async def test_fast_successes_are_only_logged_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    async with running_app() as client:
        capsys.readouterr()
        await client.simulate_get("/v2/health/live", headers={"X-Request-ID": "quiet-1"})
    assert "quiet-1" not in capsys.readouterr().err
    async with running_app(demo_settings(system={"log_level": "DEBUG"})) as client:
        capsys.readouterr()
        await client.simulate_get("/v2/health/live", headers={"X-Request-ID": "loud-1"})
    assert "loud-1" in capsys.readouterr().err


async def test_the_prediction_log_writes_one_line_per_order(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    settings = demo_settings(observability={"prediction_log": {"path": str(path)}})
    orders = batch_of_32()
    async with running_app(settings) as client:
        first = await client.simulate_post(
            "/predict/batch", json={"requests": orders}, headers={"X-Request-ID": "log-1"}
        )
        again = await client.simulate_post("/predict/batch", json={"requests": orders})
    lines = _lines(path.read_text())
    assert len(lines) == 64
    for line, sent, answer in zip(lines, orders, first.json["predictions"], strict=False):
        assert line["request_id"] == "log-1"
        assert line["order"]["symbol"] == sent["symbol"]
        assert line["win_probability"] == answer["win_probability"]
        assert line["threshold"] == answer["threshold"]
        assert line["model_version"] == answer["model_version"]
        assert line["latency_ms"] > 0
        assert len(line["features_hash"]) == 24
    # The same order on the same data and model has the same features hash.
    assert [line["features_hash"] for line in lines[:32]] == [
        line["features_hash"] for line in lines[32:]
    ]
    assert again.json["predictions"][0]["cached"] is True


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "never.jsonl", queue_size=1)
    batch = LoggedBatch(orders=[], predictions=[], latency_ms=1.0, request_id=None)
    assert log.submit(batch) is True
    assert log.submit(batch) is False
    assert log.dropped == 1
