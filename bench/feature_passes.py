"""One full feature pass three ways: the Numba kernels, polars expressions, the Python reference.

A pass takes what the pipeline holds once market data is resolved — one polars frame of bars
per universe symbol plus VIX, and the batch's orders as columns — and returns the market
indicator matrix, the VIX features and the order feature matrix. The polars and reference
passes compute the same indicators by the SPEC §4 definitions; :func:`max_difference` proves
it on the benchmark's own inputs before anything is timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from inference.orders import build_batch
from inference.schema import BATCH_DECODER
from kernels import reference
from kernels.market import BAR_NS, market_block, snapshot_arrays, vix_block
from kernels.orders import COLUMN_LAYOUT, OrderColumns
from kernels.registry import MARKET_INDICATORS, ORDER_FEATURES, STRATEGIES, VIX_FEATURES
from kernels.trade import order_features
from providers.synthetic import SyntheticProvider

from .workload import DECISION_TIME, HISTORY_BARS, SEED, SYMBOLS, batch_body

_NY = "America/New_York"


@dataclass(frozen=True)
class FeatureInputs:
    """What one pass reads.

    Attributes:
        frames: Bars of each universe symbol, in universe order.
        vix: VIX bars.
        columns: The 32 orders, ``price`` filled from the latest close as the pipeline does.
        t_ns: Decision time, UTC epoch nanoseconds.
        bounds: VIX regime bounds.
    """

    frames: tuple[pl.DataFrame, ...]
    vix: pl.DataFrame
    columns: OrderColumns
    t_ns: int
    bounds: tuple[float, float, float] = (15.0, 20.0, 25.0)


@dataclass(frozen=True)
class FeatureOutputs:
    """What one pass returns: market (n_symbols, 6), VIX (7,), orders (n, n_order_features)."""

    market: np.ndarray
    vix: np.ndarray
    orders: np.ndarray


def feature_inputs() -> FeatureInputs:
    """The benchmark batch at :data:`DECISION_TIME` with the simulator's bars."""
    provider = SyntheticProvider(seed=SEED, symbols=(*SYMBOLS, "VIX"))
    snapshots = {
        symbol: provider.snapshot_sync(symbol, DECISION_TIME, HISTORY_BARS)
        for symbol in (*SYMBOLS, "VIX")
    }
    request = BATCH_DECODER.decode(batch_body())
    batch = build_batch(request.requests, DECISION_TIME)
    columns = batch.columns
    assert columns is not None
    for row, position in enumerate(batch.valid):
        columns.price[row] = snapshots[batch.symbols[position]].last_close
    return FeatureInputs(
        frames=tuple(snapshots[symbol].bars for symbol in SYMBOLS),
        vix=snapshots["VIX"].bars,
        columns=columns,
        t_ns=int(DECISION_TIME.timestamp()) * 1_000_000_000,
    )


# -- Numba -------------------------------------------------------------------------------------


def numba_pass(inputs: FeatureInputs) -> FeatureOutputs:
    """The serving path: CSR arrays from the frames, then the three kernels."""
    market = market_block(*snapshot_arrays(inputs.frames), inputs.t_ns)
    starts, _, _, close, _ = snapshot_arrays([inputs.vix])
    vix = vix_block(starts, close, inputs.t_ns, inputs.bounds)
    return FeatureOutputs(market, vix, order_features(inputs.columns))


# -- polars ------------------------------------------------------------------------------------


def _finite(expression: pl.Expr) -> pl.Expr:
    # The kernels' contract: every value finite or missing (NaN).
    return pl.when(expression.is_finite()).then(expression)


