"""The bot's client against a real server: chunking, pairing, 503 retry, both failure policies."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from inference.client import FailurePolicy, PredictorClient
from tests.fixtures import batch_of_32, free_port, order
from tests.inference.servers import HOST, Server, serving

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_batches() -> Iterator[Server]:
    """A server refusing batches over 5 orders, serving one request at a time."""
    env = {
        "MAGIC8_PREDICTOR_PERFORMANCE__BATCH_PREDICTIONS__MAX_BATCH_SIZE": "5",
        "MAGIC8_PREDICTOR_PERFORMANCE__MAX_IN_FLIGHT": "1",
    }
    with serving(env=env) as server:
        yield server


def _stall(port: int) -> socket.socket:
    """Hold the server's only in-flight slot with a body that never comes."""
    sock = socket.create_connection((HOST, port))
    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 50\r\n\r\n".encode())
    return sock


async def test_splits_at_the_servers_limit_and_pairs_by_position(small_batches: Server) -> None:
    orders = batch_of_32()[:12]
    orders[7] = order("SPX", "Butterfly", premium=0)  # the bot's limit_price default
    async with PredictorClient(small_batches.base, failure_policy=FailurePolicy.CLOSED) as client:
        results = await client.predict_batch(orders)
        assert client.max_batch_size == 5  # learnt from the 413
    assert len(results) == 12
    for sent, result in zip(orders, results, strict=True):
        assert result.prediction is not None
        assert (result.prediction.symbol, result.prediction.strategy) == (
            sent["symbol"],
            sent["strategy"],
        )
    bad = results[7]
    assert bad.error is not None
    assert "premium" in bad.error
    assert bad.should_execute is False
    for result in results[:7] + results[8:]:
        assert result.error is None
        assert result.prediction is not None
        assert result.prediction.win_probability is not None
        assert result.should_execute == (
            result.prediction.win_probability >= result.prediction.threshold
        )


async def test_a_per_order_error_executes_under_fail_open(small_batches: Server) -> None:
    orders = [order("SPX", "Butterfly", premium=0), order("SPY", "Vertical")]
    async with PredictorClient(small_batches.base, failure_policy=FailurePolicy.OPEN) as client:
        results = await client.predict_batch(orders)
    assert results[0].error is not None
    assert results[0].should_execute is True
    assert results[1].error is None


async def test_retries_a_503_after_retry_after(small_batches: Server) -> None:
    stalled = _stall(small_batches.port)
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, stalled.close)
    started = time.monotonic()
    async with PredictorClient(small_batches.base, failure_policy=FailurePolicy.CLOSED) as client:
        results = await client.predict_batch(batch_of_32()[:3])
    # The first attempt was shed; the retry came after Retry-After (1 s) and was answered.
    assert time.monotonic() - started >= 0.9
    assert all(result.error is None for result in results)


@pytest.mark.parametrize(
    ("policy", "execute"), [(FailurePolicy.OPEN, True), (FailurePolicy.CLOSED, False)]
)
async def test_an_exhausted_503_follows_the_failure_policy(
    small_batches: Server, policy: FailurePolicy, execute: bool
) -> None:
    stalled = _stall(small_batches.port)
    try:
        await asyncio.sleep(0.3)
        async with PredictorClient(
            small_batches.base, failure_policy=policy, max_retries=0
        ) as client:
            results = await client.predict_batch(batch_of_32()[:7])
    finally:
        stalled.close()
        await asyncio.sleep(0.2)
    assert len(results) == 7
    assert all(result.should_execute is execute for result in results)
    assert all(result.error is not None and "503" in result.error for result in results)


@pytest.mark.parametrize(
    ("policy", "execute"), [(FailurePolicy.OPEN, True), (FailurePolicy.CLOSED, False)]
)
async def test_an_unreachable_server_follows_the_failure_policy(
    policy: FailurePolicy, execute: bool
) -> None:
    async with PredictorClient(
        f"http://{HOST}:{free_port()}", failure_policy=policy, max_retries=1
    ) as client:
        results = await client.predict_batch(batch_of_32()[:4])
    assert [result.should_execute for result in results] == [execute] * 4
    assert all(result.prediction is None and result.error for result in results)


def test_the_failure_policy_is_required() -> None:
    with pytest.raises(TypeError):
        PredictorClient("http://127.0.0.1:1", failure_policy="open")  # type: ignore[arg-type]
