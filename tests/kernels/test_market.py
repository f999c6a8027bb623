"""Tests of the market and VIX kernels against the reference, plus their wrappers."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.market import market_block, snapshot_arrays, vix_block
from kernels.reference import market_block_reference, vix_features
from kernels.registry import MARKET_INDICATORS, VIX_FEATURES
from tests.kernels.helpers import assert_row_matches, csr

NS = 10**9
BAR = 300 * NS
BASE_NS = int(datetime(2024, 3, 8, 14, 30, tzinfo=UTC).timestamp()) * NS

Series = tuple[list[int], list[float], list[float], list[float]]

# Regular bars, a session gap, a weekend, and irregular spacings a flaky feed produces.
_GAPS_S = [300, 300, 300, 300, 0, 1, 299, 301, 450, 17 * 3600 + 1800, 65 * 3600 + 1800]
_PRICE = st.floats(min_value=0.01, max_value=50_000.0, allow_nan=False)


@st.composite
def bar_series(draw: st.DrawFn, max_bars: int = 25) -> Series:
    """Draw one symbol's bars: short histories, flat prices, gaps, NaN and zero closes."""
    n = draw(st.integers(0, max_bars))
    gaps = draw(st.lists(st.sampled_from(_GAPS_S), min_size=n, max_size=n))
    starts = [BASE_NS + sum(gaps[: k + 1]) * NS for k in range(n)]
    kind = draw(st.sampled_from(["random", "flat", "walk"]))
    if kind == "flat":
        closes = [draw(_PRICE)] * n
    elif kind == "walk":
        level = draw(_PRICE)
        steps = draw(st.lists(st.floats(-0.02, 0.02), min_size=n, max_size=n))
        closes = []
        for step in steps:
            level *= 1 + step
            closes.append(level)
    else:
        closes = draw(st.lists(_PRICE, min_size=n, max_size=n))
    holes = (
        draw(
            st.lists(
                st.sampled_from([None, None, None, None, math.nan, 0.0]), min_size=n, max_size=n
            )
        )
        if draw(st.booleans())
        else [None] * n
    )
    closes = [close if hole is None else hole for close, hole in zip(closes, holes, strict=True)]
    spreads = draw(
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, math.nan]), min_size=n, max_size=n)
    )
    highs = [close + spread for close, spread in zip(closes, spreads, strict=True)]
    lows = [close - spread / 2 for close, spread in zip(closes, spreads, strict=True)]
    return starts, highs, lows, closes


@st.composite
def cutoff(draw: st.DrawFn, series: list[Series]) -> int:
    """Draw a decision time: on a bar's completion instant, just before it, or anywhere."""
    starts = [start for one in series for start in one[0]]
    on_a_bar = draw(st.booleans())
    if starts and on_a_bar:
        start = draw(st.sampled_from(starts))
        return start + BAR + draw(st.sampled_from([-1, 0, 1, 7 * NS]))
    last = max(starts, default=BASE_NS)
    return draw(st.integers(BASE_NS - BAR, last + 2 * BAR))


def _block_matches(series: list[Series], t_ns: int) -> None:
    starts, high, low, close, offsets = csr(series)
    actual = market_block(starts, high, low, close, offsets, t_ns)
    expected = market_block_reference(starts, high, low, close, offsets, t_ns)
    assert actual.shape == (len(series), len(MARKET_INDICATORS))
    for j in range(len(series)):
        assert_row_matches(
            actual[j],
            dict(zip(MARKET_INDICATORS, expected[j], strict=True)),
            MARKET_INDICATORS,
            f"symbol {j}, t={t_ns}",
        )
    assert not np.isinf(actual).any()


@settings(max_examples=200, deadline=None)
@given(data=st.data(), series=st.lists(bar_series(), min_size=0, max_size=4))
def test_market_block_matches_reference(data: st.DataObject, series: list[Series]) -> None:
    _block_matches(series, data.draw(cutoff(series)))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), series=st.lists(bar_series(max_bars=130), min_size=1, max_size=3))
