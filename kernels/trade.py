"""Numba kernels for per-order features: New York clock, trade geometry, risk/reward, deltas."""

from __future__ import annotations

import math
from typing import NoReturn

import numpy as np
from numba import njit

from kernels._checks import B1, F8, check_array
from kernels.orders import OPTION_CALL, OrderColumns
from kernels.registry import ORDER_FEATURES, STRATEGIES

_NAN = math.nan
_MULTIPLIER = 100.0
_NS_PER_S = 1_000_000_000
_S_PER_DAY = 86_400
#: Supported decision times: [2007-01-01T00:00Z, 2100-01-01T00:00Z). The DST rule below is
#: the Energy Policy Act of 2005 rule, in force from 2007; earlier years used other dates.
MIN_T_NS = 1_167_609_600 * _NS_PER_S
MAX_T_NS = 4_102_444_800 * _NS_PER_S

_BUTTERFLY = STRATEGIES.index("Butterfly")
_IRON_CONDOR = STRATEGIES.index("Iron Condor")
_SONAR = STRATEGIES.index("Sonar")
_VERTICAL = STRATEGIES.index("Vertical")
_N_STRATEGIES = len(STRATEGIES)
_N_FEATURES = len(ORDER_FEATURES)

# Start of each block of consecutive columns the kernel writes; the reference tests compare
# every column by name, so a reordering of ORDER_FEATURES cannot pass silently.
_TIME = ORDER_FEATURES.index("hour")
_N_TIME = ORDER_FEATURES.index("minutes_to_close") + 1 - _TIME
_STRATEGY = ORDER_FEATURES.index("strategy_Butterfly")
_MONEY = ORDER_FEATURES.index("premium")
_STRIKE = ORDER_FEATURES.index("strike1")
_SHEET = ORDER_FEATURES.index("expected_move")
_BID = ORDER_FEATURES.index("bid1")
_ASK = ORDER_FEATURES.index("ask1")
_DELTA = ORDER_FEATURES.index("short_term")

# Codes the kernel reports for the first invalid value it meets.
_BAD_NONE = -1
_BAD_T = 0
_BAD_STRATEGY = 1
_BAD_ACTION = 2
_BAD_OPTION_TYPE = 3
_BAD_N_STRIKES = 4
_BAD_LENGTH = 5
_BAD_FIELDS = ("t_ns", "strategy", "action", "option_type", "n_strikes")


@njit(cache=True, nogil=True, error_model="numpy")
def _div(numerator: float, denominator: float) -> float:
    # A zero denominator means "undefined" for every ratio we compute, never infinity.
    if denominator == 0.0:
        return _NAN
    return numerator / denominator


@njit(cache=True, nogil=True, error_model="numpy")
def _days_from_civil(year: int, month: int, day: int) -> int:
    # Howard Hinnant's proleptic-Gregorian day count, exact for all years in range.
    y = year - 1 if month <= 2 else year
    era = y // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


@njit(cache=True, nogil=True, error_model="numpy")
def _year_from_days(days: int) -> int:
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    year = yoe + era * 400
    # Hinnant's years start in March: January and February belong to the next civil year.
    return year + 1 if mp >= 10 else year


@njit(cache=True, nogil=True, error_model="numpy")
def _weekday(days: int) -> int:
    # 1970-01-01 was a Thursday (3 with Monday = 0).
    return (days + 3) % 7


