"""The ibkr provider against a fake IB Gateway on a real socket, through the real IB client."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from polars.testing import assert_frame_equal

from inference.cache import TTLCache
from inference.config import load_settings
from inference.market import CircuitBreaker, MarketData, ProviderSlot
from inference.pipeline import MarketFeatures, Tally
from inference.service import make_registry
from providers.base import NoMarketData, ProviderError, StaleData
from providers.calendar import NY
from providers.ibkr import HistoricalPacer, IBKRProvider, contract_spec, load_ib_api
from providers.synthetic import SyntheticProvider
from tests.fakes.ib_gateway import (
    CONTRACTS,
    IDENTICAL_GAP_S,
    PACING_MESSAGE,
    Bar,
    FakeGateway,
)
from tests.providers.conftest import bot_batch, eventually, running_service

#: Both client libraries the provider supports, where installed.
IB_APIS = [
    pytest.param(name, marks=pytest.mark.skipif(not importlib.util.find_spec(name), reason=name))
    for name in ("ib_insync", "ib_async")
]
FIVE = ("SPX", "VIX", "RUT", "NDX", "SPY")
#: A Wednesday, 11:02:30 in New York: the 11:00 bar is open, 10:55 is the newest completed.
MIDSESSION = datetime(2024, 3, 6, 11, 2, 30, tzinfo=NY).astimezone(UTC)


@contextlib.asynccontextmanager
async def streaming(
    gateway: FakeGateway, symbols: Sequence[str] = FIVE, api: str = "ib_insync", **options: Any
) -> AsyncIterator[IBKRProvider]:
    """An ibkr provider connected to ``gateway``, closed afterwards."""
    settings: dict[str, Any] = {
        "connect_timeout_s": 5.0,
        "reconnect_backoff_s": 0.2,
        "reconnect_max_backoff_s": 1.0,
        "pacing_backoff_s": 0.5,
    }
    settings.update(options)
    provider = IBKRProvider(
        "127.0.0.1", gateway.port, symbols=symbols, api=importlib.import_module(api), **settings
    )
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def test_contracts_follow_the_exchange_listing() -> None:
    assert contract_spec("spx") == contract_spec("SPX")
    for symbol in ("SPX", "VIX", "XSP"):
        assert (contract_spec(symbol).sec_type, contract_spec(symbol).exchange) == ("IND", "CBOE")
    assert contract_spec("RUT").exchange == "RUSSELL"
    assert contract_spec("NDX").exchange == "NASDAQ"
    for symbol in ("SPY", "QQQ", "AAPL", "TSLA", "IWM"):
        spec = contract_spec(symbol)
        assert (spec.sec_type, spec.exchange, spec.currency) == ("STK", "SMART", "USD")


def test_loader_honours_the_preferred_library() -> None:
    assert load_ib_api("ib_insync").__name__ == "ib_insync"
    with pytest.raises(ProviderError, match="ib_insync or ib_async"):
        load_ib_api("no_such_ib_library")


class TestPacer:
    """IB's three historical pacing rules, on a hand-driven clock."""

    def make(self) -> tuple[HistoricalPacer, list[float]]:
        now = [1000.0]
        return HistoricalPacer(margin_s=0.0, clock=lambda: now[0]), now

    def test_sixty_requests_per_ten_minutes(self) -> None:
        pacer, now = self.make()
        for index in range(60):
            assert pacer.delay((str(index),), (str(index),)) == 0
            pacer.record((str(index),), (str(index),))
            now[0] += 1.0
        assert pacer.delay(("next",), ("next",)) == pytest.approx(600 - 60)
        now[0] = 1000.0 + 600
        assert pacer.delay(("next",), ("next",)) == 0
        assert pacer.sent_in_window() == 59

    def test_identical_request_waits_fifteen_seconds(self) -> None:
        pacer, now = self.make()
        pacer.record(("SPX", "3 D"), ("SPX",))
        now[0] += 10
        assert pacer.delay(("SPX", "3 D"), ("SPX",)) == pytest.approx(5)
        assert pacer.delay(("SPX", "600 S"), ("SPX",)) == 0

    def test_six_per_contract_in_two_seconds(self) -> None:
        pacer, now = self.make()
        for index in range(5):
            pacer.record(("SPX", str(index)), ("SPX",))
        now[0] += 0.5
        assert pacer.delay(("SPX", "x"), ("SPX",)) == pytest.approx(1.5)
        assert pacer.delay(("VIX", "x"), ("VIX",)) == 0

    def test_hold_after_a_violation(self) -> None:
        pacer, now = self.make()
        pacer.hold(30)
        assert pacer.delay(("SPX",), ("SPX",)) == pytest.approx(30)
        now[0] += 30
        assert pacer.delay(("SPX",), ("SPX",)) == 0


