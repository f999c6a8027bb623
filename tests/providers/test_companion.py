"""The companion provider against a real local HTTP service implementing SPEC §6's contract."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import falcon.testing
import msgspec
import pytest
from polars.testing import assert_frame_equal

from inference.app import create_app
from inference.config import load_settings
from providers.base import NoMarketData, ProviderError
from providers.calendar import NY
from providers.companion import CompanionProvider
from providers.synthetic import SyntheticProvider
from tests.fakes.companion import CompanionService, SilentServer
from tests.fixtures import free_port
from tests.providers.conftest import bot_batch

pytestmark = pytest.mark.server

#: A Wednesday, 11:02:30 in New York: the 11:00 bar is open, 10:55 is the newest completed.
MIDSESSION = datetime(2024, 3, 6, 11, 2, 30, tzinfo=NY).astimezone(UTC)


@pytest.fixture
def pinned() -> CompanionService:
    service = CompanionService(clock=lambda: MIDSESSION)
    service.start()
    yield service  # type: ignore[misc]
    service.stop()


async def test_bars_follow_the_contract(pinned: CompanionService) -> None:
    provider = CompanionProvider(pinned.url, timeout=2.0)
    await provider.start()
    try:
        snapshot = await provider.snapshot("spx", MIDSESSION, 100)
        expected = SyntheticProvider(symbols=("SPX",)).snapshot_sync("SPX", MIDSESSION, 100)
        assert snapshot.source == "companion"
        assert snapshot.symbol == "SPX"
        # The service sent the open 11:00 bar too; it is not complete, so it is not used.
        assert snapshot.as_of == datetime(2024, 3, 6, 10, 55, tzinfo=NY)
        assert_frame_equal(snapshot.bars, expected.bars)
        assert pinned.hits["/api/market_data/SPX/bars"] == 1
        # An as-of in the past keeps only the bars completed by then.
        earlier = datetime(2024, 3, 6, 10, 31, tzinfo=NY)
        assert (await provider.snapshot("SPX", earlier, 100)).as_of == datetime(
            2024, 3, 6, 10, 25, tzinfo=NY
        )
        assert provider.health()["state"] == "up"
    finally:
        await provider.close()


async def test_unknown_symbol_is_no_data(pinned: CompanionService) -> None:
    provider = CompanionProvider(pinned.url, timeout=2.0)
    with pytest.raises(NoMarketData):
        await provider.snapshot("ZZZZ", MIDSESSION, 100)
    await provider.close()


async def test_times_without_offset_are_refused(pinned: CompanionService) -> None:
    pinned.naive_times = True
    provider = CompanionProvider(pinned.url, timeout=2.0)
    with pytest.raises(ProviderError, match="no UTC offset"):
        await provider.snapshot("SPX", MIDSESSION, 100)
    await provider.close()


async def test_server_errors_are_retried_within_the_deadline(pinned: CompanionService) -> None:
    pinned.fail_next = 2
    provider = CompanionProvider(pinned.url, timeout=2.0, retry_attempts=3, retry_backoff_s=0.01)
    assert (await provider.snapshot("SPX", MIDSESSION, 10)).source == "companion"
    assert pinned.hits["/api/market_data/SPX/bars"] == 3
    pinned.fail_next = 10
    with pytest.raises(ProviderError, match=r"after 4 attempt\(s\): HTTP 503"):
        await provider.snapshot("SPX", MIDSESSION, 10)
    assert pinned.hits["/api/market_data/SPX/bars"] == 3 + 4  # the first try and 3 retries
    assert provider.health()["state"] == "down"
    await provider.close()


async def test_a_silent_service_costs_at_most_the_timeout() -> None:
    silent = SilentServer()
    provider = CompanionProvider(silent.url, timeout=0.3, retry_attempts=3)
    try:
        mark = time.monotonic()
        with pytest.raises(ProviderError, match="no answer within 0.3 s"):
            await provider.snapshot("SPX", MIDSESSION, 100)
        assert time.monotonic() - mark < 0.3 + 0.3  # the deadline, plus scheduling slack
    finally:
        await provider.close()
        silent.close()


async def test_quote_and_health_endpoints(pinned: CompanionService) -> None:
    provider = CompanionProvider(pinned.url, timeout=2.0)
    quote = await provider.quote("SPX")
    assert quote is not None
    assert (quote.bid, quote.ask, quote.source) == (None, None, "companion")
    assert quote.price == quote.last
    assert quote.time == MIDSESSION
    assert await provider.quote("ZZZZ") is None
    assert (await provider.probe())["ib_connected"] is True
    await provider.close()


@pytest.mark.slow
async def test_dead_companion_opens_its_circuit_and_the_fallback_answers() -> None:
    silent = SilentServer()
    settings = load_settings(
        data_source={
            "primary": "companion",
            "fallback": ["synthetic"],
            "companion": {"base_url": silent.url, "timeout": 0.5, "retry_attempts": 2},
            # Start-up warms the pipeline (9 symbols, 9 failures); the first batch trips it.
            "circuit": {"failure_threshold": 12, "cooldown_s": 60},
        }
    )
    try:
        async with falcon.testing.ASGIConductor(create_app(settings)) as conductor:
            durations = []
            for _ in range(3):
                mark = time.monotonic()
                result = await conductor.simulate_post(
                    "/predict/batch",
                    body=msgspec.json.encode({"requests": bot_batch()}),
                    headers={"Content-Type": "application/json"},
                )
                durations.append(time.monotonic() - mark)
                assert result.status_code == 200
                predictions = result.json["predictions"]
                assert {answer["data_source"] for answer in predictions} == {"synthetic"}
                assert not any(answer["stale"] for answer in predictions)
            # The first batch waited for the companion's timeout, and not longer; then the
            # circuit was open and the companion was not asked at all.
            assert 0.5 - 0.05 <= durations[0] < 0.5 + 0.4
            assert max(durations[1:]) < 0.3

            health = (await conductor.simulate_get("/health")).json
            companion = next(p for p in health["providers"] if p["name"] == "companion")
            assert companion["circuit"] == "open"
            assert companion["state"] == "down"
            assert "no answer within 0.5 s" in companion["last_error"]
            synthetic = next(p for p in health["providers"] if p["name"] == "synthetic")
            assert synthetic["circuit"] == "closed"

            # With the circuit open the companion is not even asked: answers are immediate.
            mark = time.monotonic()
            market = await conductor.simulate_get("/market/SPX")
            assert time.monotonic() - mark < 0.3
            assert (market.json["source"], market.json["stale"]) == ("synthetic", False)
    finally:
        silent.close()


async def test_refused_connection_fails_fast() -> None:
    provider = CompanionProvider(
        f"http://127.0.0.1:{free_port()}", timeout=2.0, retry_attempts=2, retry_backoff_s=0.01
    )
    mark = time.monotonic()
    with pytest.raises(ProviderError, match="ConnectError"):
        await provider.snapshot("SPX", MIDSESSION, 10)
    assert time.monotonic() - mark < 1.0
    await provider.close()
