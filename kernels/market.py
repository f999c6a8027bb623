"""Numba kernels for per-symbol market indicators and VIX features over completed 5-minute bars."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
from numba import njit

from kernels._checks import F8, I8, check_array
from kernels.registry import MARKET_INDICATORS, VIX_FEATURES

_NAN = math.nan
#: A bar stamped at its start is complete 5 minutes later; only complete bars are used.
BAR_NS = 300 * 1_000_000_000
_WINDOW = 20
_MOMENTUM_LAG = 5
_RSI_PERIOD = 14
_RSI_LOOKBACK = 100
_N_INDICATORS = len(MARKET_INDICATORS)
_N_VIX = len(VIX_FEATURES)

_OK = -1
_BAD_OFFSETS = 0
_BAD_ORDER = 1


@njit(cache=True, nogil=True, error_model="numpy")
def _div(numerator: float, denominator: float) -> float:
    # A zero denominator means "undefined" for every ratio we compute, never infinity.
    if denominator == 0.0:
        return _NAN
    return numerator / denominator


@njit(cache=True, nogil=True, error_model="numpy")
def _completed(starts_ns: np.ndarray, lo: int, hi: int, t_ns: int) -> int:
    # Binary search for the end of the completed bars in [lo, hi): start + 5 min <= t.
    cutoff = t_ns - BAR_NS
    while lo < hi:
        mid = (lo + hi) // 2
        if starts_ns[mid] <= cutoff:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True, error_model="numpy")
def _mean_last(values: np.ndarray, end: int, count: int) -> float:
    total = 0.0
    for k in range(end - count, end):
        total += values[k]
    return total / count


@njit(cache=True, nogil=True, error_model="numpy")
def _volatility(close: np.ndarray, end: int) -> float:
    # Two-pass sample std of the last 20 one-bar simple returns: the one-pass formula loses
    # all precision when returns are nearly equal. PERF: the returns are recomputed in the
    # second pass rather than stored, which avoids a heap allocation per symbol.
    total = 0.0
    for bar in range(end - _WINDOW, end):
        total += _div(close[bar], close[bar - 1]) - 1.0
    mean = total / _WINDOW
    squares = 0.0
    for bar in range(end - _WINDOW, end):
        squares += (_div(close[bar], close[bar - 1]) - 1.0 - mean) ** 2
    return math.sqrt(squares / (_WINDOW - 1))


@njit(cache=True, nogil=True, error_model="numpy")
def _gain_loss(change: float) -> tuple[float, float]:
    # An explicit NaN keeps a missing close from silently counting as "no move".
    if math.isnan(change):
        return _NAN, _NAN
    return max(change, 0.0), max(-change, 0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _rsi(close: np.ndarray, begin: int, end: int) -> float:
    start = max(begin, end - _RSI_LOOKBACK)
    alpha = 1.0 / _RSI_PERIOD
    avg_gain, avg_loss = _gain_loss(close[start + 1] - close[start])
    for k in range(start + 2, end):
        gain, loss = _gain_loss(close[k] - close[k - 1])
        avg_gain = (1.0 - alpha) * avg_gain + alpha * gain
        avg_loss = (1.0 - alpha) * avg_loss + alpha * loss
    if math.isnan(avg_gain) or math.isnan(avg_loss):
        return _NAN
    if avg_loss == 0.0:
        return 100.0
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


@njit(cache=True, nogil=True, error_model="numpy")
def _price_position(high: np.ndarray, low: np.ndarray, last_close: float, end: int) -> float:
    lowest = math.inf
    highest = -math.inf
    for k in range(end - _WINDOW, end):
        if math.isnan(low[k]) or math.isnan(high[k]):
            return _NAN
        lowest = min(lowest, low[k])
        highest = max(highest, high[k])
    return _div(last_close - lowest, highest - lowest)


@njit(cache=True, nogil=True, error_model="numpy")
def _indicators(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, begin: int, end: int, row: np.ndarray
) -> None:
    count = end - begin
    for k in range(_N_INDICATORS):
        row[k] = _NAN
    if count == 0:
        return
    last_close = close[end - 1]
    row[0] = last_close
    if count >= _WINDOW:
        row[1] = _mean_last(close, end, _WINDOW)
        row[5] = _price_position(high, low, last_close, end)
    if count > _MOMENTUM_LAG:
        row[2] = _div(last_close, close[end - 1 - _MOMENTUM_LAG]) - 1.0
    if count > _WINDOW:
        row[3] = _volatility(close, end)
    if count > _RSI_PERIOD:
        row[4] = _rsi(close, begin, end)
    for k in range(_N_INDICATORS):
        if not math.isfinite(row[k]):
            row[k] = _NAN


@njit(cache=True, nogil=True, error_model="numpy")
def _market_block_kernel(
    starts_ns: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    offsets: np.ndarray,
    t_ns: int,
) -> tuple[np.ndarray, int, int]:
    n_symbols = offsets.shape[0] - 1
    out = np.empty((n_symbols, _N_INDICATORS), dtype=np.float64)
    for j in range(n_symbols):
        begin = offsets[j]
        end_all = offsets[j + 1]
        if begin > end_all:
            return out, j, _BAD_OFFSETS
        # PERF: checking order costs one compare per bar, far less than a wrong answer
        # from a binary search over unsorted starts.
        for k in range(begin + 1, end_all):
            if starts_ns[k] < starts_ns[k - 1]:
                return out, j, _BAD_ORDER
        end = _completed(starts_ns, begin, end_all, t_ns)
        _indicators(high, low, close, begin, end, out[j])
    return out, _OK, _OK


@njit(cache=True, nogil=True, error_model="numpy")
def _vix_block_kernel(
    starts_ns: np.ndarray,
    close: np.ndarray,
    t_ns: int,
    bound_low: float,
    bound_normal: float,
    bound_elevated: float,
) -> tuple[np.ndarray, int]:
    out = np.full(_N_VIX, _NAN, dtype=np.float64)
    n = starts_ns.shape[0]
    for k in range(1, n):
        if starts_ns[k] < starts_ns[k - 1]:
            return out, _BAD_ORDER
    end = _completed(starts_ns, 0, n, t_ns)
    if end == 0:
        return out, _OK
    vix = close[end - 1]
    out[0] = vix
    if end >= _WINDOW:
        out[1] = _mean_last(close, end, _WINDOW)
    if end >= 2:
        out[2] = _div(vix, close[end - 2]) - 1.0
    if not math.isnan(vix):
        out[3] = 1.0 if vix < bound_low else 0.0
        out[4] = 1.0 if bound_low <= vix < bound_normal else 0.0
        out[5] = 1.0 if bound_normal <= vix < bound_elevated else 0.0
        out[6] = 1.0 if vix >= bound_elevated else 0.0
    for k in range(_N_VIX):
        if not math.isfinite(out[k]):
            out[k] = _NAN
    return out, _OK


def market_block(
    starts_ns: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    offsets: np.ndarray,
    t_ns: int,
) -> np.ndarray:
    """Compute the market indicators of several symbols at decision time ``t_ns``.

    Bars are concatenated per symbol (CSR layout): symbol ``j`` owns rows
    ``offsets[j]:offsets[j + 1]``, sorted by start ascending. Only bars with
    ``start + 5 min <= t_ns`` are used; later bars are ignored even when present.

    Args:
        starts_ns: int64 (m,) bar starts, UTC epoch nanoseconds.
        high: float64 (m,) bar highs.
        low: float64 (m,) bar lows.
        close: float64 (m,) bar closes.
        offsets: int64 (n_symbols + 1,) row offsets, first 0, last m, non-decreasing.
        t_ns: Decision time, UTC epoch nanoseconds.

    Returns:
        float64 (n_symbols, 6) in ``MARKET_INDICATORS`` order; every value finite or NaN.

    Raises:
        ValueError: Naming the argument with a bad dtype, shape, length, contiguity or order.
    """
    check_array("starts_ns", starts_ns, I8)
    m = starts_ns.shape[0]
    check_array("high", high, F8, length=m)
    check_array("low", low, F8, length=m)
    check_array("close", close, F8, length=m)
    check_array("offsets", offsets, I8)
    if offsets.shape[0] == 0 or offsets[0] != 0 or offsets[-1] != m:
        raise ValueError(f"offsets: must start at 0 and end at {m} (the number of bars)")
    out, symbol, problem = _market_block_kernel(starts_ns, high, low, close, offsets, int(t_ns))
    if symbol != _OK:
        if problem == _BAD_OFFSETS:
            raise ValueError(f"offsets: decreases at symbol {symbol}")
        raise ValueError(f"starts_ns: bars of symbol {symbol} are not sorted by start")
    result: np.ndarray = out
    return result


def vix_block(
    starts_ns: np.ndarray,
    close: np.ndarray,
    t_ns: int,
    bounds: tuple[float, float, float] = (15.0, 20.0, 25.0),
) -> np.ndarray:
    """Compute the VIX level, mean, change and regime at decision time ``t_ns``.

    Args:
        starts_ns: int64 (m,) VIX bar starts, UTC epoch nanoseconds, ascending.
        close: float64 (m,) VIX closes.
        t_ns: Decision time, UTC epoch nanoseconds; only bars complete by then are used.
        bounds: Left-closed regime bounds: low < b0 <= normal < b1 <= elevated < b2 <= high.

    Returns:
        float64 (7,) in ``VIX_FEATURES`` order; the regime one-hot is NaN when VIX is.

    Raises:
        ValueError: Naming the argument with a bad dtype, shape, length, contiguity or order.
    """
    check_array("starts_ns", starts_ns, I8)
    check_array("close", close, F8, length=starts_ns.shape[0])
    if len(bounds) != 3:
        raise ValueError(f"bounds: expected 3 values, got {len(bounds)}")
    out, problem = _vix_block_kernel(
        starts_ns, close, int(t_ns), float(bounds[0]), float(bounds[1]), float(bounds[2])
    )
    if problem != _OK:
        raise ValueError("starts_ns: VIX bars are not sorted by start")
    result: np.ndarray = out
    return result


_BAR_COLUMNS = ("high", "low", "close")


def _frame_arrays(position: int, frame: pl.DataFrame) -> tuple[np.ndarray, ...]:
    missing = [name for name in ("start", *_BAR_COLUMNS) if name not in frame.columns]
    if missing:
        raise ValueError(f"frames[{position}]: missing column(s) {', '.join(missing)}")
    start = frame.get_column("start")
    if not isinstance(start.dtype, pl.Datetime):
        raise ValueError(f"frames[{position}].start: expected Datetime, got {start.dtype}")
    if start.null_count():
        raise ValueError(f"frames[{position}].start: has null values")
    if start.dtype.time_unit != "ns":
        start = start.dt.cast_time_unit("ns")
    arrays = [start.to_physical().to_numpy()]
    for name in _BAR_COLUMNS:
        # Nulls become NaN here: missing prices stay missing through every kernel.
        arrays.append(frame.get_column(name).cast(pl.Float64).to_numpy())
    return tuple(arrays)


def snapshot_arrays(
    frames: Sequence[pl.DataFrame],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Build the CSR bar arrays :func:`market_block` reads from one frame per symbol.

    Args:
        frames: Bars per symbol with columns ``start`` (Datetime, UTC), ``high``, ``low``,
            ``close``, each sorted by ``start`` ascending.

    Returns:
        ``(starts_ns, high, low, close, offsets)``: C-contiguous, writable arrays.

    Raises:
        ValueError: Naming the frame and column that is missing, mistyped or has null starts.
    """
    # PERF: to_numpy() is zero-copy for null-free numeric columns; the one concatenate
    # per column is the only copy.
    per_frame = [_frame_arrays(position, frame) for position, frame in enumerate(frames)]
    offsets = np.zeros(len(per_frame) + 1, dtype=np.int64)
    np.cumsum([arrays[0].shape[0] for arrays in per_frame], out=offsets[1:])
    if not per_frame:
        empty_f8 = np.empty(0, dtype=np.float64)
        return np.empty(0, dtype=np.int64), empty_f8, empty_f8.copy(), empty_f8.copy(), offsets
    starts_ns, high, low, close = (
        np.concatenate([arrays[k] for arrays in per_frame]) for k in range(4)
    )
    return (
        starts_ns.astype(np.int64, copy=False),
        high.astype(np.float64, copy=False),
        low.astype(np.float64, copy=False),
        close.astype(np.float64, copy=False),
        offsets,
    )