@pytest.mark.server
@pytest.mark.parametrize("api", IB_APIS)
async def test_bars_for_each_contract_type(api: str) -> None:
    gateway = FakeGateway(clock=lambda: MIDSESSION, update_interval_s=0.2)
    await gateway.start()
    try:
        async with streaming(gateway, FIVE, api, clock=lambda: MIDSESSION) as provider:
            assert provider.state == "connected"
            simulator = SyntheticProvider(seed=8, symbols=FIVE)
            for symbol in FIVE:
                snapshot = await provider.snapshot(symbol, MIDSESSION, 100)
                expected = simulator.snapshot_sync(symbol, MIDSESSION, 100)
                assert snapshot.source == "ibkr"
                # The 11:00 bar is open at 11:02:30: the newest bar used is 10:55.
                assert snapshot.as_of == datetime(2024, 3, 6, 10, 55, tzinfo=NY)
                assert_frame_equal(snapshot.bars, expected.bars)
            requests = {request.symbol: request for request in gateway.historical_requests}
            assert set(requests) == set(FIVE)
            for symbol, request in requests.items():
                assert (request.sec_type, request.exchange) == CONTRACTS[symbol]
                assert (request.currency, request.error) == ("USD", None)
                assert (request.bar_size, request.what_to_show) == ("5 mins", "TRADES")
                assert (request.use_rth, request.keep_up_to_date, request.end) == (True, True, "")
                assert (request.format_date, request.client_id) == (2, 99)
    finally:
        await gateway.close()


@pytest.mark.server
@pytest.mark.parametrize("api", IB_APIS)
async def test_streaming_updates_reach_the_features(gateway: FakeGateway, api: str) -> None:
    async with streaming(gateway, ("SPX", "VIX"), api) as provider:
        now = datetime.now(UTC)
        before = await provider.snapshot("SPX", now, 100)
        newest = before.bars.row(-1, named=True)
        revised = Bar(
            newest["start"],
            newest["open"],
            newest["high"] + 20,
            newest["low"],
            newest["close"] + 12.5,
            newest["volume"],
        )
        assert gateway.push_bar("SPX", revised) == 1

        async def revised_close() -> bool:
            return (await provider.snapshot("SPX", now, 100)).last_close == revised.close

        await eventually(revised_close, 3.0)

        registry = make_registry(load_settings())
        market = MarketData(
            [ProviderSlot(provider, 600.0, CircuitBreaker(), cache_ttl_s=0.0)],
            TTLCache("market_data", 10, 300.0),
            history_bars=100,
        )
        features = MarketFeatures(market, registry, TTLCache("features", 10, 60.0))
        view = await features.view(["SPX", "VIX"], now, Tally())
        assert view.source == "ibkr"
        assert view.vector[registry.market_columns.index("SPX_close")] == revised.close

        # A bar IB has not sent yet is not there; once streamed, an as-of after it sees it.
        following = Bar(newest["start"] + timedelta(minutes=5), 1.0, 2.0, 0.5, 1.5, 10.0)
        later = following.start + timedelta(minutes=5)
        assert (await provider.snapshot("SPX", later, 100)).as_of == newest["start"]
        gateway.push_bar("SPX", following)

        async def streamed() -> bool:
            return (await provider.snapshot("SPX", later, 100)).as_of == following.start

        await eventually(streamed, 3.0)
        assert len(gateway.requests_for("SPX")) == 1  # streamed, never re-requested