def _market_expressions() -> list[pl.Expr]:
    close, high, low = pl.col("close"), pl.col("high"), pl.col("low")
    count = pl.len()
    returns = (close / close.shift(1) - 1.0).tail(20)
    diffs = close.tail(100).diff().slice(1)
    gain = diffs.clip(lower_bound=0.0).ewm_mean(alpha=1 / 14, adjust=False).last()
    loss = (-diffs).clip(lower_bound=0.0).ewm_mean(alpha=1 / 14, adjust=False).last()
    rsi = pl.when(loss == 0.0).then(100.0).otherwise(100.0 - 100.0 / (1.0 + gain / loss))
    lowest, highest = low.tail(20).min(), high.tail(20).max()
    return [
        _finite(close.last()).alias("close"),
        _finite(pl.when(count >= 20).then(close.tail(20).mean())).alias("sma_20"),
        _finite(pl.when(count > 5).then(close.last() / close.shift(5).last() - 1.0)).alias(
            "momentum_5"
        ),
        _finite(pl.when(count > 20).then(returns.std(ddof=1))).alias("volatility_20"),
        _finite(pl.when(count > 14).then(rsi)).alias("rsi"),
        _finite(pl.when(count >= 20).then((close.last() - lowest) / (highest - lowest))).alias(
            "price_position"
        ),
    ]


_MARKET_EXPRESSIONS = _market_expressions()


def _completed(frame: pl.DataFrame, t_ns: int) -> pl.LazyFrame:
    cutoff = pl.lit(t_ns - BAR_NS).cast(pl.Datetime("ns", "UTC"))
    return frame.lazy().filter(pl.col("start") <= cutoff)


def _vix_expressions(bounds: tuple[float, float, float]) -> list[pl.Expr]:
    close = pl.col("close")
    vix = close.last()
    regime = [
        vix < bounds[0],
        (vix >= bounds[0]) & (vix < bounds[1]),
        (vix >= bounds[1]) & (vix < bounds[2]),
        vix >= bounds[2],
    ]
    return [
        _finite(vix).alias("vix"),
        _finite(pl.when(pl.len() >= 20).then(close.tail(20).mean())).alias("vix_sma_20"),
        _finite(pl.when(pl.len() >= 2).then(vix / close.shift(1).last() - 1.0)).alias("vix_change"),
        *(
            pl.when(vix.is_nan()).then(None).otherwise(flag.cast(pl.Float64)).alias(name)
            for flag, name in zip(regime, VIX_FEATURES[3:], strict=True)
        ),
    ]


def _order_frame(columns: OrderColumns) -> pl.DataFrame:
    # Every one-dimensional column of the kernel's layout; the 4-wide ones are split below.
    data: dict[str, np.ndarray] = {
        name: getattr(columns, name) for name, (_, width) in COLUMN_LAYOUT.items() if width == 0
    }
    for k in range(4):
        data[f"s{k + 1}"] = columns.strikes[:, k]
        data[f"bid{k + 1}"] = columns.bids[:, k]
        data[f"ask{k + 1}"] = columns.asks[:, k]
    # NaN, not null, is "missing" in the kernels' columns; polars keeps NaN as a float value.
    return pl.DataFrame(data)


