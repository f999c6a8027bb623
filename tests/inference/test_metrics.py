"""GET /metrics: SPEC §7 names and buckets in process, and sums over two gunicorn workers."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures import batch_of_32, running_app
from tests.inference.servers import serving

SPEC_METRICS = (
    "magic8_request_duration_seconds",
    "magic8_stage_duration_seconds",
    "magic8_predictions_total",
    "magic8_cache_hits_total",
    "magic8_cache_misses_total",
    "magic8_provider_errors_total",
    "magic8_provider_data_age_seconds",
    "magic8_provider_circuit_state",
    "magic8_batch_size",
    "magic8_in_flight_requests",
    "magic8_model_info",
)


def _total(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(
        rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$", re.M
    )
    return sum(float(match[2]) for match in pattern.finditer(text))


async def test_metrics_have_the_spec_names_buckets_and_stages() -> None:
    async with running_app() as client:
        for _ in range(3):
            answer = await client.simulate_post("/predict/batch", json={"requests": batch_of_32()})
            assert answer.status_code == 200
        result = await client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    text = result.text
    for name in SPEC_METRICS:
        assert f"\n{name}" in text or text.startswith(name), name
    for stage in ("decode", "market_data", "features", "inference", "encode"):
        assert f'magic8_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'le="5e-05"' in text
    assert 'le="1.0"' in text
    assert _total(text, "magic8_predictions_total") >= 96
    assert 'endpoint="/predict/batch",method="POST",status="200"' in text
    assert _total(text, "magic8_cache_hits_total", 'cache="market_data"') > 0
    assert 'magic8_provider_circuit_state{provider="synthetic"} 0.0' in text


async def test_hostile_symbols_do_not_create_label_sets() -> None:
    async with running_app() as client:
        orders = [dict(batch_of_32()[0], symbol=f"Z{index}") for index in range(20)]
        await client.simulate_post("/predict/batch", json={"requests": orders})
        await client.simulate_get("/market/ZZZ")
        text = (await client.simulate_get("/metrics")).text
    assert "Z1" not in text
    assert 'symbol="other"' in text
    assert "ZZZ" not in text


@pytest.mark.server
@pytest.mark.slow
def test_two_workers_are_summed(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    requests = 40
    with serving("--workers", "2", env=env) as server:
        for _ in range(requests):
            # A fresh connection each time, so both workers take a share.
            with httpx.Client(base_url=server.base, timeout=10) as client:
                answer = client.post("/predict/batch", json={"requests": batch_of_32()})
                assert answer.status_code == 200
        pids = {int(path.stem.rsplit("_", 1)[1]) for path in tmp_path.glob("histogram_*.db")}
        assert len(pids & set(server.worker_pids())) == 2, "both workers must have served"
        deadline = time.monotonic() + 10
        while True:
            scrapes = [httpx.get(f"{server.base}/metrics", timeout=10).text for _ in range(6)]
            totals = {_total(text, "magic8_predictions_total") for text in scrapes}
            if totals == {requests * 32.0} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert totals == {requests * 32.0}
        counted = _total(
            scrapes[0], "magic8_request_duration_seconds_count", 'endpoint="/predict/batch"'
        )
        assert counted == requests