@pytest.mark.server
@pytest.mark.parametrize("api", IB_APIS)
async def test_dropped_connection_is_reestablished(gateway: FakeGateway, api: str) -> None:
    async with streaming(gateway, ("SPX", "VIX"), api) as provider:
        now = datetime.now(UTC)
        first = await provider.snapshot("SPX", now, 100)
        initial = [request.duration for request in gateway.historical_requests]
        gateway.drop_connections()
        await eventually(lambda: provider.state != "connected", 2.0)
        with pytest.raises(StaleData, match="IB stream down") as stale:
            await provider.snapshot("SPX", now, 100)
        assert stale.value.snapshot.as_of == first.as_of  # bars kept, not vouched for

        async def live_again() -> bool:
            try:
                await provider.snapshot("SPX", now, 100)
            except StaleData:
                return False
            return True

        await eventually(live_again, 5.0)
        assert gateway.handshakes == 2
        assert provider.connects == 2
        catch_up = gateway.historical_requests[len(initial) :]
        assert {request.symbol for request in catch_up} == {"SPX", "VIX"}
        # The catch-up asks for the gap since the newest bar, never an identical request.
        assert all(request.duration not in initial for request in catch_up)
        assert all(request.error is None for request in catch_up)
        assert not gateway.referee.violations


@pytest.mark.server
async def test_gateway_down_at_start_then_reachable(gateway: FakeGateway) -> None:
    await gateway.stop()
    async with streaming(gateway, ("SPX",), start_wait_s=0.3) as provider:
        with pytest.raises(ProviderError, match="ibkr is"):
            await provider.snapshot("SPX", datetime.now(UTC), 100)
        assert provider.health()["state"] in {"backoff", "connecting"}
        await asyncio.sleep(0.5)
        await gateway.start()

        async def connected() -> bool:
            with contextlib.suppress(ProviderError):
                await provider.snapshot("SPX", datetime.now(UTC), 100)
                return True
            return False

        await eventually(connected, 5.0)
        assert gateway.handshakes == 1


@pytest.mark.server
@pytest.mark.slow
async def test_pacing_violation_is_backed_off_not_retried_in_a_loop(gateway: FakeGateway) -> None:
    gateway.fail_historical("SPX", 162, PACING_MESSAGE)
    async with streaming(gateway, ("SPX", "VIX"), pacing_backoff_s=0.5) as provider:
        await asyncio.sleep(3.0)
        # One refused request, then silence: no retry loop.
        assert [request.error for request in gateway.requests_for("SPX")] == [162]
        assert provider.pacing_violations == 1
        assert provider.health()["symbols"]["SPX"]["error"].startswith("IB error 162")
        with pytest.raises(NoMarketData):
            await provider.snapshot("SPX", datetime.now(UTC), 100)
        # VIX was unaffected.
        assert (await provider.snapshot("VIX", datetime.now(UTC), 100)).source == "ibkr"

        async def recovered() -> bool:
            with contextlib.suppress(NoMarketData):
                await provider.snapshot("SPX", datetime.now(UTC), 100)
                return True
            return False

        await eventually(recovered, IDENTICAL_GAP_S + 5.0, step_s=0.2)
        refused, retried = gateway.requests_for("SPX")
        # The retry is the same request, so it waits out IB's 15 s identical-request rule
        # as well as the backoff; the gateway's referee saw no rule broken.
        assert retried.at - refused.at >= IDENTICAL_GAP_S
        assert retried.error is None
        assert not gateway.referee.violations


@pytest.mark.server
async def test_subscription_ended_by_ib_is_requested_again(gateway: FakeGateway) -> None:
    async with streaming(gateway, ("SPX",), pacing_backoff_s=0.2) as provider:
        now = datetime.now(UTC)
        await provider.snapshot("SPX", now, 100)
        assert gateway.end_subscriptions("SPX", 162, "HMDS query cancelled") == 1

        async def requested_again() -> bool:
            return (
                len(gateway.requests_for("SPX")) == 2
                and provider.health()["symbols"]["SPX"]["streaming"]
            )

        await eventually(requested_again, 3.0)
        assert (await provider.snapshot("SPX", now, 100)).source == "ibkr"
        first, second = gateway.requests_for("SPX")
        assert second.duration != first.duration  # sized to the gap: never an identical request
        assert not gateway.referee.violations