def test_market_block_long_histories_match_reference(
    data: st.DataObject, series: list[Series]
) -> None:
    # Past 100 bars the RSI window slides; short histories never reach that branch.
    _block_matches(series, data.draw(cutoff(series)))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), series=bar_series(max_bars=30))
def test_future_bars_do_not_change_features(data: st.DataObject, series: Series) -> None:
    starts, highs, lows, closes = series
    t_ns = data.draw(cutoff([series]))
    before = market_block(*csr([series]), t_ns)
    vix_before = vix_block(*csr([series])[0:4:3], t_ns)
    # A bar that starts within 5 minutes of t is not complete yet, whatever its prices.
    future_start = max([t_ns - BAR + 1, *starts])
    extended: Series = (
        [*starts, future_start],
        [*highs, 1e6],
        [*lows, 0.001],
        [*closes, 99_999.0],
    )
    after = market_block(*csr([extended]), t_ns)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(vix_before, vix_block(*csr([extended])[0:4:3], t_ns))


def test_market_block_known_values() -> None:
    closes = [100.0 + k for k in range(25)]
    series: Series = (
        [BASE_NS + k * BAR for k in range(25)],
        [close + 1 for close in closes],
        [close - 1 for close in closes],
        closes,
    )
    t_ns = BASE_NS + 25 * BAR
    row = market_block(*csr([series]), t_ns)[0]
    assert row[0] == 124.0
    assert row[1] == pytest.approx(sum(closes[-20:]) / 20)
    assert row[2] == pytest.approx(124.0 / 119.0 - 1)
    assert row[4] == 100.0  # only gains: average loss is 0
    assert row[5] == pytest.approx((124.0 - 104.0) / (125.0 - 104.0))
    # One bar less is complete one nanosecond earlier.
    assert market_block(*csr([series]), t_ns - 1)[0][0] == 123.0


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    series=bar_series(max_bars=25),
    bounds=st.sampled_from([(15.0, 20.0, 25.0), (12.0, 18.0, 30.0)]),
)
def test_vix_block_matches_reference(
    data: st.DataObject, series: Series, bounds: tuple[float, float, float]
) -> None:
    starts, _, _, closes = series
    t_ns = data.draw(cutoff([series]))
    actual = vix_block(
        np.array(starts, dtype=np.int64), np.array(closes, dtype=np.float64), t_ns, bounds
    )
    expected = vix_features(starts, closes, t_ns, bounds)
    assert_row_matches(actual, expected, VIX_FEATURES, f"t={t_ns}")


@pytest.mark.parametrize(
    ("vix", "regime"),
    [(14.99, "low"), (15.0, "normal"), (19.99, "normal"), (20.0, "elevated"), (25.0, "high")],
)
def test_vix_regime_is_left_closed(vix: float, regime: str) -> None:
    out = vix_block(np.array([BASE_NS], dtype=np.int64), np.array([vix]), BASE_NS + BAR)
    one_hot = dict(zip(VIX_FEATURES[3:], out[3:], strict=True))
    assert one_hot == {
        f"vix_regime_{name}": float(name == regime)
        for name in ("low", "normal", "elevated", "high")
    }


def test_vix_regime_is_missing_without_vix() -> None:
    out = vix_block(np.array([BASE_NS], dtype=np.int64), np.array([math.nan]), BASE_NS + BAR)
    assert np.isnan(out).all()


def _frame(starts_ns: list[int], closes: list[float | None], unit: str = "ns") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "start": pl.Series(starts_ns, dtype=pl.Int64)
            .cast(pl.Datetime("ns", "UTC"))
            .dt.cast_time_unit(unit),  # type: ignore[arg-type]
            "open": closes,
            "high": closes,
            "low": closes,
            "close": closes,
            "volume": [1.0] * len(closes),
        }
    )


