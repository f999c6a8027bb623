"""``magic8 feed``: the Redis message format, the heartbeat, and replaying a day at speed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis.asyncio as aioredis

from providers.base import StaleData
from providers.calendar import NY, session_open
from providers.feed import (
    BAR_DECODER,
    ENCODER,
    MESSAGE_DECODER,
    FeedPublisher,
    Heartbeat,
    Quote,
    bars_frame,
    finite_price,
    replay_clock,
)
from providers.ibkr import IBKRProvider
from providers.redis_provider import RedisProvider
from providers.replay import ReplayProvider, write_bars
from providers.synthetic import SyntheticProvider
from tests.conftest import RedisServer
from tests.fakes.ib_gateway import FakeGateway
from tests.providers.conftest import eventually

REPLAY_DAY = date(2024, 3, 6)
MIDSESSION = datetime(2024, 3, 6, 11, 2, 30, tzinfo=NY).astimezone(UTC)


def test_unset_prices_are_none() -> None:
    assert finite_price(float("nan")) is None
    assert finite_price(-1.0) is None
    assert finite_price(0.0) is None
    assert finite_price(None) is None
    assert finite_price(5712.25) == 5712.25


def test_replay_clock_runs_at_speed() -> None:
    with pytest.raises(ValueError, match="speed"):
        replay_clock(MIDSESSION, 0)
    with pytest.raises(ValueError, match="offset"):
        replay_clock(datetime(2024, 3, 6, 9, 30), 1.0)  # noqa: DTZ001 - naive on purpose
    clock = replay_clock(MIDSESSION, 600.0)
    time.sleep(0.05)
    assert timedelta(seconds=25) <= clock() - MIDSESSION <= timedelta(seconds=120)


@pytest.mark.server
async def test_published_format(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub()
    await pubsub.subscribe("market:prices:VIX", "market:vix", "market:heartbeat")
    now = [MIDSESSION]
    publisher = FeedPublisher(
        SyntheticProvider(symbols=("SPX", "VIX")),
        redis_server.url,
        ["spx", "VIX"],
        interval_s=0.2,
        keep_bars=50,
        clock=lambda: now[0],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await eventually(lambda: publisher.seq >= 1, 5.0)
        raw_bars = await client.lrange("bars:SPX:5m", 0, -1)
        assert len(raw_bars) == 50
        first = json.loads(raw_bars[0])
        assert set(first) == {"start", "open", "high", "low", "close", "volume"}
        assert first["start"].endswith("Z")  # ISO-8601 in UTC
        assert datetime.fromisoformat(json.loads(raw_bars[-1])["start"]) == datetime(
            2024, 3, 6, 10, 55, tzinfo=NY
        )
        expected = SyntheticProvider(symbols=("SPX",)).snapshot_sync("SPX", MIDSESSION, 50)
        frame = bars_frame([BAR_DECODER.decode(raw) for raw in raw_bars])
        assert frame.equals(expected.bars)

        quote = json.loads(await client.get("quote:SPX"))
        assert set(quote) == {"symbol", "price", "time", "source", "bid", "ask", "last"}
        assert (quote["bid"], quote["ask"], quote["source"]) == (None, None, "synthetic")
        assert quote["price"] == expected.last_close

        beat = json.loads(await client.get("market:heartbeat"))
        assert beat["type"] == "heartbeat"
        assert (beat["source"], beat["interval_s"], beat["symbols"]) == (
            "synthetic",
            0.2,
            ["SPX", "VIX"],
        )
        assert beat["stale"] == []
        ttl_ms = await client.pttl("market:heartbeat")
        assert 0 < ttl_ms <= 1000  # five missed beats and the key is gone

        # A new bar goes to the symbol's channel and, for VIX, to the seed's channel too.
        await _drain(pubsub)
        now[0] += timedelta(minutes=5)
        channels: dict[str, list[dict[str, object]]] = {}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not (
            any(m["type"] == "bar" for m in channels.get("market:vix", []))
            and any(m["type"] == "bar" for m in channels.get("market:prices:VIX", []))
            and channels.get("market:heartbeat")
        ):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                channels.setdefault(message["channel"].decode(), []).append(
                    json.loads(message["data"])
                )
        bar_message = next(m for m in channels["market:prices:VIX"] if m["type"] == "bar")
        assert bar_message["symbol"] == "VIX"
        assert datetime.fromisoformat(bar_message["bar"]["start"]) == datetime(  # type: ignore[index]
            2024, 3, 6, 11, 0, tzinfo=NY
        )
        assert any(m["type"] == "heartbeat" for m in channels["market:heartbeat"])
        assert len(await client.lrange("bars:SPX:5m", 0, -1)) == 50  # trimmed
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await pubsub.aclose()
        await client.aclose()


async def _drain(pubsub: aioredis.client.PubSub) -> None:
    while await pubsub.get_message(timeout=0.05) is not None:
        pass


def test_message_types_round_trip() -> None:
    quote = Quote(symbol="SPX", price=None, time=MIDSESSION, source="ibkr", bid=None)
    assert json.loads(ENCODER.encode(quote))["price"] is None
    beat = Heartbeat(
        time=MIDSESSION, as_of=MIDSESSION, source="ibkr", interval_s=1.0, seq=3, symbols=["SPX"]
    )
    decoded = MESSAGE_DECODER.decode(ENCODER.encode(beat))
    assert decoded == beat
    assert json.loads(ENCODER.encode(beat))["type"] == "heartbeat"


def record_day(folder: Path, symbols: tuple[str, ...] = ("SPX", "VIX")) -> None:
    """Write the simulator's REPLAY_DAY (and the day before) as replay files."""
    simulator = SyntheticProvider(symbols=symbols)
    for symbol in symbols:
        end = session_open(REPLAY_DAY) + timedelta(hours=7)
        write_bars(folder, symbol, simulator.snapshot_sync(symbol, end, 156).bars)


