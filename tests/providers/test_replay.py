"""The replay provider: bar files in, the same snapshots (and predictions) on every run."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from providers.base import BAR_SCHEMA, NoMarketData, ProviderError
from providers.calendar import NY, session_open
from providers.replay import ReplayProvider, read_bars, write_bars
from providers.synthetic import DEFAULT_SYMBOLS, SyntheticProvider
from tests.providers.conftest import bot_batch, running_service

DAY = date(2024, 3, 6)


def recorded(symbol: str = "SPX", bars: int = 156) -> pl.DataFrame:
    """The simulator's bars of DAY and the session before."""
    end = session_open(DAY) + timedelta(hours=7)
    return SyntheticProvider(symbols=DEFAULT_SYMBOLS).snapshot_sync(symbol, end, bars).bars


def test_parquet_and_csv_read_back_the_same_bars(tmp_path: Path) -> None:
    frame = recorded()
    parquet = read_bars(write_bars(tmp_path / "p", "spx", frame, "parquet"))
    csv = read_bars(write_bars(tmp_path / "c", "SPX", frame, "csv"))
    assert (tmp_path / "p" / "SPX.parquet").is_file()
    assert_frame_equal(parquet, frame)
    assert_frame_equal(csv, frame)
    assert dict(csv.schema) == BAR_SCHEMA


def test_epoch_seconds_and_other_column_names(tmp_path: Path) -> None:
    frame = recorded(bars=10)
    path = tmp_path / "VIX.csv"
    pl.DataFrame(
        {
            "timestamp": frame["start"].dt.epoch("s"),
            "Open": frame["open"],
            "High": frame["high"],
            "Low": frame["low"],
            "Close": frame["close"],
        }
    ).write_csv(path)
    bars = read_bars(path)
    assert_frame_equal(bars.drop("volume"), frame.drop("volume"))
    assert bars["volume"].is_nan().all()  # optional, and missing is NaN, never invented


def test_naive_times_are_refused(tmp_path: Path) -> None:
    frame = recorded(bars=5)
    (tmp_path / "SPX.csv").write_text(
        "start,open,high,low,close\n2024-03-06T09:30:00,1,2,0.5,1.5\n"
    )
    with pytest.raises(ProviderError, match="has no UTC offset"):
        read_bars(tmp_path / "SPX.csv")
    frame.with_columns(pl.col("start").dt.replace_time_zone(None)).write_parquet(
        tmp_path / "NDX.parquet"
    )
    with pytest.raises(ProviderError, match="has no time zone"):
        read_bars(tmp_path / "NDX.parquet")


def test_bad_folders_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="does not exist"):
        ReplayProvider(tmp_path / "missing").load()
    with pytest.raises(ProviderError, match="no bar files"):
        ReplayProvider(tmp_path).load()
    (tmp_path / "SPX.csv").write_text("start,open,close\n2024-03-06T09:30:00Z,1,1\n")
    with pytest.raises(ProviderError, match=r"lacks columns \['high', 'low'\]"):
        ReplayProvider(tmp_path).load()


async def test_snapshots_never_look_ahead(tmp_path: Path) -> None:
    write_bars(tmp_path, "SPX", recorded())
    provider = ReplayProvider(tmp_path, ["SPX"])
    await provider.start()
    at_ten = datetime(2024, 3, 6, 10, 0, tzinfo=NY)
    snapshot = await provider.snapshot("SPX", at_ten, 20)
    assert snapshot.as_of == datetime(2024, 3, 6, 9, 55, tzinfo=NY)  # 10:00 bar not complete
    assert snapshot.bars.height == 20
    assert snapshot.source == "replay"
    later = await provider.snapshot("SPX", at_ten + timedelta(seconds=299), 20)
    assert later.as_of == snapshot.as_of
    with pytest.raises(NoMarketData):
        await provider.snapshot("SPX", datetime(2024, 3, 5, 9, 34, tzinfo=NY), 20)
    with pytest.raises(NoMarketData):
        await provider.snapshot("QQQ", at_ten, 20)
    assert provider.health()["symbols"]["SPX"]["bars"] == 156
    assert provider.sessions() == [date(2024, 3, 5), DAY]


@pytest.mark.slow
async def test_the_same_replayed_day_gives_identical_predictions(tmp_path: Path) -> None:
    for symbol in DEFAULT_SYMBOLS:
        write_bars(tmp_path, symbol, recorded(symbol), "csv" if symbol == "VIX" else "parquet")
    morning = datetime(2024, 3, 6, 10, 2, 30, tzinfo=NY).astimezone(UTC)
    afternoon = datetime(2024, 3, 6, 14, 47, 5, tzinfo=NY).astimezone(UTC)
    orders = bot_batch(morning) + bot_batch(afternoon)[:20]
    overrides = {"data_source": {"primary": "replay", "replay": {"path": str(tmp_path)}}}

    runs = []
    for _ in range(2):
        async with running_service(**overrides) as service:
            response = await service.predictor.predict_batch(orders, share_market_data=False)
        runs.append([msgspec.structs.asdict(answer) for answer in response.predictions])

    first, second = runs
    for answer in first + second:
        answer.pop("timestamp")  # when the answer was made, not what it says
    assert first == second
    assert {answer["data_source"] for answer in first} == {"replay"}
    assert not any(answer["stale"] or answer.get("error") for answer in first)
    assert {answer["data_as_of"] for answer in first} == {
        datetime(2024, 3, 6, 9, 55, tzinfo=NY),
        datetime(2024, 3, 6, 14, 40, tzinfo=NY),
    }
