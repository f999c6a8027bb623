"""The redis provider and the feed, against a real redis-server on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from polars.testing import assert_frame_equal

from inference.cache import TTLCache
from inference.errors import Unavailable
from inference.market import CircuitBreaker, MarketData, ProviderSlot
from providers.base import MarketSnapshot, NoMarketData, ProviderError, StaleData
from providers.calendar import NY
from providers.feed import FeedPublisher
from providers.redis_provider import RedisProvider
from providers.synthetic import SyntheticProvider
from tests.conftest import RedisServer
from tests.providers.conftest import eventually

pytestmark = pytest.mark.server

SYMBOLS = ("SPX", "VIX")
#: A Wednesday, 11:02:30 in New York.
MIDSESSION = datetime(2024, 3, 6, 11, 2, 30, tzinfo=NY).astimezone(UTC)


class MarketClock:
    """A market clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


class Feed:
    """A running FeedPublisher and the means to stop it."""

    def __init__(self, publisher: FeedPublisher) -> None:
        self.publisher = publisher
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(publisher.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@contextlib.asynccontextmanager
async def feed(
    server: RedisServer, clock: MarketClock, source: Any = None, symbols: Sequence[str] = SYMBOLS
) -> AsyncIterator[Feed]:
    """A synthetic feed publishing every 0.1 s to ``server``."""
    running = Feed(
        FeedPublisher(
            source or SyntheticProvider(symbols=symbols),
            server.url,
            symbols,
            interval_s=0.1,
            keep_bars=200,
            clock=clock,
            reconnect_backoff_s=0.1,
            reconnect_max_backoff_s=0.5,
        )
    )
    try:
        await eventually(lambda: running.publisher.seq > 0, 5.0)
        yield running
    finally:
        await running.close()


@contextlib.asynccontextmanager
async def mirror(
    server: RedisServer, heartbeat_timeout_s: float = 1.0
) -> AsyncIterator[RedisProvider]:
    """A redis provider on ``server``."""
    provider = RedisProvider(
        server.url,
        SYMBOLS,
        heartbeat_timeout_s=heartbeat_timeout_s,
        reconnect_backoff_s=0.1,
        reconnect_max_backoff_s=0.5,
    )
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


async def test_keys_published_before_start_are_loaded(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    async with feed(redis_server, clock), mirror(redis_server) as provider:
        assert provider.state == "up"
        assert provider.loads == 1
        expected = SyntheticProvider(symbols=SYMBOLS).snapshot_sync("SPX", clock(), 100)
        snapshot = await provider.snapshot("SPX", clock(), 100)
        assert snapshot.source == "redis"
        assert snapshot.as_of == datetime(2024, 3, 6, 10, 55, tzinfo=NY)
        assert_frame_equal(snapshot.bars, expected.bars)
        assert provider.health()["feed"]["alive"]


async def test_new_bars_and_quotes_arrive_by_subscription(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    async with feed(redis_server, clock), mirror(redis_server) as provider:
        loads = provider.loads
        clock.advance(5)

        async def has_new_bar() -> bool:
            snapshot = await provider.snapshot("SPX", clock(), 100)
            return snapshot.as_of == datetime(2024, 3, 6, 11, 0, tzinfo=NY)

        await eventually(has_new_bar, 2.0)
        expected = SyntheticProvider(symbols=SYMBOLS).snapshot_sync("SPX", clock(), 100)
        assert_frame_equal((await provider.snapshot("SPX", clock(), 100)).bars, expected.bars)
        quote = provider.quote("SPX")
        assert quote is not None
        assert quote.price == expected.last_close
        assert quote.source == "synthetic"
        assert provider.loads == loads  # it came by the subscription, not a reload


async def test_a_request_never_waits_on_redis(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    async with feed(redis_server, clock), mirror(redis_server, heartbeat_timeout_s=1.0) as provider:
        redis_server.freeze()
        try:
            slowest = 0.0
            for _ in range(200):
                mark = time.perf_counter()
                with contextlib.suppress(StaleData):
                    await provider.snapshot("SPX", clock(), 100)
                slowest = max(slowest, time.perf_counter() - mark)
            # Memory only: a wait on the frozen Redis would last until the test's end.
            assert slowest < 0.05
            # Frozen Redis delivers no heartbeat: within the timeout the data is flagged.
            await asyncio.sleep(1.1)
            with pytest.raises(StaleData):
                await provider.snapshot("SPX", clock(), 100)
        finally:
            redis_server.resume()


async def test_feed_stop_is_noticed_within_the_heartbeat_timeout(
    redis_server: RedisServer,
) -> None:
    clock = MarketClock(MIDSESSION)
    async with mirror(redis_server, heartbeat_timeout_s=1.0) as provider:
        async with feed(redis_server, clock):
            await eventually(lambda: provider.health()["feed"]["alive"], 2.0)
            await provider.snapshot("SPX", clock(), 100)
        stopped = time.monotonic()

        async def flagged() -> bool:
            try:
                await provider.snapshot("SPX", clock(), 100)
            except StaleData as ex:
                return "heartbeat silent" in ex.reason
            return False

        await eventually(flagged, 2.0, step_s=0.01)
        noticed = time.monotonic() - stopped
        # The last beat left before the stop; allow for scheduling on a busy machine.
        assert noticed <= 1.0 + 0.25
        assert not provider.health()["feed"]["alive"]


async def test_redis_restart_is_recovered(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    async with feed(redis_server, clock) as running, mirror(redis_server) as provider:
        before = await provider.snapshot("SPX", clock(), 100)
        redis_server.restart()  # every key is lost
        # Meanwhile the mirror answers at once from memory.
        during = await provider.snapshot("SPX", clock(), 100)
        assert during.as_of == before.as_of
        await eventually(lambda: provider.loads >= 2 and provider.state == "up", 5.0)
        await eventually(lambda: running.publisher.reconnects >= 1, 5.0)
        clock.advance(5)

        async def has_new_bar() -> bool:
            with contextlib.suppress(StaleData):
                snapshot = await provider.snapshot("SPX", clock(), 100)
                return snapshot.as_of == before.as_of + timedelta(minutes=5)
            return False

        await eventually(has_new_bar, 5.0)
        # The feed rewrote the keys, so a newcomer loads the whole history again.
        async with mirror(redis_server) as newcomer:
            assert (await newcomer.snapshot("SPX", clock(), 100)).bars.height == 100


async def test_malformed_messages_are_counted_not_fatal(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    async with feed(redis_server, clock), mirror(redis_server) as provider:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.publish("market:prices:SPX", b"{not json")
            await client.publish("market:prices:SPX", b'{"type": "bar", "symbol": "SPX"}')
        finally:
            await client.aclose()
        await eventually(lambda: provider.malformed == 2, 2.0)
        clock.advance(5)

        async def still_streaming() -> bool:
            snapshot = await provider.snapshot("SPX", clock(), 100)
            return snapshot.as_of == datetime(2024, 3, 6, 11, 0, tzinfo=NY)

        await eventually(still_streaming, 2.0)


class VixLinkDrops:
    """A source whose VIX stream goes down: it keeps VIX bars but cannot vouch for them."""

    name = "ibkr"

    def __init__(self) -> None:
        self.inner = SyntheticProvider(symbols=SYMBOLS)
        self.vix_down = False

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to close."""

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        snapshot = self.inner.snapshot_sync(symbol, as_of, bars)
        if symbol == "VIX" and self.vix_down:
            raise StaleData(snapshot, "IB stream down")
        return snapshot

    def health(self) -> dict[str, Any]:
        return {"name": self.name}


async def test_symbols_the_source_cannot_vouch_for_are_stale(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    source = VixLinkDrops()
    async with feed(redis_server, clock, source=source), mirror(redis_server) as provider:
        assert (await provider.snapshot("VIX", clock(), 100)).source == "redis"
        source.vix_down = True
        await eventually(lambda: provider.health()["feed"]["stale_symbols"] == ["VIX"], 2.0)
        assert (await provider.snapshot("SPX", clock(), 100)).source == "redis"
        with pytest.raises(StaleData, match="reports VIX not live"):
            await provider.snapshot("VIX", clock(), 100)
        with pytest.raises(NoMarketData):
            await provider.snapshot("VIX", MIDSESSION - timedelta(days=5000), 100)


async def test_unreachable_redis_is_a_provider_error() -> None:
    provider = RedisProvider(
        "redis://127.0.0.1:1/0", SYMBOLS, connect_timeout_s=0.2, reconnect_backoff_s=0.1
    )
    await provider.start()
    try:
        with pytest.raises(ProviderError, match="redis is"):
            await provider.snapshot("SPX", MIDSESSION, 100)
        assert provider.health()["state"] in {"down", "connecting"}
    finally:
        await provider.close()


async def test_chain_falls_back_or_flags_when_the_feed_dies(redis_server: RedisServer) -> None:
    clock = MarketClock(MIDSESSION)
    async with mirror(redis_server, heartbeat_timeout_s=0.5) as provider:

        def chain(*fallback: Any, on_stale: str = "flag") -> MarketData:
            slots = [ProviderSlot(provider, 600.0, CircuitBreaker(), cache_ttl_s=0.0)]
            slots += [ProviderSlot(extra, 600.0, CircuitBreaker()) for extra in fallback]
            return MarketData(slots, TTLCache("market", 100, 300.0), 100, on_stale)

        alone, flagged_reject = chain(), chain(on_stale="reject")
        with_fallback = chain(SyntheticProvider(symbols=SYMBOLS))
        async with feed(redis_server, clock):
            await eventually(lambda: provider.health()["feed"]["alive"], 2.0)
            for market in (alone, with_fallback):
                resolved = await market.resolve("SPX", clock())
                assert resolved is not None
                assert (resolved.snapshot.source, resolved.stale) == ("redis", False)
        await eventually(lambda: not provider.health()["feed"]["alive"], 2.0)

        resolved = await alone.resolve("SPX", clock())
        assert resolved is not None
        assert (resolved.snapshot.source, resolved.stale) == ("redis", True)
        resolved = await with_fallback.resolve("SPX", clock())
        assert resolved is not None
        assert (resolved.snapshot.source, resolved.stale) == ("synthetic", False)
        with pytest.raises(Unavailable, match="only stale market data"):
            await flagged_reject.resolve("SPX", clock())
        # Honest data is not a circuit failure: the redis circuit stays closed.
        assert alone.health()[0]["circuit"] == "closed"
        assert "heartbeat silent" in alone.health()[0]["last_error"]
