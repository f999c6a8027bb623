"""Build the demo model: simulated days, Magic8-like orders, serving kernels, XGBoost, ONNX."""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import xgboost
from sklearn.metrics import roc_auc_score, roc_curve

from inference.cache import TTLCache
from inference.market import CircuitBreaker, MarketData, ProviderSlot
from inference.pipeline import MarketFeatures, Tally
from kernels.assemble import GatherMaps, assemble
from kernels.orders import OrderColumns
from kernels.registry import MARKET_INDICATORS, ORDER_FEATURES, STRATEGIES, FeatureRegistry
from kernels.trade import order_features
from providers.calendar import NY, is_trading_day, session_open
from providers.synthetic import SyntheticProvider

from .manifest import Manifest
from .onnx_export import export_model

#: The order features the DiscordTrading bot's orders can fill (strategy, premium, predicted
#: price, strikes, action, quantity) plus the clock; the trades-sheet passthroughs are left out
#: because the simulator has no such columns to learn from.
DEMO_ORDER_FEATURES = (*ORDER_FEATURES[: ORDER_FEATURES.index("expected_move")],)
FIRST_DAY = date(2025, 1, 2)
#: Decision times: every 15 minutes from 09:45 to 15:45 New York, plus a random offset.
GRID_MINUTES = tuple(range(9 * 60 + 45, 15 * 60 + 46, 15))
ORDER_RATE = 0.35
NO_STRIKES_RATE = 0.08
STRIKE_STEP = {"SPX": 5.0, "SPY": 1.0, "XSP": 1.0, "NDX": 10.0, "QQQ": 1.0, "RUT": 5.0}
#: How much more than SPX a symbol moves; the implied move the order prices with.
BETA = {"SPX": 1.0, "SPY": 1.0, "XSP": 1.0, "NDX": 1.25, "QQQ": 1.25, "RUT": 1.3, "AAPL": 1.6}
_HERMITE = np.polynomial.hermite_e.hermegauss(41)


@dataclass
class Dataset:
    """Feature rows, labels and the day index of every simulated order."""

    rows: np.ndarray
    labels: np.ndarray
    day_index: np.ndarray
    strategy: np.ndarray


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def trading_days(first: date, count: int) -> list[date]:
    """The first ``count`` trading days from ``first`` on."""
    days: list[date] = []
    day = first
    while len(days) < count:
        if is_trading_day(day):
            days.append(day)
        day += timedelta(days=1)
    return days


def _payoff(strategy: int, option_type: int, strikes: np.ndarray, settle: np.ndarray) -> np.ndarray:
    """Expiry value (points) of the long structure, or the loss of the short one."""
    value: np.ndarray
    if strategy == 0:
        low, mid = strikes[..., 0], strikes[..., 1]
        value = np.maximum(0.0, (mid - low) - np.abs(settle - mid))
    elif strategy in (1, 2):
        s1, s2, s3, s4 = (strikes[..., k] for k in range(4))
        value = np.clip(s2 - settle, 0.0, s2 - s1) + np.clip(settle - s3, 0.0, s4 - s3)
    elif option_type == 1:
        value = np.clip(strikes[..., 1] - settle, 0.0, strikes[..., 1] - strikes[..., 0])
    else:
        value = np.clip(settle - strikes[..., 0], 0.0, strikes[..., 1] - strikes[..., 0])
    return value


def _fair_value(
    strategy: int, option_type: int, strikes: np.ndarray, price: float, move: float
) -> float:
    """Expected payoff with the settlement normal around ``price`` (the market's pricing)."""
    nodes, weights = _HERMITE
    settle = price + move * nodes
    values = _payoff(
        strategy, option_type, np.broadcast_to(strikes, (nodes.size, strikes.size)), settle
    )
    return float(np.dot(values, weights) / math.sqrt(2 * math.pi))


def _structure(
    rng: np.random.Generator,
    strategy: int,
    price: float,
    predicted: float,
    move: float,
    step: float,
) -> tuple[np.ndarray, int, int]:
    """Strikes (sorted, NaN-padded to 4), action and option type of a Magic8-like order."""

    def snap(value: float) -> float:
        return round(value / step) * step

    def span(low: float, high: float) -> float:
        return max(step, snap(move * rng.uniform(low, high)))

    strikes = np.full(4, np.nan)
    option_type = 0
    if strategy == 0:
        centre, wing = snap(predicted), span(0.5, 1.5)
        strikes[:3] = (centre - wing, centre, centre + wing)
        return strikes, 0, option_type
    if strategy in (1, 2):
        # Iron Condor centres on the prediction; Sonar on the price, with tighter shorts.
        centre = snap(predicted) if strategy == 1 else snap(price)
        inner = span(0.3, 1.3) if strategy == 1 else span(0.2, 0.9)
        wing = span(0.3, 0.9)
        strikes[:] = (centre - inner - wing, centre - inner, centre + inner, centre + inner + wing)
        return strikes, 1, option_type
    distance, wing = span(0.0, 0.5), span(0.2, 0.8)
    if predicted >= price:
        short = snap(price - distance)
        strikes[:2] = (short - wing, short)
        option_type = 1
    else:
        short = snap(price + distance)
        strikes[:2] = (short, short + wing)
    return strikes, 1, option_type


