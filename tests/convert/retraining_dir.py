"""A retraining directory like the previous project's scripts left behind, built for the tests.

Models are trained on feature rows the project's own kernels compute from Magic8-like orders
(the trades-sheet features only, so a row depends on the order alone), missing values filled
with 0 as that trainer did. `model_rows` rebuilds the exact float32 row the server feeds a
model, so a test can compare the server's answer with ``Booster.predict`` on the same row.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import msgspec
import numpy as np
import numpy.typing as npt
import xgboost

from inference.orders import build_batch
from inference.schema import Order
from kernels.assemble import GatherMaps, assemble
from kernels.registry import STRATEGIES, FeatureRegistry
from kernels.trade import order_features

#: 31 features of the Magic8 trades sheet, as the retraining scripts used them.
TRADES_SHEET_FEATURES = [
    "hour",
    "minute",
    "day_of_week",
    "minutes_to_close",
    "strategy_Butterfly",
    "strategy_Iron Condor",
    "strategy_Sonar",
    "strategy_Vertical",
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
    "ask1",
    "ask2",
]
assert len(TRADES_SHEET_FEATURES) == 31

SYMBOLS = ("SPX", "SPY", "XSP", "NDX", "QQQ", "RUT", "AAPL", "TSLA")
#: The group model serves RUT (answered by RUT's own model) and IWM, which has no model of its own.
GROUP = ("RUT", "IWM")
UNIVERSE = (*SYMBOLS, "IWM")
STRATEGY_MODEL = ("SPX", "Iron Condor")
LEVEL = {
    "SPX": 5800.0,
    "SPY": 580.0,
    "XSP": 580.0,
    "NDX": 20500.0,
    "QQQ": 500.0,
    "RUT": 2200.0,
    "AAPL": 230.0,
    "TSLA": 350.0,
    "IWM": 220.0,
}
#: A Tuesday, 11:07 in New York.
WHEN = datetime(2025, 3, 4, 16, 7, tzinfo=UTC)


def threshold_of(symbol: str, strategy: str) -> float:
    """A distinct threshold per symbol and strategy, so a test can tell which one applied."""
    return round(0.40 + 0.02 * UNIVERSE.index(symbol) + 0.005 * STRATEGIES.index(strategy), 4)


def thresholds_file() -> dict[str, dict[str, float]]:
    """``thresholds.json``: symbol -> strategy -> value; XSP spells Iron Condor with a '_'."""
    table = {
        symbol: {strategy: threshold_of(symbol, strategy) for strategy in STRATEGIES}
        for symbol in SYMBOLS
    }
    table["XSP"]["Iron_Condor"] = table["XSP"].pop("Iron Condor")
    return table


def group_thresholds_file() -> dict[str, dict[str, float]]:
    """``thresholds_grouped.json``: group -> strategy -> value (IWM's column of values)."""
    return {"_".join(GROUP): {strategy: threshold_of("IWM", strategy) for strategy in STRATEGIES}}


def sample_orders(
    rng: np.random.Generator, symbol: str, count: int, strategy: str | None = None
) -> list[dict[str, Any]]:
    """Magic8-like orders carrying the trades-sheet fields, a timestamp and the price."""
    level = LEVEL[symbol]
    orders = []
    for _ in range(count):
        chosen = strategy or STRATEGIES[int(rng.integers(len(STRATEGIES)))]
        price = level * (1 + rng.normal(scale=0.004))
        step = level / 1000 * rng.uniform(0.5, 2.0)
        legs = {"Butterfly": 3, "Iron Condor": 4, "Sonar": 4, "Vertical": 2}[chosen]
        offsets = {
            3: [-10, 0, 10],
            4: [-30, -15, 15, 30],
            2: [-20, -10],
        }[legs]
        order: dict[str, Any] = {
            "symbol": symbol,
            "strategy": chosen,
            "premium": round(float(rng.uniform(0.5, 4.0) * step), 2),
            "predicted_price": round(price * (1 + rng.normal(scale=0.003)), 2),
            "strikes": [round(price + offset * step, 1) for offset in offsets],
            "timestamp": (WHEN + timedelta(minutes=int(rng.integers(-90, 270)))).isoformat(),
            "price": round(price, 2),
            "expected_move": round(float(level * rng.uniform(0.002, 0.01)), 2),
            "low": round(price * 0.995, 2),
            "high": round(price * 1.005, 2),
            "target1": round(price * (1 + rng.normal(scale=0.002)), 2),
            "target2": round(price * (1 + rng.normal(scale=0.004)), 2),
        }
        # Quotes are often missing from the sheet; the trainer saw them as 0.
        if rng.random() < 0.7:
            order.update(
                bid1=round(float(rng.uniform(0.1, 3)), 2), ask1=round(float(rng.uniform(0.1, 3)), 2)
            )
            order.update(
                bid2=round(float(rng.uniform(0.1, 3)), 2), ask2=round(float(rng.uniform(0.1, 3)), 2)
            )
        orders.append(order)
    return orders


def model_rows(
    orders: list[dict[str, Any]], features: list[str], *, zero_missing: bool
) -> npt.NDArray[np.float32]:
    """Build the float32 rows the server feeds a model for these orders, the pipeline's way.

    The orders carry ``price`` and the features are all order features, so no market data is
    involved: validation (`build_batch`), the order-feature kernel and the same `assemble`.
    """
    decoded = [msgspec.json.decode(msgspec.json.encode(order), type=Order) for order in orders]
    batch = build_batch(decoded, WHEN)
    assert not batch.errors, batch.errors
    assert batch.columns is not None
    registry = FeatureRegistry(UNIVERSE)
    plan = registry.plan(features)
    # Only order features keep a row independent of market data.
    assert not plan.symbols
    assert not plan.needs_vix
    market = np.full((1, len(registry.market_columns)), np.nan)
    rows, _ = assemble(
        GatherMaps.of(plan),
        order_features(batch.columns),
        market,
        np.arange(len(orders), dtype=np.intp),
        np.zeros(len(orders), dtype=np.intp),
        zero_missing,
    )
    return rows


def predict(booster: xgboost.Booster, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """``Booster.predict`` on rows laid out in the model's feature order."""
    matrix = xgboost.DMatrix(rows, missing=np.nan, feature_names=booster.feature_names)
    return np.asarray(booster.predict(matrix), dtype=np.float64)


def _labels(rng: np.random.Generator, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Labels that depend on several standardised columns, differently per model."""
    spread = rows.std(axis=0)
    scaled = (rows - rows.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    weights = rng.normal(size=rows.shape[1])
    signal = scaled @ weights / np.sqrt(rows.shape[1])
    return (signal + rng.normal(scale=0.7, size=len(rows)) > 0).astype(np.int64)


@dataclass(frozen=True)
class RetrainingDirectory:
    """A built retraining directory and the boosters it holds, by model name.

    Attributes:
        path: The directory.
        boosters: Model name (file stem without ``_model``) -> the booster as trained.
    """

    path: Path
    boosters: dict[str, xgboost.Booster]


def _train_rows(
    rng: np.random.Generator, symbols: tuple[str, ...], count: int, strategy: str | None
) -> npt.NDArray[np.float32]:
    orders = [order for symbol in symbols for order in sample_orders(rng, symbol, count, strategy)]
    return model_rows(orders, TRADES_SHEET_FEATURES, zero_missing=True)


def build_retraining_directory(
    path: Path, *, n_trees: int = 200, max_depth: int = 4, rows: int = 800
) -> RetrainingDirectory:
    """Write a retraining directory as the previous project did, and return its boosters.

    It holds 8 symbol models pickled by XGBoost (XGBClassifiers through ``pickle``, trained
    on bare arrays, so their names come from pickled feature lists; two plain Boosters through
    ``joblib``), one symbol x strategy model saved as JSON with its names
    (``SPX_Iron Condor_model.json``), one group model (``RUT_IWM_combined_model.pkl``),
    ``thresholds.json`` and ``thresholds_grouped.json``.
    """
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(31)
    boosters: dict[str, xgboost.Booster] = {}
    params: dict[str, Any] = {
        "n_estimators": n_trees,
        "max_depth": max_depth,
        "learning_rate": 0.1,
        "n_jobs": 1,
        "random_state": 0,
    }
    for index, symbol in enumerate(SYMBOLS):
        features = _train_rows(rng, (symbol,), rows, None)
        labels = _labels(rng, features)
        name = f"{symbol}_trades"
        if index < 6:
            classifier = xgboost.XGBClassifier(**params).fit(features, labels)
            boosters[name] = classifier.get_booster()
            (path / f"{name}_model.pkl").write_bytes(pickle.dumps(classifier))
        else:
            booster = xgboost.train(
                {"objective": "binary:logistic", "max_depth": max_depth, "eta": 0.1, "nthread": 1},
                xgboost.DMatrix(features, label=labels),
                num_boost_round=n_trees,
            )
            boosters[name] = booster
            joblib.dump(booster, path / f"{name}_model.joblib")
        (path / f"{name}_features.pkl").write_bytes(pickle.dumps(list(TRADES_SHEET_FEATURES)))

    symbol, strategy = STRATEGY_MODEL
    features = _train_rows(rng, (symbol,), rows, strategy)
    named = xgboost.DMatrix(
        features, label=_labels(rng, features), feature_names=TRADES_SHEET_FEATURES
    )
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": max_depth, "eta": 0.1, "nthread": 1},
        named,
        num_boost_round=n_trees,
    )
    boosters[f"{symbol}_{strategy}"] = booster
    booster.save_model(path / f"{symbol}_{strategy}_model.json")

    features = _train_rows(rng, GROUP, rows // 2, None)
    named = xgboost.DMatrix(
        features, label=_labels(rng, features), feature_names=TRADES_SHEET_FEATURES
    )
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": max_depth, "eta": 0.1, "nthread": 1},
        named,
        num_boost_round=n_trees,
    )
    group = "_".join(GROUP) + "_combined"
    boosters[group] = booster
    (path / f"{group}_model.pkl").write_bytes(pickle.dumps(booster))
    (path / f"{group}_features.pkl").write_bytes(pickle.dumps(list(TRADES_SHEET_FEATURES)))

    (path / "thresholds.json").write_text(json.dumps(thresholds_file(), indent=2))
    (path / "thresholds_grouped.json").write_text(json.dumps(group_thresholds_file(), indent=2))
    return RetrainingDirectory(path=path, boosters=boosters)