@njit(cache=True, nogil=True, error_model="numpy")
def _new_york_clock(t_ns: int) -> tuple[int, int, int]:
    seconds = t_ns // _NS_PER_S
    year = _year_from_days(seconds // _S_PER_DAY)
    march_1 = _days_from_civil(year, 3, 1)
    november_1 = _days_from_civil(year, 11, 1)
    second_sunday_march = march_1 + (6 - _weekday(march_1)) % 7 + 7
    first_sunday_november = november_1 + (6 - _weekday(november_1)) % 7
    # 02:00 EST = 07:00 UTC starts DST; 02:00 EDT = 06:00 UTC ends it. The UTC year is the
    # right one to use: around New Year New York is on EST whichever year we pick.
    dst_start = second_sunday_march * _S_PER_DAY + 7 * 3600
    dst_end = first_sunday_november * _S_PER_DAY + 6 * 3600
    offset = -4 * 3600 if dst_start <= seconds < dst_end else -5 * 3600
    local = seconds + offset
    local_days = local // _S_PER_DAY
    second_of_day = local - local_days * _S_PER_DAY
    return second_of_day // 3600, (second_of_day % 3600) // 60, _weekday(local_days)


@njit(cache=True, nogil=True, error_model="numpy")
def _expected_strikes(strategy: int) -> int:
    if strategy == _BUTTERFLY:
        return 3
    if strategy == _VERTICAL:
        return 2
    return 4


@njit(cache=True, nogil=True, error_model="numpy")
def _risk_reward_row(
    strategy: int,
    action: int,
    option_type: int,
    strikes: np.ndarray,
    n_strikes: int,
    premium: float,
    quantity: float,
) -> tuple[float, float, float, float, float]:
    if n_strikes == 0 or n_strikes != _expected_strikes(strategy):
        return _NAN, _NAN, _NAN, _NAN, _NAN
    s1 = strikes[0]
    s2 = strikes[1]
    if strategy == _BUTTERFLY:
        width = s2 - s1
        breakeven_low = s1 + premium
        breakeven_high = strikes[2] - premium
    elif strategy == _VERTICAL:
        width = abs(s2 - s1)
        breakeven_low = s1 + premium if option_type == OPTION_CALL else s2 - premium
        breakeven_high = breakeven_low
    else:
        lower_wing = s2 - s1
        upper_wing = strikes[3] - strikes[2]
        # Written out so a NaN wing propagates (Python's max() would depend on argument order).
        width = upper_wing if upper_wing > lower_wing or math.isnan(upper_wing) else lower_wing
        breakeven_low = s2 - premium
        breakeven_high = strikes[2] + premium
    credit = premium * _MULTIPLIER * quantity
    spread = (width - premium) * _MULTIPLIER * quantity
    if action == 0:
        max_loss, max_profit = credit, spread
    else:
        max_loss, max_profit = spread, credit
    risk = -abs(max_loss)
    return risk, max_profit, abs(_div(max_profit, risk)), breakeven_low, breakeven_high


@njit(cache=True, nogil=True, error_model="numpy")
def _check_codes(strategy: int, action: int, option_type: int, n_strikes: int) -> int:
    if strategy < 0 or strategy >= _N_STRATEGIES:
        return _BAD_STRATEGY
    if action != 0 and action != 1:
        return _BAD_ACTION
    if option_type != 0 and option_type != 1:
        return _BAD_OPTION_TYPE
    if n_strikes != 0 and (n_strikes < 2 or n_strikes > 4):
        return _BAD_N_STRIKES
    return _BAD_NONE


@njit(cache=True, nogil=True, error_model="numpy")
def _risk_reward_kernel(
    strategy: np.ndarray,
    action: np.ndarray,
    option_type: np.ndarray,
    strikes: np.ndarray,
    n_strikes: np.ndarray,
    premium: np.ndarray,
    quantity: np.ndarray,
) -> tuple[np.ndarray, int, int]:
    n = strategy.shape[0]
    out = np.empty((5, n), dtype=np.float64)
    for i in range(n):
        bad = _check_codes(strategy[i], action[i], option_type[i], n_strikes[i])
        if bad != _BAD_NONE:
            return out, i, bad
        values = _risk_reward_row(
            strategy[i],
            action[i],
            option_type[i],
            strikes[i],
            n_strikes[i],
            premium[i],
            quantity[i],
        )
        for k in range(5):
            value = values[k]
            out[k, i] = value if math.isfinite(value) else _NAN
    return out, _BAD_NONE, _BAD_NONE


@njit(cache=True, nogil=True, error_model="numpy")
def _write_strikes(
    row: np.ndarray, strategy: int, strikes: np.ndarray, n_strikes: int, price: float
) -> None:
    # Legs as the Magic8 trades sheet lays them out; a count that does not fit the strategy
    # (the HTTP layer rejects those) leaves the legs missing rather than guessing.
    for k in range(4):
        row[_STRIKE + k] = _NAN
    width = _NAN
    if n_strikes == _expected_strikes(strategy):
        if strategy == _BUTTERFLY:
            row[_STRIKE] = strikes[0]
            row[_STRIKE + 1] = strikes[1]
            row[_STRIKE + 2] = strikes[1]
            row[_STRIKE + 3] = strikes[2]
            width = strikes[2] - strikes[0]
        elif strategy == _VERTICAL:
            row[_STRIKE] = strikes[0]
            row[_STRIKE + 1] = strikes[1]
            width = strikes[1] - strikes[0]
        else:
            for k in range(4):
                row[_STRIKE + k] = strikes[k]
            width = strikes[3] - strikes[0]
    row[_STRIKE + 4] = width
    row[_STRIKE + 5] = _div(width, price)


@njit(cache=True, nogil=True, error_model="numpy")
def _write_delta_sheet(
    row: np.ndarray, short_term: float, long_term: float, predicted: float, price: float
) -> None:
    row[_DELTA] = short_term
    row[_DELTA + 1] = long_term
    row[_DELTA + 2] = 0.0 if math.isnan(short_term) and math.isnan(long_term) else 1.0
    row[_DELTA + 3] = short_term - long_term
    row[_DELTA + 4] = predicted - short_term
    row[_DELTA + 5] = predicted - long_term
    row[_DELTA + 6] = _div(price - short_term, price) * 100.0
    row[_DELTA + 7] = _div(price - long_term, price) * 100.0
    row[_DELTA + 8] = abs(short_term - long_term)
    if math.isnan(short_term) or math.isnan(long_term) or math.isnan(price):
        aligned = _NAN
    elif (short_term > price and long_term > price) or (short_term < price and long_term < price):
        aligned = 1.0
    else:
        aligned = 0.0
    row[_DELTA + 9] = aligned


@njit(cache=True, nogil=True, error_model="numpy")
def _write_time(row: np.ndarray, t_ns: int) -> None:
    hour, minute, weekday = _new_york_clock(t_ns)
    minute_of_day = hour * 60 + minute
    is_open = weekday < 5 and 570 <= minute_of_day < 960
    row[_TIME] = hour
    row[_TIME + 1] = minute
    row[_TIME + 2] = weekday
    row[_TIME + 3] = math.sin(2.0 * math.pi * hour / 24.0)
    row[_TIME + 4] = math.cos(2.0 * math.pi * hour / 24.0)
    row[_TIME + 5] = 1.0 if is_open else 0.0
    row[_TIME + 6] = 1.0 if is_open and minute_of_day < 600 else 0.0
    row[_TIME + 7] = 1.0 if is_open and minute_of_day >= 930 else 0.0
    row[_TIME + 8] = 960 - minute_of_day if is_open else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _order_features_kernel(
    t_ns: np.ndarray,
    strategy: np.ndarray,
    action: np.ndarray,
    option_type: np.ndarray,
    quantity: np.ndarray,
    premium: np.ndarray,
    predicted: np.ndarray,
    price: np.ndarray,
    strikes: np.ndarray,
    n_strikes: np.ndarray,
    risk: np.ndarray,
    reward: np.ndarray,
    short_term: np.ndarray,
    long_term: np.ndarray,
    expected_move: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    target1: np.ndarray,
    target2: np.ndarray,
    bids: np.ndarray,
    asks: np.ndarray,
) -> tuple[np.ndarray, int, int]:
    n = t_ns.shape[0]
    out = np.empty((n, _N_FEATURES), dtype=np.float64)
    if not (
        strategy.shape[0] == n
        and action.shape[0] == n
        and option_type.shape[0] == n
        and quantity.shape[0] == n
        and premium.shape[0] == n
        and predicted.shape[0] == n
        and price.shape[0] == n
        and strikes.shape[0] == n
        and n_strikes.shape[0] == n
        and risk.shape[0] == n
        and reward.shape[0] == n
        and short_term.shape[0] == n
        and long_term.shape[0] == n
        and expected_move.shape[0] == n
        and low.shape[0] == n
        and high.shape[0] == n
        and target1.shape[0] == n
        and target2.shape[0] == n
        and bids.shape[0] == n
        and asks.shape[0] == n
    ):
        return out, 0, _BAD_LENGTH
    for i in range(n):
        if t_ns[i] < MIN_T_NS or t_ns[i] >= MAX_T_NS:
            return out, i, _BAD_T
        code = strategy[i]
        bad = _check_codes(code, action[i], option_type[i], n_strikes[i])
        if bad != _BAD_NONE:
            return out, i, bad
        row = out[i]
        # PERF: a batch usually shares one decision time; reusing the clock of the previous
        # row skips the calendar arithmetic and sin/cos (~120 ns of ~190 ns per order).
        if i > 0 and t_ns[i] == t_ns[i - 1]:
            for k in range(_TIME, _TIME + _N_TIME):
                row[k] = out[i - 1, k]
        else:
            _write_time(row, t_ns[i])
        for k in range(_N_STRATEGIES):
            row[_STRATEGY + k] = 1.0 if k == code else 0.0

        computed_risk, computed_reward, _, _, _ = _risk_reward_row(
            code, action[i], option_type[i], strikes[i], n_strikes[i], premium[i], quantity[i]
        )
        order_risk = -abs(risk[i]) if not math.isnan(risk[i]) else computed_risk
        order_reward = reward[i] if not math.isnan(reward[i]) else computed_reward
        row[_MONEY] = premium[i]
        row[_MONEY + 1] = order_risk
        row[_MONEY + 2] = order_reward
        row[_MONEY + 3] = _div(order_reward, abs(order_risk))
        row[_MONEY + 4] = price[i]
        row[_MONEY + 5] = _div(premium[i], price[i])
        row[_MONEY + 6] = predicted[i]
        row[_MONEY + 7] = predicted[i] - price[i]

        _write_strikes(row, code, strikes[i], n_strikes[i], price[i])
        row[_SHEET] = expected_move[i]
        row[_SHEET + 1] = low[i]
        row[_SHEET + 2] = high[i]
        row[_SHEET + 3] = target1[i]
        row[_SHEET + 4] = target2[i]
        for k in range(4):
            row[_BID + k] = bids[i, k]
            row[_ASK + k] = asks[i, k]
        _write_delta_sheet(row, short_term[i], long_term[i], predicted[i], price[i])

        # Infinite inputs or overflow become missing: models only ever see finite or NaN.
        for k in range(_N_FEATURES):
            if not math.isfinite(row[k]):
                row[k] = _NAN
    return out, _BAD_NONE, _BAD_NONE


def _raise_bad_value(field_code: int, row: int, columns: dict[str, np.ndarray]) -> NoReturn:
    name = _BAD_FIELDS[field_code]
    value = columns[name][row]
    if name == "t_ns":
        raise ValueError(
            f"t_ns[{row}]: {value} is outside the supported range 2007-01-01..2099-12-31 UTC"
        )
    raise ValueError(f"{name}[{row}]: invalid value {value}")


def risk_reward(
    strategy: np.ndarray,
    action: np.ndarray,
    option_type: np.ndarray,
    strikes: np.ndarray,
    n_strikes: np.ndarray,
    premium: np.ndarray,
    quantity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compute max loss, max profit, their ratio and breakevens of each structure.

    Multiplier 100. Width: Butterfly middle − lower; Iron Condor/Sonar the wider wing;
    Vertical |s2 − s1|. BUY pays the premium (max loss = premium·100·q), SELL collects it
    (max profit = premium·100·q). A row without strikes, or whose strike count does not fit
    its strategy, is all NaN.

    Args:
        strategy: int8 (n,) strategy codes, index into ``STRATEGIES``.
        action: int8 (n,) 0 = BUY, 1 = SELL.
        option_type: int8 (n,) 0 = CALL, 1 = PUT (Verticals' breakeven).
        strikes: float64 (n, 4) sorted ascending, NaN-padded.
        n_strikes: int8 (n,) number of strikes given.
        premium: float64 (n,) structure price in points.
        quantity: float64 (n,) number of structures.

    Returns:
        float64 arrays ``(risk, reward, ratio, breakeven_low, breakeven_high)``: risk as
        −|max loss|, reward as max profit, ratio = |reward / risk| (NaN when risk is 0).

    Raises:
        ValueError: Naming the argument with a bad dtype, shape or contiguity, or the first
            invalid code.
    """
    check_array("strategy", strategy, B1)
    n = strategy.shape[0]
    columns = {
        "strategy": strategy,
        "action": action,
        "option_type": option_type,
        "n_strikes": n_strikes,
    }
    for name, array in columns.items():
        check_array(name, array, B1, length=n)
    check_array("strikes", strikes, F8, length=n, width=4)
    check_array("premium", premium, F8, length=n)
    check_array("quantity", quantity, F8, length=n)
    out, row, field_code = _risk_reward_kernel(
        strategy, action, option_type, strikes, n_strikes, premium, quantity
    )
    if row != _BAD_NONE:
        _raise_bad_value(field_code, row, columns)
    return out[0], out[1], out[2], out[3], out[4]


def order_features(cols: OrderColumns) -> np.ndarray:
    """Compute every per-order feature of a batch in one pass.

    Args:
        cols: The batch; ``price`` must already hold the symbol's latest close where the
            order gave none.

    Returns:
        float64 (n, len(ORDER_FEATURES)) in ``ORDER_FEATURES`` order; every value is finite
        or NaN.

    Raises:
        ValueError: Naming the column with a bad dtype, shape or contiguity, or the first
            invalid value (unknown code, strike count, or a time outside 2007–2099).
    """
    # Dtypes and contiguity were checked when each column was assigned; lengths and values
    # are checked by the kernel.
    out, row, field_code = _order_features_kernel(
        cols.t_ns,
        cols.strategy,
        cols.action,
        cols.option_type,
        cols.quantity,
        cols.premium,
        cols.predicted,
        cols.price,
        cols.strikes,
        cols.n_strikes,
        cols.risk,
        cols.reward,
        cols.short_term,
        cols.long_term,
        cols.expected_move,
        cols.low,
        cols.high,
        cols.target1,
        cols.target2,
        cols.bids,
        cols.asks,
    )
    if field_code == _BAD_LENGTH:
        # validate() names the column whose length differs from t_ns.
        cols.validate()
    if row != _BAD_NONE:
        _raise_bad_value(field_code, row, {name: getattr(cols, name) for name in _BAD_FIELDS})
    result: np.ndarray = out
    return result