async def _simulate(
    provider: SyntheticProvider,
    registry: FeatureRegistry,
    days: list[date],
    seed: int,
    progress: bool,
) -> tuple[OrderColumns, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Issue orders through every simulated day and label each by its profit at expiry."""
    rng = np.random.default_rng([seed, 2])
    market = MarketData(
        [ProviderSlot(provider, math.inf, CircuitBreaker())],
        TTLCache("market_data", 1, 0.0, enabled=False),
        history_bars=100,
    )
    features = MarketFeatures(market, registry, TTLCache("features", 1, 0.0, enabled=False))
    symbols = [*registry.universe, "VIX"]
    records: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    for day_number, day in enumerate(days):
        opened = session_open(day)
        settlements = {symbol: provider.settlement(symbol, day) for symbol in registry.universe}
        for minute in GRID_MINUTES:
            offset = minute - (9 * 60 + 30)
            when = opened + timedelta(minutes=offset, seconds=int(rng.integers(0, 300)))
            view = await features.view(symbols, when, Tally())
            vix_entry = view.snapshots["VIX"]
            if vix_entry is None:
                continue
            vix = vix_entry.snapshot.last_close
            remaining = max(
                1.0, 16 * 60 - (when.astimezone(NY).hour * 60 + when.astimezone(NY).minute)
            )
            for symbol in registry.universe:
                entry = view.snapshots[symbol]
                if entry is None:
                    continue
                price = entry.snapshot.last_close
                move = (
                    price * vix / 100 * BETA.get(symbol, 3.0) * math.sqrt(remaining / (252 * 390))
                )
                step = STRIKE_STEP.get(symbol, 2.5)
                settle = settlements[symbol]
                for strategy in range(len(STRATEGIES)):
                    if rng.random() > ORDER_RATE:
                        continue
                    # Magic8's predicted close: informative, with an error that shrinks
                    # as the close approaches.
                    predicted = settle + rng.normal(0.0, 1.4 * move)
                    strikes, action, option_type = _structure(
                        rng, strategy, price, predicted, move, step
                    )
                    count = {0: 3, 1: 4, 2: 4, 3: 2}[strategy]
                    fair = _fair_value(strategy, option_type, strikes[:count], price, move)
                    width = _max_loss_width(strategy, strikes)
                    premium = float(
                        np.clip(fair * rng.uniform(0.8, 1.2), 0.05 * step, 0.95 * width)
                    )
                    value = float(_payoff(strategy, option_type, strikes[:count], np.array(settle)))
                    profit = value - premium if action == 0 else premium - value
                    hide = rng.random() < NO_STRIKES_RATE
                    records.append(
                        {
                            "t": when,
                            "view": len(vectors),
                            "strategy": strategy,
                            "action": action,
                            "option_type": option_type,
                            "premium": round(premium, 2),
                            "predicted": round(predicted, 2),
                            "price": price,
                            "strikes": np.full(4, np.nan) if hide else strikes,
                            "n_strikes": 0 if hide else count,
                            "win": profit > 0,
                            "day": day_number,
                        }
                    )
            vectors.append(view.vector)
        if (day_number + 1) % 20 == 0 or day_number + 1 == len(days):
            _say(progress, f"  simulated {day_number + 1}/{len(days)} days, {len(records)} orders")
    columns = OrderColumns.empty(len(records))
    columns.t_ns[:] = [int(r["t"].timestamp()) * 1_000_000_000 for r in records]
    columns.strategy[:] = [r["strategy"] for r in records]
    columns.action[:] = [r["action"] for r in records]
    columns.option_type[:] = [r["option_type"] for r in records]
    columns.quantity[:] = 1.0
    columns.premium[:] = [r["premium"] for r in records]
    columns.predicted[:] = [r["predicted"] for r in records]
    columns.price[:] = [r["price"] for r in records]
    columns.strikes[:] = np.stack([r["strikes"] for r in records])
    columns.n_strikes[:] = [r["n_strikes"] for r in records]
    return (
        columns,
        np.array([r["view"] for r in records], dtype=np.intp),
        np.stack(vectors),
        np.array([r["win"] for r in records], dtype=np.int8),
        np.array([r["day"] for r in records], dtype=np.int64),
    )


def _max_loss_width(strategy: int, strikes: np.ndarray) -> float:
    if strategy == 0:
        return float(strikes[1] - strikes[0])
    if strategy in (1, 2):
        return float(max(strikes[1] - strikes[0], strikes[3] - strikes[2]))
    return float(strikes[1] - strikes[0])


def demo_features(registry: FeatureRegistry) -> list[str]:
    """The demo model's feature list: order geometry, clock, every symbol's market, VIX."""
    market = [f"{symbol}_{ind}" for symbol in registry.universe for ind in MARKET_INDICATORS]
    vix = [name for name in registry.market_columns if name.startswith("vix")]
    return [*DEMO_ORDER_FEATURES, *market, *vix]


def build_dataset(seed: int, days: int, progress: bool = False) -> tuple[Dataset, list[str]]:
    """Simulate ``days`` trading days and compute features with the serving kernels."""
    registry = FeatureRegistry()
    provider = SyntheticProvider(seed=seed, symbols=(*registry.universe, "VIX"))
    names = demo_features(registry)
    maps = GatherMaps.of(registry.plan(names))
    columns, views, market, labels, day_index = asyncio.run(
        _simulate(provider, registry, trading_days(FIRST_DAY, days), seed, progress)
    )
    order_matrix = order_features(columns)
    rows, _ = assemble(maps, order_matrix, market, np.arange(len(labels), dtype=np.intp), views)
    return Dataset(rows, labels, day_index, columns.strategy.copy()), names


def _youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity − 1 (0.5 when undefined)."""
    if labels.min() == labels.max():
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.01, 0.99))


