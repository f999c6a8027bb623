"""Fallback honesty through the whole service: data_source, data_as_of and stale tell the truth."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import falcon.testing
import msgspec
import pytest

from inference.app import create_app
from inference.config import load_settings
from inference.service import Service
from providers.calendar import BAR, last_completed_bar_start
from providers.feed import FeedPublisher
from providers.synthetic import DEFAULT_SYMBOLS, SyntheticProvider
from tests.conftest import RedisServer
from tests.providers.conftest import bot_batch, eventually, running_service

pytestmark = [pytest.mark.server, pytest.mark.slow]

HEARTBEAT_TIMEOUT_S = 1.0


@contextlib.asynccontextmanager
async def synthetic_feed(server: RedisServer) -> AsyncIterator[FeedPublisher]:
    """``magic8 feed --source synthetic`` in-process, beating every 0.2 s on the real clock."""
    publisher = FeedPublisher(
        SyntheticProvider(symbols=DEFAULT_SYMBOLS), server.url, DEFAULT_SYMBOLS, interval_s=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await eventually(lambda: publisher.seq > 0, 10.0)
        yield publisher
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def redis_settings(server: RedisServer, **data_source: Any) -> dict[str, Any]:
    """Overrides that serve from ``server`` with a short heartbeat timeout."""
    section: dict[str, Any] = {
        "primary": "redis",
        "fallback": [],
        "redis": {
            "host": "127.0.0.1",
            "port": server.port,
            "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
            "reconnect_backoff_s": 0.1,
        },
    }
    section.update(data_source)
    return {"data_source": section}


async def answers(service: Service) -> list[Any]:
    """The service's answers to the bot's 32-order batch, now."""
    return list((await service.predictor.predict_batch(bot_batch())).predictions)


def provider_health(service: Service, name: str) -> dict[str, Any]:
    return next(entry for entry in service.health()["providers"] if entry["name"] == name)


async def test_a_stopped_feed_is_flagged_stale(redis_server: RedisServer) -> None:
    # The prediction cache is off here: see test_cached_answers_keep_their_stale_flag.
    overrides = redis_settings(redis_server) | {"performance": {"cache": {"prediction_ttl": 0}}}
    async with synthetic_feed(redis_server), running_service(**overrides) as service:
        live = await answers(service)
        assert {answer.data_source for answer in live} == {"redis"}
        assert not any(answer.stale for answer in live)
        # The newest completed bar (or, just past a boundary, the one before it).
        newest = last_completed_bar_start(datetime.now(UTC))
        assert {answer.data_as_of for answer in live} <= {newest, newest - BAR}
    # The feed has stopped: within the heartbeat timeout every answer says stale.

    async def all_stale() -> bool:
        return all(answer.stale for answer in await answers(service))

    noticed = await eventually(all_stale, HEARTBEAT_TIMEOUT_S + 1.0, step_s=0.05)
    assert noticed <= HEARTBEAT_TIMEOUT_S + 0.5  # polling and scheduling on a busy machine
    stale = await answers(service)
    assert {answer.data_source for answer in stale} == {"redis"}  # the truth: old redis data
    assert all(answer.win_probability is not None for answer in stale)
    redis = provider_health(service, "redis")
    assert redis["feed"]["alive"] is False
    assert redis["circuit"] == "closed"


async def test_a_stopped_feed_falls_back(redis_server: RedisServer) -> None:
    overrides = redis_settings(redis_server, fallback=["synthetic"])
    async with running_service(**overrides) as service:
        async with synthetic_feed(redis_server):
            await eventually(lambda: provider_health(service, "redis")["feed"]["alive"], 5.0)
            assert {answer.data_source for answer in await answers(service)} == {"redis"}

        async def fell_back() -> bool:
            return {answer.data_source for answer in await answers(service)} == {"synthetic"}

        # How fast is test_a_stopped_feed_is_flagged_stale's business; here, that it happens.
        await eventually(fell_back, HEARTBEAT_TIMEOUT_S + 4.0, step_s=0.05)
        assert not any(answer.stale for answer in await answers(service))
        # Restart the feed: redis answers again, without restarting the service.
        async with synthetic_feed(redis_server):

            async def back_on_redis() -> bool:
                return {answer.data_source for answer in await answers(service)} == {"redis"}

            await eventually(back_on_redis, 10.0)


async def test_only_stale_data_is_refused_when_configured(redis_server: RedisServer) -> None:
    settings = load_settings(**redis_settings(redis_server, on_stale="reject"))
    async with falcon.testing.ASGIConductor(create_app(settings)) as conductor:
        body = msgspec.json.encode({"requests": bot_batch()})
        headers = {"Content-Type": "application/json"}
        async with synthetic_feed(redis_server):

            async def caught_up() -> bool:
                return (await conductor.simulate_get("/market/SPX")).status_code == 200

            # The service started first: the feed's history streams in within moments.
            await eventually(caught_up, 5.0)
            ok = await conductor.simulate_post("/predict/batch", body=body, headers=headers)
            assert ok.status_code == 200
            market = (await conductor.simulate_get("/market/SPX")).json
            assert (market["source"], market["stale"]) == ("redis", False)
        await asyncio.sleep(HEARTBEAT_TIMEOUT_S + 0.2)
        refused = await conductor.simulate_post("/predict/batch", body=body, headers=headers)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"]
        assert "only stale market data" in refused.json["error"]
        health = (await conductor.simulate_get("/health")).json
        redis = next(entry for entry in health["providers"] if entry["name"] == "redis")
        assert redis["feed"]["alive"] is False
        assert redis["data_age_s"] is not None


async def test_cached_answers_take_the_current_stale_flag(redis_server: RedisServer) -> None:
    # One issue time for both batches, so the second is a prediction-cache hit for sure.
    orders = bot_batch(datetime.now(UTC))
    async with running_service(**redis_settings(redis_server)) as service:
        async with synthetic_feed(redis_server):
            await eventually(lambda: provider_health(service, "redis")["feed"]["alive"], 5.0)
            live = await service.predictor.predict_batch(orders)
            assert not any(answer.stale for answer in live.predictions)
        await asyncio.sleep(HEARTBEAT_TIMEOUT_S + 0.2)
        after = await service.predictor.predict_batch(orders)
        assert after.batch_metrics.prediction_hits == len(orders)
        assert all(answer.stale for answer in after.predictions)
