"""Feature registry: every feature name the kernels can compute, and where each one comes from."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_UNIVERSE: tuple[str, ...] = ("SPX", "SPY", "XSP", "NDX", "QQQ", "RUT", "AAPL", "TSLA")

#: Per-symbol indicators, in the column order of :func:`kernels.market.market_block`.
MARKET_INDICATORS: tuple[str, ...] = (
    "close",
    "sma_20",
    "momentum_5",
    "volatility_20",
    "rsi",
    "price_position",
)

#: VIX features, in the order of :func:`kernels.market.vix_block`.
VIX_FEATURES: tuple[str, ...] = (
    "vix",
    "vix_sma_20",
    "vix_change",
    "vix_regime_low",
    "vix_regime_normal",
    "vix_regime_elevated",
    "vix_regime_high",
)

#: Strategy names; an order's strategy code is the index in this tuple.
STRATEGIES: tuple[str, ...] = ("Butterfly", "Iron Condor", "Sonar", "Vertical")

#: Every per-order feature, in the column order of :func:`kernels.trade.order_features`.
ORDER_FEATURES: tuple[str, ...] = (
    "hour",
    "minute",
    "day_of_week",
    "hour_sin",
    "hour_cos",
    "is_market_open",
    "is_open_30min",
    "is_close_30min",
    "minutes_to_close",
    *(f"strategy_{strategy}" for strategy in STRATEGIES),
    "premium",
    "risk",
    "reward",
    "risk_reward_ratio",
    "price",
    "premium_normalized",
    "predicted",
    "pred_difference",
    "strike1",
    "strike2",
    "strike3",
    "strike4",
    "strike_width",
    "strike_width_normalized",
    "expected_move",
    "low",
    "high",
    "target1",
    "target2",
    "bid1",
    "bid2",
    "bid3",
    "bid4",
    "ask1",
    "ask2",
    "ask3",
    "ask4",
    "short_term",
    "long_term",
    "has_delta_data",
    "short_long_spread",
    "predicted_vs_short",
    "predicted_vs_long",
    "price_vs_short",
    "price_vs_long",
    "delta_convergence",
    "predictions_aligned",
)

#: Order features that read the ``price`` column, so the pipeline must fill it first.
PRICE_DEPENDENT: frozenset[str] = frozenset(
    {
        "price",
        "premium_normalized",
        "pred_difference",
        "strike_width_normalized",
        "price_vs_short",
        "price_vs_long",
        "predictions_aligned",
    }
)

SOURCE_ORDER = 0
SOURCE_MARKET = 1

_ORDER_DESCRIPTIONS: dict[str, str] = {
    "hour": "hour of the decision time in New York (0-23)",
    "minute": "minute of the decision time in New York (0-59)",
    "day_of_week": "weekday of the decision time in New York, Monday = 0",
    "hour_sin": "sin(2*pi*hour/24), integer New York hour",
    "hour_cos": "cos(2*pi*hour/24), integer New York hour",
    "is_market_open": "1 on weekdays with 09:30 <= New York time < 16:00, else 0",
    "is_open_30min": "1 when open and 09:30 <= New York time < 10:00, else 0",
    "is_close_30min": "1 when open and 15:30 <= New York time < 16:00, else 0",
    "minutes_to_close": "minutes until 16:00 New York time while open, else 0",
    "premium": "limit price of the structure, in points",
    "risk": "max loss in dollars as -abs(risk); computed from strikes and premium when absent",
    "reward": "max profit in dollars; computed from strikes and premium when absent",
    "risk_reward_ratio": "reward / abs(risk); missing when risk is 0 or missing",
    "price": "underlying price at signal time, else the symbol's latest close",
    "premium_normalized": "premium / price",
    "predicted": "Magic8 predicted close",
    "pred_difference": "predicted - price",
    "strike1": "first leg strike (Butterfly a,b,b,c; Vertical s1,s2,-,-)",
    "strike2": "second leg strike (Butterfly a,b,b,c; Vertical s1,s2,-,-)",
    "strike3": "third leg strike (Butterfly a,b,b,c; Vertical missing)",
    "strike4": "fourth leg strike (Butterfly a,b,b,c; Vertical missing)",
    "strike_width": "strike4 - strike1 (Vertical: strike2 - strike1)",
    "strike_width_normalized": "strike_width / price",
    "short_term": "Magic8 delta-sheet short-term prediction",
    "long_term": "Magic8 delta-sheet long-term prediction",
    "has_delta_data": "1 if short_term or long_term is given, else 0",
    "short_long_spread": "short_term - long_term",
    "predicted_vs_short": "predicted - short_term",
    "predicted_vs_long": "predicted - long_term",
    "price_vs_short": "(price - short_term) / price * 100",
    "price_vs_long": "(price - long_term) / price * 100",
    "delta_convergence": "abs(short_term - long_term)",
    "predictions_aligned": "1 if short_term and long_term are on the same side of price, else 0",
    **{
        f"strategy_{strategy}": f"1 if the order's strategy is {strategy}, else 0"
        for strategy in STRATEGIES
    },
    **{
        name: f"{name} from the Magic8 trades sheet, passed through"
        for name in (
            "expected_move",
            "low",
            "high",
            "target1",
            "target2",
            *(f"{side}{leg}" for side in ("bid", "ask") for leg in range(1, 5)),
        )
    },
}

_MARKET_DESCRIPTIONS: dict[str, str] = {
    "close": "close of the last completed 5-minute bar of {s}",
    "sma_20": "mean of the last 20 closes of {s} (missing if < 20 bars)",
    "momentum_5": "close / close 5 bars earlier - 1 for {s} (missing if < 6 bars)",
    "volatility_20": "sample std (ddof 1) of the last 20 one-bar simple returns of {s}",
    "rsi": "RSI(14) of {s}, Wilder smoothing alpha 1/14 over at most 100 bars",
    "price_position": "(close - min low) / (max high - min low) over the last 20 bars of {s}",
}


class UnknownFeatureError(ValueError):
    """Feature names the registry does not know, all reported at once."""

    def __init__(self, unknown: Sequence[str]) -> None:
        """Record the unknown names and build a message listing every one of them.

        Args:
            unknown: The names the registry does not know, in the order they were asked for.
        """
        self.unknown: list[str] = list(unknown)
        super().__init__(f"unknown feature(s): {', '.join(repr(name) for name in self.unknown)}")


class DuplicateFeatureError(ValueError):
    """Feature names listed more than once in one feature list."""

    def __init__(self, duplicates: Sequence[str]) -> None:
        """Record the repeated names and build a message listing every one of them.

        Args:
            duplicates: The names that appear more than once.
        """
        self.duplicates: list[str] = list(duplicates)
        super().__init__(
            f"duplicate feature(s): {', '.join(repr(name) for name in self.duplicates)}"
        )


@dataclass(frozen=True)
class FeaturePlan:
    """Where each feature of a model's ordered list is read from.

    Attributes:
        names: The feature names, in model order.
        source: int8 per feature: 0 = order matrix column, 1 = market vector column.
        index: int64 per feature: column index in that source.
        symbols: Universe symbols whose market block is needed, in universe order.
        needs_vix: Whether any VIX feature is used.
        needs_order_price: Whether any feature reads the order's ``price`` column.
    """

    names: tuple[str, ...]
    source: np.ndarray
    index: np.ndarray
    symbols: tuple[str, ...]
    needs_vix: bool
    needs_order_price: bool


class FeatureRegistry:
    """The set of features known for one symbol universe and VIX regime bounds."""

    def __init__(
        self,
        universe: Sequence[str] = DEFAULT_UNIVERSE,
        vix_bounds: tuple[float, float, float] = (15.0, 20.0, 25.0),
    ) -> None:
        """Lay out the order columns and the market vector for ``universe``.

        Args:
            universe: Symbols with per-symbol market features; upper-cased.
            vix_bounds: Left-closed regime bounds low|normal|elevated|high, strictly increasing.

        Raises:
            ValueError: If the universe repeats a symbol or is empty, or the bounds are not
                three finite, strictly increasing numbers.
        """
        symbols = tuple(symbol.strip().upper() for symbol in universe)
        if not symbols or any(not symbol for symbol in symbols):
            raise ValueError("universe must be a non-empty list of non-empty symbols")
        repeated = sorted(symbol for symbol, count in Counter(symbols).items() if count > 1)
        if repeated:
            raise ValueError(f"universe repeats symbol(s): {', '.join(repeated)}")
        bounds = tuple(float(bound) for bound in vix_bounds)
        if (
            len(bounds) != 3
            or not all(math.isfinite(bound) for bound in bounds)
            or not bounds[0] < bounds[1] < bounds[2]
        ):
            raise ValueError(f"vix_bounds must be 3 finite increasing numbers, got {vix_bounds}")
        self.universe: tuple[str, ...] = symbols
        self.vix_bounds: tuple[float, float, float] = (bounds[0], bounds[1], bounds[2])
        self.market_columns: tuple[str, ...] = (
            *(f"{symbol}_{ind}" for symbol in symbols for ind in MARKET_INDICATORS),
            *VIX_FEATURES,
        )
        self.names: tuple[str, ...] = ORDER_FEATURES + self.market_columns
        # PERF: name -> (source, index) built once so plan() is one dict lookup per name.
        self._where: dict[str, tuple[int, int]] = {
            name: (SOURCE_ORDER, position) for position, name in enumerate(ORDER_FEATURES)
        }
        self._where.update(
            (name, (SOURCE_MARKET, position)) for position, name in enumerate(self.market_columns)
        )
        self._vix_start = len(symbols) * len(MARKET_INDICATORS)

    def plan(self, names: Sequence[str]) -> FeaturePlan:
        """Map a model's ordered feature list to the columns the kernels produce.

        Args:
            names: Feature names in model order.

        Returns:
            The plan the pipeline gathers features with.

        Raises:
            UnknownFeatureError: Listing every name the registry does not know.
            DuplicateFeatureError: Listing every name that appears more than once.
        """
        names = tuple(names)
        unknown = [name for name in names if name not in self._where]
        if unknown:
            raise UnknownFeatureError(unknown)
        duplicates = [name for name, count in Counter(names).items() if count > 1]
        if duplicates:
            raise DuplicateFeatureError(duplicates)
        where = [self._where[name] for name in names]
        source = np.array([src for src, _ in where], dtype=np.int8)
        index = np.array([col for _, col in where], dtype=np.int64)
        market_cols = {col for src, col in where if src == SOURCE_MARKET}
        width = len(MARKET_INDICATORS)
        symbols = tuple(
            symbol
            for position, symbol in enumerate(self.universe)
            if any(position * width + k in market_cols for k in range(width))
        )
        return FeaturePlan(
            names=names,
            source=source,
            index=index,
            symbols=symbols,
            needs_vix=any(col >= self._vix_start for col in market_cols),
            needs_order_price=any(name in PRICE_DEPENDENT for name in names),
        )

    def describe(self, name: str) -> str:
        """Return the one-line definition of a feature.

        Args:
            name: A feature name known to this registry.

        Returns:
            The definition text shown by ``/models`` and the docs.

        Raises:
            UnknownFeatureError: If the name is not known.
        """
        where = self._where.get(name)
        if where is None:
            raise UnknownFeatureError([name])
        source, position = where
        if source == SOURCE_ORDER:
            return _ORDER_DESCRIPTIONS[name]
        if position >= self._vix_start:
            return self._describe_vix(name)
        symbol = self.universe[position // len(MARKET_INDICATORS)]
        indicator = MARKET_INDICATORS[position % len(MARKET_INDICATORS)]
        return _MARKET_DESCRIPTIONS[indicator].format(s=symbol)

    def _describe_vix(self, name: str) -> str:
        low, normal, elevated = self.vix_bounds
        return {
            "vix": "close of the last completed 5-minute VIX bar",
            "vix_sma_20": "mean of the last 20 VIX closes (missing if < 20 bars)",
            "vix_change": "VIX close / previous close - 1",
            "vix_regime_low": f"1 if VIX < {low:g}, else 0",
            "vix_regime_normal": f"1 if {low:g} <= VIX < {normal:g}, else 0",
            "vix_regime_elevated": f"1 if {normal:g} <= VIX < {elevated:g}, else 0",
            "vix_regime_high": f"1 if VIX >= {elevated:g}, else 0",
        }[name]
