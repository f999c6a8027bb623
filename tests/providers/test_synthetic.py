"""Tests of the synthetic provider: determinism, no look-ahead, and realistic market structure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from providers.base import BAR_SCHEMA, MarketDataProvider, NoMarketData
from providers.calendar import (
    BAR,
    BARS_PER_SESSION,
    NY,
    is_trading_day,
    last_completed_bar_start,
    next_trading_day,
    session_bar_starts,
)
from providers.synthetic import DEFAULT_SYMBOLS, SyntheticProvider

REPO = Path(__file__).resolve().parents[2]
PRICE_COLUMNS = ["open", "high", "low", "close"]


def ny(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY)


def trading_days(first: date, count: int) -> list[date]:
    days = [first if is_trading_day(first) else next_trading_day(first)]
    while len(days) < count:
        days.append(next_trading_day(days[-1]))
    return days


@pytest.fixture(scope="module")
def provider() -> SyntheticProvider:
    return SyntheticProvider()


@pytest.fixture(scope="module")
def month() -> list[dict[str, pl.DataFrame]]:
    """Twenty consecutive sessions of every default symbol."""
    source = SyntheticProvider(cache_days=32)
    return [source.day_bars(day) for day in trading_days(date(2024, 5, 1), 20)]


def stacked(month: list[dict[str, pl.DataFrame]], symbol: str) -> pl.DataFrame:
    return pl.concat([day[symbol] for day in month])


def session_log_returns(month: list[dict[str, pl.DataFrame]], symbol: str) -> np.ndarray:
    """5-minute log returns inside sessions (overnight gaps left out)."""
    return np.concatenate([np.diff(np.log(day[symbol]["close"].to_numpy())) for day in month])


# -- contract ---------------------------------------------------------------------------------


async def test_implements_the_provider_contract(provider: SyntheticProvider) -> None:
    assert isinstance(provider, MarketDataProvider)
    assert provider.name == "synthetic"
    await provider.start()
    await provider.close()
    health = provider.health()
    assert health["name"] == "synthetic"
    assert health["state"] == "up"
    assert health["seed"] == 8
    assert isinstance(health["days_cached"], int)
    assert provider.symbols == DEFAULT_SYMBOLS


async def test_snapshot_shape_and_metadata(provider: SyntheticProvider) -> None:
    snapshot = await provider.snapshot("SPX", ny(2024, 3, 12, 11, 2), 100)
    assert snapshot.symbol == "SPX"
    assert snapshot.source == "synthetic"
    assert snapshot.bars.schema == pl.Schema(BAR_SCHEMA)
    assert snapshot.bars.height == 100
    assert snapshot.as_of == ny(2024, 3, 12, 10, 55)
    assert snapshot.as_of.tzinfo is UTC
    assert snapshot.bars["start"][-1] == snapshot.as_of
    assert snapshot.last_close == snapshot.bars["close"][-1]
    assert snapshot.bars["start"].is_sorted()
    assert snapshot.bars["start"].n_unique() == 100


async def test_unknown_symbol_has_no_market_data(provider: SyntheticProvider) -> None:
    with pytest.raises(NoMarketData) as excinfo:
        await provider.snapshot("GME", ny(2024, 3, 12, 11, 0), 10)
    assert excinfo.value.provider == "synthetic"
    assert excinfo.value.symbol == "GME"


async def test_symbols_are_case_insensitive(provider: SyntheticProvider) -> None:
    as_of = ny(2024, 3, 12, 11, 0)
    lower = await provider.snapshot("spy", as_of, 10)
    assert lower.symbol == "SPY"
    assert_frame_equal(
        lower.bars, (await provider.snapshot("SPY", as_of, 10)).bars, check_exact=True
    )


async def test_bad_arguments_are_rejected(provider: SyntheticProvider) -> None:
    with pytest.raises(ValueError, match="bars"):
        await provider.snapshot("SPX", ny(2024, 3, 12, 11, 0), 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        await provider.snapshot("SPX", datetime(2024, 3, 12, 11, 0), 10)
    with pytest.raises(ValueError, match="seed"):
        SyntheticProvider(seed=-1)
    with pytest.raises(ValueError, match="symbols"):
        SyntheticProvider(symbols=())
    with pytest.raises(ValueError, match="symbols"):
        SyntheticProvider(symbols="SPX")


# -- determinism ------------------------------------------------------------------------------


async def test_same_seed_gives_identical_bars_in_a_fresh_provider(
    provider: SyntheticProvider,
) -> None:
    as_of = ny(2023, 6, 14, 13, 7)
    for symbol in DEFAULT_SYMBOLS:
        first = await provider.snapshot(symbol, as_of, 120)
        second = await SyntheticProvider(seed=8).snapshot(symbol, as_of, 120)
        assert_frame_equal(first.bars, second.bars, check_exact=True)
        assert first.as_of == second.as_of


async def test_different_seed_gives_different_bars(provider: SyntheticProvider) -> None:
    as_of = ny(2023, 6, 14, 13, 7)
    ours = await provider.snapshot("SPX", as_of, 50)
    theirs = await SyntheticProvider(seed=9).snapshot("SPX", as_of, 50)
    assert not np.allclose(ours.bars["close"].to_numpy(), theirs.bars["close"].to_numpy())


async def test_call_order_and_cache_evictions_do_not_matter() -> None:
    moments = [ny(2021, 2, 3, 10, 0), ny(2024, 9, 18, 15, 1), ny(2022, 7, 7, 12, 33)]
    forward = SyntheticProvider(cache_days=3)
    backward = SyntheticProvider(cache_days=3)
    forward_bars = [(await forward.snapshot("NDX", moment, 200)).bars for moment in moments]
    backward_bars = [
        (await backward.snapshot("NDX", moment, 200)).bars for moment in reversed(moments)
    ]
    for ours, theirs in zip(forward_bars, reversed(backward_bars), strict=True):
        assert_frame_equal(ours, theirs, check_exact=True)


async def test_a_symbols_bars_do_not_depend_on_the_configured_universe(
    provider: SyntheticProvider,
) -> None:
    as_of = ny(2024, 2, 7, 14, 0)
    for symbol in ("AAPL", "QQQ", "VIX", "XSP"):
        alone = await SyntheticProvider(symbols=(symbol,)).snapshot(symbol, as_of, 80)
        assert_frame_equal(
            alone.bars, (await provider.snapshot(symbol, as_of, 80)).bars, check_exact=True
        )


def test_bars_are_identical_across_processes(provider: SyntheticProvider) -> None:
    script = (
        "import json; from datetime import datetime; from providers.calendar import NY; "
        "from providers.synthetic import SyntheticProvider; "
        "as_of = datetime(2025, 1, 8, 12, 0, tzinfo=NY); "
        "snap = SyntheticProvider().snapshot_sync('TSLA', as_of, 90); "
        "print(json.dumps(snap.bars['close'].to_list()))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=True,
        text=True,
    )
    ours = provider.snapshot_sync("TSLA", ny(2025, 1, 8, 12, 0), 90).bars["close"].to_list()
    assert json.loads(result.stdout) == ours


# -- only completed bars ----------------------------------------------------------------------


async def test_a_bar_in_progress_is_excluded(provider: SyntheticProvider) -> None:
    inside = await provider.snapshot("SPX", ny(2024, 3, 12, 9, 59, 59), 10)
    assert inside.as_of == ny(2024, 3, 12, 9, 50)
    on_boundary = await provider.snapshot("SPX", ny(2024, 3, 12, 10, 0), 10)
    assert on_boundary.as_of == ny(2024, 3, 12, 9, 55)
    # The bar that just completed is the same bar seen later: nothing about it leaked early.
    later = await provider.snapshot("SPX", ny(2024, 3, 12, 15, 0), 100)
    assert_frame_equal(
        on_boundary.bars[-1], later.bars.filter(pl.col("start") == on_boundary.as_of)
    )


@pytest.mark.parametrize(
    "as_of",
    [
        ny(2024, 3, 8, 16, 0),  # Friday close
        ny(2024, 3, 8, 23, 30),  # Friday night
        ny(2024, 3, 9, 12, 0),  # Saturday
        ny(2024, 3, 10, 22, 0),  # Sunday (spring-forward day)
        ny(2024, 3, 11, 9, 34),  # Monday before the first bar completes
    ],
)
async def test_nights_and_weekends_end_at_the_previous_sessions_last_bar(
    provider: SyntheticProvider, as_of: datetime
) -> None:
    snapshot = await provider.snapshot("QQQ", as_of, 5)
    assert snapshot.as_of == ny(2024, 3, 8, 15, 55)
    assert snapshot.as_of == datetime(2024, 3, 8, 20, 55, tzinfo=UTC)


@pytest.mark.parametrize(
    ("as_of", "first_bar_utc"),
    [
        (ny(2024, 1, 2, 9, 35), datetime(2024, 1, 2, 14, 30, tzinfo=UTC)),  # EST
        (ny(2024, 7, 1, 9, 35), datetime(2024, 7, 1, 13, 30, tzinfo=UTC)),  # EDT
        (ny(2024, 3, 11, 9, 35), datetime(2024, 3, 11, 13, 30, tzinfo=UTC)),  # first EDT day
        (ny(2024, 11, 4, 9, 35), datetime(2024, 11, 4, 14, 30, tzinfo=UTC)),  # first EST day
    ],
)
async def test_0930_new_york_maps_correctly_in_dst_and_standard_time(
    provider: SyntheticProvider, as_of: datetime, first_bar_utc: datetime
) -> None:
    snapshot = await provider.snapshot("SPX", as_of, 3)
    assert snapshot.as_of == first_bar_utc
    previous = snapshot.bars["start"].to_list()[:2]
    assert [start.astimezone(NY).time().isoformat() for start in previous] == [
        "15:50:00",
        "15:55:00",
    ]


async def test_history_walks_back_across_the_weekend(provider: SyntheticProvider) -> None:
    snapshot = await provider.snapshot("RUT", ny(2024, 3, 11, 9, 40), 10)
    starts = snapshot.bars["start"].to_list()
    assert starts[-2:] == [ny(2024, 3, 11, 9, 30), ny(2024, 3, 11, 9, 35)]
    assert starts[:8] == [ny(2024, 3, 8, 15, 20) + index * BAR for index in range(8)]


async def test_long_histories_agree_with_the_cached_window(provider: SyntheticProvider) -> None:
    as_of = ny(2024, 3, 13, 10, 31)
    long = await provider.snapshot("AAPL", as_of, 500)
    short = await provider.snapshot("AAPL", as_of, 150)
    assert long.bars.height == 500
    assert_frame_equal(long.bars.tail(150), short.bars, check_exact=True)
    assert long.bars["start"].is_sorted()
    assert long.bars["start"].n_unique() == 500


async def test_history_stops_at_the_epoch() -> None:
    source = SyntheticProvider(epoch=date(2020, 1, 4))  # a Saturday: first session Monday
    assert source.first_session == date(2020, 1, 6)
    snapshot = await source.snapshot("SPX", ny(2020, 1, 6, 10, 0), 100)
    assert snapshot.bars.height == 6
    assert snapshot.bars["start"][0] == ny(2020, 1, 6, 9, 30)
    later = await source.snapshot("SPX", ny(2020, 1, 8, 10, 0), 1_000)
    assert later.bars.height == 2 * BARS_PER_SESSION + 6
    with pytest.raises(NoMarketData):
        await source.snapshot("SPX", ny(2020, 1, 6, 9, 34), 10)
    with pytest.raises(NoMarketData):
        await source.snapshot("SPX", ny(2020, 1, 3, 12, 0), 10)


snapshot_times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2026, 6, 1), timezones=st.just(NY)
)


@settings(max_examples=60, deadline=None)
@given(as_of=snapshot_times, bars=st.integers(min_value=1, max_value=400))
def test_snapshots_hold_only_completed_bars(
    provider: SyntheticProvider, as_of: datetime, bars: int
) -> None:
    newest = last_completed_bar_start(as_of)
    if newest < ny(2020, 1, 2, 9, 30):
        with pytest.raises(NoMarketData):
            provider.snapshot_sync("VIX", as_of, bars)
        return
    snapshot = provider.snapshot_sync("VIX", as_of, bars)
    starts = snapshot.bars["start"]
    assert snapshot.as_of == newest
    assert starts[-1] == newest
    assert starts.max() + BAR <= as_of
    assert 1 <= snapshot.bars.height <= bars
    assert starts.is_sorted()
    assert starts.n_unique() == snapshot.bars.height


# -- day_bars and settlement ------------------------------------------------------------------


def test_day_bars_cover_the_session(provider: SyntheticProvider) -> None:
    day = date(2024, 7, 1)
    bars = provider.day_bars(day)
    assert set(bars) == set(DEFAULT_SYMBOLS)
    for frame in bars.values():
        assert frame.schema == pl.Schema(BAR_SCHEMA)
        assert frame.height == BARS_PER_SESSION
        starts = frame["start"].dt.epoch("ns").to_numpy()
        np.testing.assert_array_equal(starts, session_bar_starts(day))


def test_day_bars_are_empty_without_a_session(provider: SyntheticProvider) -> None:
    for day in (date(2024, 7, 6), date(2019, 12, 31)):  # a Saturday; before the epoch
        bars = provider.day_bars(day)
        assert set(bars) == set(DEFAULT_SYMBOLS)
        for frame in bars.values():
            assert frame.is_empty()
            assert frame.schema == pl.Schema(BAR_SCHEMA)


def test_settlement_is_the_sessions_final_close(provider: SyntheticProvider) -> None:
    day = date(2024, 7, 2)
    for symbol, frame in provider.day_bars(day).items():
        assert provider.settlement(symbol, day) == frame["close"][-1]
    as_of_close = provider.snapshot_sync("SPX", ny(2024, 7, 2, 16, 0), 1)
    assert provider.settlement("SPX", day) == as_of_close.last_close
    with pytest.raises(NoMarketData):
        provider.settlement("SPX", date(2024, 7, 6))
    with pytest.raises(NoMarketData):
        provider.settlement("GME", day)


# -- market structure -------------------------------------------------------------------------


def test_ohlc_is_consistent_positive_and_traded(month: list[dict[str, pl.DataFrame]]) -> None:
    for symbol in DEFAULT_SYMBOLS:
        frame = stacked(month, symbol)
        low, high = frame["low"], frame["high"]
        for column in ("open", "close"):
            assert (low <= frame[column]).all(), symbol
            assert (frame[column] <= high).all(), symbol
        assert (low > 0).all(), symbol
        assert (frame["volume"] > 0).all(), symbol
        assert frame.null_count().sum_horizontal().item() == 0
        assert frame.select(pl.col(PRICE_COLUMNS).is_finite().all()).row(0) == (True,) * 4


def test_xsp_is_exactly_spx_over_ten(month: list[dict[str, pl.DataFrame]]) -> None:
    spx, xsp = stacked(month, "SPX"), stacked(month, "XSP")
    for column in PRICE_COLUMNS:
        np.testing.assert_array_equal(xsp[column].to_numpy(), spx[column].to_numpy() / 10)


@pytest.mark.parametrize(("etf", "index", "divisor"), [("SPY", "SPX", 10.0), ("QQQ", "NDX", 41.0)])
def test_etfs_track_their_index(
    month: list[dict[str, pl.DataFrame]], etf: str, index: str, divisor: float
) -> None:
    etf_close = stacked(month, etf)["close"].to_numpy()
    ratio = etf_close * divisor / stacked(month, index)["close"].to_numpy()
    assert np.all(np.abs(ratio - 1.0) < 0.005)
    assert np.std(ratio) > 0  # tracking, not a copy


def test_levels_are_realistic(month: list[dict[str, pl.DataFrame]]) -> None:
    assert (
        4_000 < stacked(month, "SPX")["close"].min() < stacked(month, "SPX")["close"].max() < 8_000
    )
    vix = stacked(month, "VIX")
    assert vix["low"].min() >= 8
    assert vix["high"].max() <= 80


@pytest.mark.parametrize(("symbol", "low", "high"), [("NDX", 0.8, 0.97), ("RUT", 0.65, 0.9)])
def test_indices_correlate_with_spx(
    month: list[dict[str, pl.DataFrame]], symbol: str, low: float, high: float
) -> None:
    correlation = np.corrcoef(session_log_returns(month, "SPX"), session_log_returns(month, symbol))
    assert low < correlation[0, 1] < high


def test_correlations_fall_from_indices_to_single_stocks(
    month: list[dict[str, pl.DataFrame]],
) -> None:
    spx = session_log_returns(month, "SPX")

    def correlation(symbol: str) -> float:
        return float(np.corrcoef(spx, session_log_returns(month, symbol))[0, 1])

    assert correlation("NDX") > 0.7
    assert correlation("NDX") > correlation("RUT") > correlation("AAPL") > correlation("TSLA") > 0.2
    assert session_log_returns(month, "TSLA").std() > 2 * spx.std()


def test_vix_moves_against_spx(month: list[dict[str, pl.DataFrame]]) -> None:
    vix_changes = np.concatenate([np.diff(day["VIX"]["close"].to_numpy()) for day in month])
    correlation = np.corrcoef(session_log_returns(month, "SPX"), vix_changes)[0, 1]
    assert correlation < -0.3


def test_spx_volatility_follows_vix() -> None:
    source = SyntheticProvider(symbols=("SPX", "VIX"), cache_days=8)
    vix_level, realised = [], []
    for day in trading_days(date(2021, 1, 4), 250):
        bars = source.day_bars(day)
        vix_level.append(bars["VIX"]["close"].mean())
        returns = np.diff(np.log(bars["SPX"]["close"].to_numpy()))
        realised.append(returns.std() * np.sqrt(252 * BARS_PER_SESSION) * 100)
    vix, annualised = np.array(vix_level), np.array(realised)
    assert np.corrcoef(vix, annualised)[0, 1] > 0.6
    # Same scale: SPX's realised vol is VIX-sized on average (VIX/100 annualised).
    assert 0.6 < np.median(annualised / vix) < 1.2
    assert vix.min() > 8
    assert vix.max() < 80
    assert np.ptp(vix) > 5  # it does move


def test_sessions_join_up(month: list[dict[str, pl.DataFrame]]) -> None:
    for before, after in zip(month, month[1:], strict=False):
        for symbol in ("SPX", "NDX", "VIX"):
            gap = np.log(after[symbol]["open"][0] / before[symbol]["close"][-1])
            assert abs(gap) < 0.1, symbol


def test_intraday_volatility_is_u_shaped(month: list[dict[str, pl.DataFrame]]) -> None:
    moves = np.stack([np.abs(np.diff(np.log(day["SPX"]["close"].to_numpy()))) for day in month])
    by_bar = moves.mean(axis=0)
    assert by_bar[:6].mean() > 1.2 * by_bar[30:45].mean()
    assert by_bar[-6:].mean() > 1.2 * by_bar[30:45].mean()


def test_unlisted_symbols_get_a_stable_generic_profile() -> None:
    as_of = ny(2024, 4, 3, 12, 0)
    ours = SyntheticProvider(symbols=("IWM",)).snapshot_sync("IWM", as_of, 50)
    theirs = SyntheticProvider(symbols=("SPX", "IWM")).snapshot_sync("IWM", as_of, 50)
    assert_frame_equal(ours.bars, theirs.bars, check_exact=True)
    assert (ours.bars["close"] > 0).all()


def test_hundreds_of_days_stay_in_range() -> None:
    source = SyntheticProvider(cache_days=4)
    spx, vix = [], []
    for day in trading_days(date(2020, 1, 2), 1_600)[::8]:
        spx.append(source.settlement("SPX", day))
        vix.append(source.settlement("VIX", day))
    assert 4_000 < min(spx) < max(spx) < 8_000
    assert 8 <= min(vix) < max(vix) <= 80
    assert source.health()["days_cached"] <= 4


def test_dates_far_apart_are_independent_of_order() -> None:
    far = SyntheticProvider()
    late = far.settlement("SPX", date(2026, 5, 1))
    early = far.settlement("SPX", date(2020, 3, 2))
    fresh = SyntheticProvider()
    assert fresh.settlement("SPX", date(2020, 3, 2)) == early
    assert fresh.settlement("SPX", date(2026, 5, 1)) == late