@pytest.mark.server
async def test_replayed_day_is_published_at_speed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    record_day(tmp_path)
    replay = ReplayProvider(tmp_path)
    replay.load()
    assert replay.sessions() == [date(2024, 3, 5), REPLAY_DAY]
    publisher = FeedPublisher(
        replay,
        redis_server.url,
        ["SPX", "VIX"],
        interval_s=0.05,
        clock=replay_clock(session_open(REPLAY_DAY), 3000.0),  # a 5-minute bar per 0.1 s
    )
    client = aioredis.Redis.from_url(redis_server.url)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await eventually(lambda: publisher.seq >= 1, 5.0)
        at_open = await client.llen("bars:SPX:5m")
        assert at_open == 78  # the day before, as history

        async def grew() -> bool:
            return int(await client.llen("bars:SPX:5m")) >= at_open + 5

        await eventually(grew, 3.0)
        raw = await client.lrange("bars:SPX:5m", 0, -1)
        published = bars_frame([BAR_DECODER.decode(item) for item in raw])
        recorded = pl.read_parquet(tmp_path / "SPX.parquet")
        assert published.equals(recorded.head(published.height))
        beat = json.loads(await client.get("market:heartbeat"))
        assert beat["source"] == "replay"
        assert datetime.fromisoformat(beat["as_of"]) >= session_open(REPLAY_DAY)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()


@pytest.mark.server
@pytest.mark.slow
def test_feed_command_replays_a_recorded_day(redis_server: RedisServer, tmp_path: Path) -> None:
    record_day(tmp_path, ("SPX", "VIX"))
    command = [
        sys.executable,
        "-m",
        "inference.cli",
        "feed",
        "--source",
        "replay",
        "--replay-path",
        str(tmp_path),
        "--day",
        REPLAY_DAY.isoformat(),
        "--speed",
        "3000",
        "--interval",
        "0.1",
        "--symbols",
        "SPX,VIX",
        "--redis",
        redis_server.url,
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MAGIC8_")}
    feed = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        asyncio.run(_wait_for_bars(redis_server.url, 80, 20.0))
    finally:
        feed.send_signal(signal.SIGTERM)
        out, err = feed.communicate(timeout=15)
    assert feed.returncode == 0, err.decode()
    assert b"feed: replay" in out


async def _wait_for_bars(url: str, count: int, timeout_s: float) -> None:
    client = aioredis.Redis.from_url(url)
    try:

        async def enough() -> bool:
            return int(await client.llen("bars:SPX:5m")) >= count

        await eventually(enough, timeout_s, step_s=0.1)
    finally:
        await client.aclose()


@pytest.mark.server
async def test_ibkr_feed_reaches_predictors_through_redis(redis_server: RedisServer) -> None:
    """The design's central data service: one IB session, any number of readers via Redis."""
    gateway = FakeGateway(update_interval_s=0.2)
    await gateway.start()
    source = IBKRProvider(
        "127.0.0.1",
        gateway.port,
        symbols=("SPX", "SPY"),
        history_bars=120,
        connect_timeout_s=5.0,
        reconnect_backoff_s=0.5,  # the stale window the test observes lasts at least this
    )
    publisher = FeedPublisher(source, redis_server.url, ["SPX", "SPY"], interval_s=0.1)
    reader = RedisProvider(
        redis_server.url, ["SPX", "SPY"], heartbeat_timeout_s=2.0, reconnect_backoff_s=0.1
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    try:
        await eventually(lambda: publisher.seq > 0, 10.0)
        await reader.start()
        now = datetime.now(UTC)
        direct = await source.snapshot("SPX", now, 100)
        mirrored = await reader.snapshot("SPX", now, 100)
        assert mirrored.bars.equals(direct.bars)
        assert mirrored.as_of == direct.as_of
        assert reader.health()["feed"]["source"] == "ibkr"
        await eventually(lambda: (q := reader.quote("SPY")) is not None and q.bid is not None, 3)

        # The IB link drops: the feed says so in its beat, readers flag the data at once.
        gateway.drop_connections()

        async def flagged() -> bool:
            try:
                await reader.snapshot("SPX", now, 100)
            except StaleData:
                return True
            return False

        await eventually(flagged, 2.0)

        async def live_again() -> bool:
            return not await flagged()

        await eventually(live_again, 5.0)
        assert len(gateway.historical_requests) == 4  # one per symbol per IB session
        assert not gateway.referee.violations
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await reader.close()
        await gateway.close()