@pytest.mark.server
async def test_unknown_contract_reports_no_data_and_is_not_retried(gateway: FakeGateway) -> None:
    async with streaming(gateway, ("SPX", "ZZZZ")) as provider:
        await asyncio.sleep(1.0)
        with pytest.raises(NoMarketData):
            await provider.snapshot("ZZZZ", datetime.now(UTC), 100)
        # Asked once (contract details, answered 200), never for history, never again.
        assert gateway.contract_requests.count("ZZZZ") == 1
        assert gateway.requests_for("ZZZZ") == []
        assert "IB knows no unique" in provider.health()["symbols"]["ZZZZ"]["error"]
        assert (await provider.snapshot("SPX", datetime.now(UTC), 100)).source == "ibkr"


@pytest.mark.server
@pytest.mark.parametrize("api", IB_APIS)
async def test_quotes_treat_unset_prices_as_none(gateway: FakeGateway, api: str) -> None:
    gateway.unsubscribed_quotes.add("NDX")
    async with streaming(gateway, ("SPX", "SPY", "NDX"), api) as provider:
        await eventually(lambda: (q := provider.quote("SPY")) is not None and q.bid is not None, 3)
        await eventually(lambda: (q := provider.quote("SPX")) is not None and q.last is not None, 3)
        index = provider.quote("SPX")
        stock = provider.quote("SPY")
        assert index is not None
        assert stock is not None
        # IB sends -1 for an index's bid and ask (ib_insync may hold NaN): both are unset.
        assert index.bid is None
        assert index.ask is None
        assert index.price == index.last
        assert stock.bid is not None
        assert stock.ask is not None
        assert stock.bid < stock.ask
        await eventually(lambda: "refused" in provider.health()["symbols"]["NDX"]["quotes"], 3)
        fallback = provider.quote("NDX")
        snapshot = await provider.snapshot("NDX", datetime.now(UTC), 1)
        assert fallback is not None
        assert fallback.bid is None
        assert fallback.price is not None
        assert np.isfinite(fallback.price)
        assert snapshot.source == "ibkr"


@pytest.mark.server
@pytest.mark.slow
async def test_one_minute_of_batches_stays_within_ib_pacing(gateway: FakeGateway) -> None:
    overrides = {
        "data_source": {
            "primary": "ibkr",
            "fallback": [],
            "standalone": {
                "ib_port": gateway.port,
                "connect_timeout_s": 5.0,
                "reconnect_backoff_s": 0.2,
            },
        }
    }
    async with running_service(**overrides) as service:
        universe = len(service.predictor.registry.universe) + 1  # and VIX
        started = time.monotonic()
        latencies = []
        for second in range(60):
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
            mark = time.perf_counter()
            response = await service.predictor.predict_batch(bot_batch())
            latencies.append(time.perf_counter() - mark)
            assert len(response.predictions) == 32
            assert {answer.data_source for answer in response.predictions} == {"ibkr"}
            assert all(answer.error is None for answer in response.predictions)
        elapsed = time.monotonic() - started
        health = next(p for p in service.health()["providers"] if p["name"] == "ibkr")

    requests = gateway.historical_requests
    in_window = max(
        sum(1 for other in requests if 0 <= other.at - request.at < 600) for request in requests
    )
    identical_gaps = [
        later.at - earlier.at
        for earlier, later in itertools.combinations(requests, 2)
        if earlier.identity == later.identity
    ]
    print(
        f"\n60 batches of 32 orders in {elapsed:.1f} s: {len(requests)} history requests "
        f"(limit 60 per 600 s; max in any window {in_window}), identical within 15 s: "
        f"{sum(gap < 15 for gap in identical_gaps)}, pacing violations: "
        f"{dict(gateway.referee.violations)}, batch p50 {np.median(latencies) * 1e3:.2f} ms, "
        f"max {max(latencies) * 1e3:.2f} ms"
    )
    assert len(requests) == universe  # one streaming request per symbol, ever
    assert in_window <= 60
    assert all(gap >= 15 for gap in identical_gaps)
    assert not gateway.referee.violations
    assert health["pacing_violations"] == 0
    assert health["historical_requests_total"] == universe