def test_snapshot_arrays_builds_csr() -> None:
    frames = [
        _frame([BASE_NS, BASE_NS + BAR], [1.0, 2.0]),
        _frame([], []),
        _frame([BASE_NS], [None], unit="us"),
    ]
    starts, high, low, close, offsets = snapshot_arrays(frames)
    assert offsets.tolist() == [0, 2, 2, 3]
    assert starts.tolist() == [BASE_NS, BASE_NS + BAR, BASE_NS]
    assert close[:2].tolist() == [1.0, 2.0]
    assert math.isnan(close[2])
    for array in (starts, high, low, close, offsets):
        assert array.flags.c_contiguous
        assert array.flags.writeable
    block = market_block(starts, high, low, close, offsets, BASE_NS + 2 * BAR)
    assert block[:, 0].tolist()[:1] == [2.0]


def test_snapshot_arrays_of_nothing() -> None:
    starts, high, low, close, offsets = snapshot_arrays([])
    assert offsets.tolist() == [0]
    assert market_block(starts, high, low, close, offsets, BASE_NS).shape == (0, 6)


def test_snapshot_arrays_names_bad_frames() -> None:
    with pytest.raises(ValueError, match=r"frames\[1\]: missing column\(s\) close"):
        snapshot_arrays([_frame([BASE_NS], [1.0]), _frame([BASE_NS], [1.0]).drop("close")])
    bad_start = _frame([BASE_NS], [1.0]).with_columns(pl.col("start").cast(pl.Int64))
    with pytest.raises(ValueError, match=r"frames\[0\].start: expected Datetime"):
        snapshot_arrays([bad_start])


def _good_bars() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    starts = BASE_NS + np.arange(4, dtype=np.int64) * BAR
    prices = np.linspace(10.0, 13.0, 4)
    return starts, prices + 1, prices - 1, prices, np.array([0, 2, 4], dtype=np.int64)


@pytest.mark.parametrize(
    ("position", "bad", "message"),
    [
        (0, lambda a: a.astype(np.float64), "starts_ns: expected dtype int64"),
        (1, lambda a: a.astype(np.float32), "high: expected dtype float64"),
        (2, lambda a: a[:3], "low: expected 4 rows"),
        (3, lambda a: np.repeat(a, 2)[::2], "close: array must be C-contiguous"),
        (3, lambda a: a.reshape(2, 2), "close: expected a 1-D array"),
        (4, lambda a: a.astype(np.int32), "offsets: expected dtype int64"),
        (4, lambda a: np.array([0, 2, 3], dtype=np.int64), "offsets: must start at 0"),
        (4, lambda a: np.array([0, 3, 2, 4], dtype=np.int64), "offsets: decreases"),
        (0, lambda a: a[::-1].copy(), "starts_ns: bars of symbol 0 are not sorted"),
        (1, lambda a: a.tolist(), "high: expected a numpy array"),
    ],
)
def test_market_block_names_bad_argument(position: int, bad: object, message: str) -> None:
    arrays = list(_good_bars())
    arrays[position] = bad(arrays[position])  # type: ignore[operator]
    starts, high, low, close, offsets = arrays
    with pytest.raises(ValueError, match=message):
        market_block(starts, high, low, close, offsets, BASE_NS + 10 * BAR)


def test_vix_block_names_bad_argument() -> None:
    starts, _, _, close, _ = _good_bars()
    with pytest.raises(ValueError, match="close: expected 4 rows"):
        vix_block(starts, close[:2], BASE_NS)
    with pytest.raises(ValueError, match="starts_ns: expected dtype int64"):
        vix_block(starts.astype(np.uint64), close, BASE_NS)
    with pytest.raises(ValueError, match="starts_ns: VIX bars are not sorted"):
        vix_block(starts[::-1].copy(), close, BASE_NS)
    with pytest.raises(ValueError, match="bounds: expected 3 values"):
        vix_block(starts, close, BASE_NS, (1.0, 2.0))  # type: ignore[arg-type]