def _div(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    return pl.when(denominator != 0.0).then(numerator / denominator).otherwise(float("nan"))


def _order_stages() -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Shared intermediate columns first, then every feature from them (CSE by hand)."""
    col, nan, flag = pl.col, pl.lit(float("nan")), pl.Float64
    local = pl.from_epoch("t_ns", time_unit="ns").dt.replace_time_zone("UTC")
    local = local.dt.convert_time_zone(_NY)
    strategy, n_strikes = col("strategy"), col("n_strikes")
    expected = pl.when(strategy == 0).then(3).when(strategy == 3).then(2).otherwise(4)
    s1, s2, s3, s4 = (col(f"s{k}") for k in range(1, 5))
    upper_wing, lower_wing = s4 - s3, s2 - s1
    stage = [
        local.dt.hour().cast(flag).alias("_hour"),
        local.dt.minute().cast(flag).alias("_minute"),
        (local.dt.weekday() - 1).cast(flag).alias("_weekday"),
        ((n_strikes == expected) & (n_strikes > 0)).alias("_fits"),
        pl.when(strategy == 0)
        .then(s2 - s1)
        .when(strategy == 3)
        .then((s2 - s1).abs())
        .when((upper_wing > lower_wing) | upper_wing.is_nan())
        .then(upper_wing)
        .otherwise(lower_wing)
        .alias("_width"),
    ]
    hour, minute_of_day = col("_hour"), col("_hour") * 60 + col("_minute")
    is_open = (col("_weekday") < 5) & (minute_of_day >= 570) & (minute_of_day < 960)
    fits = col("_fits")
    credit = col("premium") * 100.0 * col("quantity")
    spread = (col("_width") - col("premium")) * 100.0 * col("quantity")
    buy = col("action") == 0
    computed_risk = pl.when(fits).then(-pl.when(buy).then(credit).otherwise(spread).abs())
    computed_reward = pl.when(fits).then(pl.when(buy).then(spread).otherwise(credit))
    risk = (
        pl.when(col("risk").is_nan())
        .then(computed_risk.otherwise(nan))
        .otherwise(-col("risk").abs())
    )
    reward = (
        pl.when(col("reward").is_nan())
        .then(computed_reward.otherwise(nan))
        .otherwise(col("reward"))
    )
    butterfly, vertical = strategy == 0, strategy == 3
    leg_width = (
        pl.when(~fits)
        .then(nan)
        .when(butterfly)
        .then(s3 - s1)
        .when(vertical)
        .then(s2 - s1)
        .otherwise(s4 - s1)
    )
    price, predicted = col("price"), col("predicted")
    short, long_ = col("short_term"), col("long_term")
    aligned = (
        pl.when(short.is_nan() | long_.is_nan() | price.is_nan())
        .then(nan)
        .when(((short > price) & (long_ > price)) | ((short < price) & (long_ < price)))
        .then(1.0)
        .otherwise(0.0)
    )
    features = [
        hour,
        col("_minute"),
        col("_weekday"),
        (2 * math.pi * hour / 24).sin(),
        (2 * math.pi * hour / 24).cos(),
        is_open.cast(flag),
        (is_open & (minute_of_day < 600)).cast(flag),
        (is_open & (minute_of_day >= 930)).cast(flag),
        pl.when(is_open).then(960 - minute_of_day).otherwise(0.0),
        *((strategy == code).cast(flag) for code in range(len(STRATEGIES))),
        col("premium"),
        risk,
        reward,
        _div(reward, risk.abs()),
        price,
        _div(col("premium"), price),
        predicted,
        predicted - price,
        pl.when(fits).then(s1).otherwise(nan),
        pl.when(fits).then(s2).otherwise(nan),
        pl.when(fits & ~vertical).then(pl.when(butterfly).then(s2).otherwise(s3)).otherwise(nan),
        pl.when(fits & ~vertical).then(pl.when(butterfly).then(s3).otherwise(s4)).otherwise(nan),
        leg_width,
        _div(leg_width, price),
        *(col(name) for name in ("expected_move", "low", "high", "target1", "target2")),
        *(col(f"bid{k}") for k in range(1, 5)),
        *(col(f"ask{k}") for k in range(1, 5)),
        short,
        long_,
        pl.when(short.is_nan() & long_.is_nan()).then(0.0).otherwise(1.0),
        short - long_,
        predicted - short,
        predicted - long_,
        _div(price - short, price) * 100.0,
        _div(price - long_, price) * 100.0,
        (short - long_).abs(),
        aligned,
    ]
    return stage, [
        _finite(expression.cast(flag)).alias(name)
        for expression, name in zip(features, ORDER_FEATURES, strict=True)
    ]


_ORDER_STAGE, _ORDER_EXPRESSIONS = _order_stages()


def polars_pass(inputs: FeatureInputs) -> FeatureOutputs:
    """The same indicators as polars expressions, written to be fast in polars' own terms.

    One lazy query per frame and one for the orders, collected together by the in-memory
    engine (the default streaming engine is several times slower on frames this small);
    shared sub-expressions of the order features are computed once, as stage columns.
    """
    queries = [
        _completed(frame, inputs.t_ns).select(_MARKET_EXPRESSIONS) for frame in inputs.frames
    ]
    queries.append(_completed(inputs.vix, inputs.t_ns).select(_vix_expressions(inputs.bounds)))
    orders_query = _order_frame(inputs.columns).lazy().with_columns(_ORDER_STAGE)
    queries.append(orders_query.select(_ORDER_EXPRESSIONS))
    results = pl.collect_all(queries, engine="in-memory")
    market = np.vstack([result.to_numpy() for result in results[:-2]])
    vix = results[-2].to_numpy()[0]
    orders = results[-1].to_numpy()
    return FeatureOutputs(
        market.astype(np.float64), vix.astype(np.float64), orders.astype(np.float64)
    )


# -- Python reference --------------------------------------------------------------------------


def _reference_order(columns: OrderColumns, row: int) -> reference.ReferenceOrder:
    count = int(columns.n_strikes[row])
    return {
        "t_ns": int(columns.t_ns[row]),
        "strategy": STRATEGIES[int(columns.strategy[row])],
        "action": ("BUY", "SELL")[int(columns.action[row])],
        "option_type": ("CALL", "PUT")[int(columns.option_type[row])],
        "quantity": float(columns.quantity[row]),
        "premium": float(columns.premium[row]),
        "predicted": float(columns.predicted[row]),
        "price": float(columns.price[row]),
        "strikes": [float(value) for value in columns.strikes[row, :count]],
        "risk": float(columns.risk[row]),
        "reward": float(columns.reward[row]),
        "short_term": float(columns.short_term[row]),
        "long_term": float(columns.long_term[row]),
        "expected_move": float(columns.expected_move[row]),
        "low": float(columns.low[row]),
        "high": float(columns.high[row]),
        "target1": float(columns.target1[row]),
        "target2": float(columns.target2[row]),
        "bids": [float(value) for value in columns.bids[row]],
        "asks": [float(value) for value in columns.asks[row]],
    }


def reference_pass(inputs: FeatureInputs) -> FeatureOutputs:
    """``kernels.reference``: plain Python per symbol and per order, obviously correct."""
    market = []
    for frame in inputs.frames:
        starts = frame.get_column("start").dt.epoch("ns").to_list()
        values = reference.symbol_indicators(
            starts,
            frame.get_column("high").to_list(),
            frame.get_column("low").to_list(),
            frame.get_column("close").to_list(),
            inputs.t_ns,
        )
        market.append([values[name] for name in MARKET_INDICATORS])
    vix_values = reference.vix_features(
        inputs.vix.get_column("start").dt.epoch("ns").to_list(),
        inputs.vix.get_column("close").to_list(),
        inputs.t_ns,
        inputs.bounds,
    )
    orders = []
    for row in range(len(inputs.columns)):
        features = reference.trade_features(_reference_order(inputs.columns, row))
        orders.append([features[name] for name in ORDER_FEATURES])
    return FeatureOutputs(
        np.array(market, dtype=np.float64),
        np.array([vix_values[name] for name in VIX_FEATURES], dtype=np.float64),
        np.array(orders, dtype=np.float64),
    )


def max_difference(expected: FeatureOutputs, actual: FeatureOutputs) -> float:
    """Largest relative difference between two passes; raises if missing values disagree.

    Raises:
        AssertionError: a value is missing in one pass and not in the other, or shapes differ.
    """
    worst = 0.0
    for name in ("market", "vix", "orders"):
        left, right = getattr(expected, name), getattr(actual, name)
        if left.shape != right.shape:
            raise AssertionError(f"{name}: shape {left.shape} != {right.shape}")
        missing = np.isnan(left)
        if not np.array_equal(missing, np.isnan(right)):
            where = np.argwhere(missing != np.isnan(right))[0]
            raise AssertionError(f"{name}: missing values differ at {tuple(where)}")
        scale = np.maximum(np.abs(left[~missing]), 1.0)
        if scale.size:
            worst = max(worst, float(np.max(np.abs(left[~missing] - right[~missing]) / scale)))
    return worst
