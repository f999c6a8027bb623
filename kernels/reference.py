"""Slow, obviously correct reference implementations the Numba kernels are tested against."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime
from typing import TypedDict
from zoneinfo import ZoneInfo

import numpy as np

from kernels.registry import MARKET_INDICATORS, STRATEGIES, VIX_FEATURES

NEW_YORK = ZoneInfo("America/New_York")
BAR_SECONDS = 300


class ReferenceOrder(TypedDict):
    """One order as plain Python values; absent numbers are NaN, strikes any order."""

    t_ns: int
    strategy: str
    action: str
    option_type: str
    quantity: float
    premium: float
    predicted: float
    price: float
    strikes: list[float]
    risk: float
    reward: float
    short_term: float
    long_term: float
    expected_move: float
    low: float
    high: float
    target1: float
    target2: float
    bids: list[float]
    asks: list[float]


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def completed_bars(starts_ns: list[int], t_ns: int) -> int:
    """Return how many leading bars are complete at ``t_ns`` (start + 5 min <= t)."""
    return sum(1 for start in starts_ns if start + BAR_SECONDS * 10**9 <= t_ns)


def symbol_indicators(
    starts_ns: list[int], high: list[float], low: list[float], close: list[float], t_ns: int
) -> dict[str, float]:
    """Compute the six market indicators of one symbol, per SPEC §4.

    Args:
        starts_ns: Bar starts in UTC epoch nanoseconds, ascending.
        high: Bar highs.
        low: Bar lows.
        close: Bar closes.
        t_ns: Decision time.

    Returns:
        Indicator name -> value (NaN when undefined).
    """
    used = completed_bars(starts_ns, t_ns)
    closes = list(close[:used])
    highs = list(high[:used])
    lows = list(low[:used])
    result = dict.fromkeys(MARKET_INDICATORS, math.nan)
    if not closes:
        return result
    result["close"] = closes[-1]
    if len(closes) >= 20:
        last = closes[-20:]
        result["sma_20"] = math.nan if any(map(math.isnan, last)) else statistics.fmean(last)
        window_high = highs[-20:]
        window_low = lows[-20:]
        if not any(map(math.isnan, window_high + window_low)):
            result["price_position"] = _ratio(
                closes[-1] - min(window_low), max(window_high) - min(window_low)
            )
    if len(closes) >= 6:
        result["momentum_5"] = _ratio(closes[-1], closes[-6]) - 1
    if len(closes) >= 21:
        returns = [_ratio(closes[k], closes[k - 1]) - 1 for k in range(-20, 0)]
        result["volatility_20"] = (
            math.nan if not all(map(math.isfinite, returns)) else statistics.stdev(returns)
        )
    if len(closes) >= 15:
        result["rsi"] = wilder_rsi(closes[-100:])
    return {name: _finite_or_nan(value) for name, value in result.items()}


def wilder_rsi(closes: list[float]) -> float:
    """RSI(14) with Wilder smoothing (alpha = 1/14), seeded with the first difference."""
    diffs = [closes[k] - closes[k - 1] for k in range(1, len(closes))]
    if any(map(math.isnan, diffs)):
        return math.nan
    alpha = 1 / 14
    avg_gain = max(diffs[0], 0.0)
    avg_loss = max(-diffs[0], 0.0)
    for diff in diffs[1:]:
        avg_gain = (1 - alpha) * avg_gain + alpha * max(diff, 0.0)
        avg_loss = (1 - alpha) * avg_loss + alpha * max(-diff, 0.0)
    if avg_loss == 0:
        return 100.0
    return 100 - 100 / (1 + avg_gain / avg_loss)


def vix_features(
    starts_ns: list[int],
    close: list[float],
    t_ns: int,
    bounds: tuple[float, float, float] = (15.0, 20.0, 25.0),
) -> dict[str, float]:
    """Compute the VIX features at ``t_ns``, per SPEC §4."""
    closes = list(close[: completed_bars(starts_ns, t_ns)])
    result = dict.fromkeys(VIX_FEATURES, math.nan)
    if not closes:
        return result
    vix = closes[-1]
    result["vix"] = vix
    if len(closes) >= 20:
        last = closes[-20:]
        result["vix_sma_20"] = math.nan if any(map(math.isnan, last)) else statistics.fmean(last)
    if len(closes) >= 2:
        result["vix_change"] = _ratio(vix, closes[-2]) - 1
    if not math.isnan(vix):
        if vix < bounds[0]:
            regime = "low"
        elif vix < bounds[1]:
            regime = "normal"
        elif vix < bounds[2]:
            regime = "elevated"
        else:
            regime = "high"
        for name in ("low", "normal", "elevated", "high"):
            result[f"vix_regime_{name}"] = 1.0 if name == regime else 0.0
    return {name: _finite_or_nan(value) for name, value in result.items()}


def temporal_features(t_ns: int) -> dict[str, float]:
    """Compute the time-of-day features of ``t_ns`` on the New York clock via zoneinfo."""
    local = datetime.fromtimestamp(t_ns // 10**9, tz=UTC).astimezone(NEW_YORK)
    minutes = local.hour * 60 + local.minute
    is_open = local.weekday() < 5 and 9 * 60 + 30 <= minutes < 16 * 60
    return {
        "hour": float(local.hour),
        "minute": float(local.minute),
        "day_of_week": float(local.weekday()),
        "hour_sin": math.sin(2 * math.pi * local.hour / 24),
        "hour_cos": math.cos(2 * math.pi * local.hour / 24),
        "is_market_open": float(is_open),
        "is_open_30min": float(is_open and minutes < 10 * 60),
        "is_close_30min": float(is_open and minutes >= 15 * 60 + 30),
        "minutes_to_close": float(16 * 60 - minutes) if is_open else 0.0,
    }


def risk_reward_one(
    strategy: str,
    action: str,
    option_type: str,
    strikes: list[float],
    premium: float,
    quantity: float,
) -> tuple[float, float, float, float, float]:
    """Compute (risk, reward, ratio, breakeven_low, breakeven_high) of one structure.

    Args:
        strategy: Canonical strategy name.
        action: ``BUY`` or ``SELL``.
        option_type: ``CALL`` or ``PUT``.
        strikes: The strikes given, any order.
        premium: Structure price in points.
        quantity: Number of structures.

    Returns:
        NaN everywhere when the strike count does not fit the strategy.
    """
    expected = {"Butterfly": 3, "Iron Condor": 4, "Sonar": 4, "Vertical": 2}[strategy]
    nan5 = (math.nan,) * 5
    if not strikes or len(strikes) != expected:
        return nan5
    legs = sorted(strikes)
    if strategy == "Butterfly":
        width = legs[1] - legs[0]
        breakevens = (legs[0] + premium, legs[2] - premium)
    elif strategy == "Vertical":
        width = abs(legs[1] - legs[0])
        breakeven = legs[0] + premium if option_type == "CALL" else legs[1] - premium
        breakevens = (breakeven, breakeven)
    else:
        wings = [legs[1] - legs[0], legs[3] - legs[2]]
        width = math.nan if any(map(math.isnan, wings)) else max(wings)
        breakevens = (legs[1] - premium, legs[2] + premium)
    if action == "BUY":
        max_loss = premium * 100 * quantity
        max_profit = (width - premium) * 100 * quantity
    else:
        max_profit = premium * 100 * quantity
        max_loss = (width - premium) * 100 * quantity
    risk = -abs(max_loss)
    ratio = abs(_ratio(max_profit, risk))
    return (
        _finite_or_nan(risk),
        _finite_or_nan(max_profit),
        _finite_or_nan(ratio),
        _finite_or_nan(breakevens[0]),
        _finite_or_nan(breakevens[1]),
    )


def trade_features(order: ReferenceOrder) -> dict[str, float]:
    """Compute every per-order feature of one order.

    Args:
        order: The order as plain Python values.

    Returns:
        Feature name -> value for every name in ``ORDER_FEATURES``.
    """
    strategy = order["strategy"]
    strikes = sorted(order["strikes"])
    premium, price, predicted = order["premium"], order["price"], order["predicted"]
    features = temporal_features(order["t_ns"])
    for name in STRATEGIES:
        features[f"strategy_{name}"] = 1.0 if name == strategy else 0.0

    risk, reward, _, _, _ = risk_reward_one(
        strategy, order["action"], order["option_type"], strikes, premium, order["quantity"]
    )
    if not math.isnan(order["risk"]):
        risk = -abs(order["risk"])
    if not math.isnan(order["reward"]):
        reward = order["reward"]
    features.update(
        premium=premium,
        risk=risk,
        reward=reward,
        risk_reward_ratio=_ratio(reward, abs(risk)),
        price=price,
        premium_normalized=_ratio(premium, price),
        predicted=predicted,
        pred_difference=predicted - price,
    )

    expected = {"Butterfly": 3, "Iron Condor": 4, "Sonar": 4, "Vertical": 2}[strategy]
    legs = [math.nan] * 4
    width = math.nan
    if strikes and len(strikes) == expected:
        if strategy == "Butterfly":
            legs = [strikes[0], strikes[1], strikes[1], strikes[2]]
            width = legs[3] - legs[0]
        elif strategy == "Vertical":
            legs = [strikes[0], strikes[1], math.nan, math.nan]
            width = legs[1] - legs[0]
        else:
            legs = list(strikes)
            width = legs[3] - legs[0]
    for k in range(4):
        features[f"strike{k + 1}"] = legs[k]
    features["strike_width"] = width
    features["strike_width_normalized"] = _ratio(width, price)

    features.update(
        expected_move=order["expected_move"],
        low=order["low"],
        high=order["high"],
        target1=order["target1"],
        target2=order["target2"],
    )
    for k in range(4):
        features[f"bid{k + 1}"] = order["bids"][k]
        features[f"ask{k + 1}"] = order["asks"][k]

    short, long_ = order["short_term"], order["long_term"]
    if math.isnan(short) or math.isnan(long_) or math.isnan(price):
        aligned = math.nan
    else:
        above = short > price and long_ > price
        below = short < price and long_ < price
        aligned = 1.0 if above or below else 0.0
    features.update(
        short_term=short,
        long_term=long_,
        has_delta_data=0.0 if math.isnan(short) and math.isnan(long_) else 1.0,
        short_long_spread=short - long_,
        predicted_vs_short=predicted - short,
        predicted_vs_long=predicted - long_,
        price_vs_short=_ratio(price - short, price) * 100,
        price_vs_long=_ratio(price - long_, price) * 100,
        delta_convergence=abs(short - long_),
        predictions_aligned=aligned,
    )
    return {name: _finite_or_nan(value) for name, value in features.items()}


def market_block_reference(
    starts_ns: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    offsets: np.ndarray,
    t_ns: int,
) -> np.ndarray:
    """Loop :func:`symbol_indicators` over the symbols of CSR bar arrays."""
    rows = []
    for j in range(len(offsets) - 1):
        rows_of_symbol = slice(int(offsets[j]), int(offsets[j + 1]))
        values = symbol_indicators(
            [int(v) for v in starts_ns[rows_of_symbol]],
            [float(v) for v in high[rows_of_symbol]],
            [float(v) for v in low[rows_of_symbol]],
            [float(v) for v in close[rows_of_symbol]],
            t_ns,
        )
        rows.append([values[name] for name in MARKET_INDICATORS])
    return np.array(rows, dtype=np.float64).reshape(len(offsets) - 1, len(MARKET_INDICATORS))