def build_demo_model(
    out: Path, *, seed: int = 8, days: int = 160, holdout: float = 0.25, progress: bool = False
) -> Manifest:
    """Build, evaluate, convert and write the demo model (SPEC §5.5); deterministic per seed.

    The latest ``holdout`` share of days is held out; the model is trained on the earlier
    days only, and its AUC on the held-out days is recorded in the manifest.
    """
    _say(progress, f"simulating {days} trading days from {FIRST_DAY} (seed {seed})")
    data, names = build_dataset(seed, days, progress)
    cut = int(round(days * (1 - holdout)))
    train, test = data.day_index < cut, data.day_index >= cut
    _say(progress, f"training on {train.sum()} orders (days < {cut}), holding out {test.sum()}")
    params = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "max_depth": 4,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 5,
        "tree_method": "hist",
        "seed": seed,
        "nthread": 1,
    }
    train_matrix = xgboost.DMatrix(data.rows[train], label=data.labels[train], missing=np.nan)
    test_matrix = xgboost.DMatrix(data.rows[test], label=data.labels[test], missing=np.nan)
    booster = xgboost.train(
        params,
        train_matrix,
        num_boost_round=300,
        evals=[(train_matrix, "train"), (test_matrix, "holdout")],
        verbose_eval=50 if progress else False,
    )
    test_scores = booster.predict(test_matrix)
    train_scores = booster.predict(train_matrix)
    metrics = {
        "auc_holdout": float(roc_auc_score(data.labels[test], test_scores)),
        "auc_train": float(roc_auc_score(data.labels[train], train_scores)),
        "rows_train": float(train.sum()),
        "rows_holdout": float(test.sum()),
        "win_rate_holdout": float(data.labels[test].mean()),
    }
    thresholds = {"default": 0.5}
    for code, strategy in enumerate(STRATEGIES):
        mine = data.strategy[train] == code
        thresholds[strategy] = round(
            _youden_threshold(data.labels[train][mine], train_scores[mine]), 4
        )
        held = data.strategy[test] == code
        if data.labels[test][held].min() != data.labels[test][held].max():
            metrics[f"auc_holdout_{strategy}"] = float(
                roc_auc_score(data.labels[test][held], test_scores[held])
            )
    _say(progress, f"held-out AUC {metrics['auc_holdout']:.4f}; converting to ONNX")
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "demo_booster.json"
        # The booster carries the real names (spaces included) for people reading it;
        # the exporter converts a nameless copy.
        booster.feature_names = names
        booster.save_model(source)
        version_dir, manifest = export_model(
            booster,
            feature_names=names,
            out_repo=out,
            name="demo",
            kind="default",
            symbols=[],
            strategies=[],
            thresholds=thresholds,
            missing="nan",
            source_path=source,
            metrics=metrics,
            description=(
                f"Demo model: {days} simulated trading days from {FIRST_DAY}, seed {seed}, "
                f"latest {holdout:.0%} of days held out; built by `magic8 demo-model`."
            ),
        )
        target = version_dir / "booster.json"
        if not target.exists():
            target.write_bytes(source.read_bytes())
    return manifest
