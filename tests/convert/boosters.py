"""Small XGBoost boosters trained on the fly for the converter tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import xgboost

FEATURES = [
    "hour",
    "SPX_rsi",
    "vix",
    "strategy_Iron Condor",
    "strategy_Butterfly",
    "premium",
]
"""Feature names as real retraining output has them: some hold spaces."""


def training_data(
    n_rows: int = 600, n_features: int = len(FEATURES), seed: int = 0, missing_share: float = 0.2
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Return features with NaN holes and labels that depend on several columns."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    # A one-hot-like column, as the strategy features are, so some splits sit at 0.5.
    values[:, min(3, n_features - 1)] = rng.integers(0, 2, size=n_rows)
    values[rng.random(values.shape) < missing_share] = np.nan
    signal = np.nan_to_num(values[:, 0]) + 0.5 * np.nan_to_num(values[:, -1])
    labels = (signal + rng.normal(scale=0.8, size=n_rows) > 0).astype(np.int64)
    return values, labels


def train_booster(
    *,
    n_trees: int = 20,
    max_depth: int = 4,
    feature_names: list[str] | None = None,
    n_features: int | None = None,
    seed: int = 0,
    base_score: float | None = None,
    n_rows: int = 600,
) -> xgboost.Booster:
    """Train a binary:logistic booster on `training_data`.

    Args:
        n_trees: Boosting rounds.
        max_depth: Tree depth.
        feature_names: Names to train with; None trains an unnamed booster.
        n_features: Column count when unnamed (default: len(FEATURES)).
        seed: Seed of data and training.
        base_score: Explicit base score; None lets XGBoost estimate it.
        n_rows: Training rows.

    Returns:
        The trained booster.
    """
    width = len(feature_names) if feature_names else (n_features or len(FEATURES))
    values, labels = training_data(n_rows=n_rows, n_features=width, seed=seed)
    matrix = xgboost.DMatrix(values, label=labels, missing=np.nan, feature_names=feature_names)
    params: dict[str, object] = {
        "objective": "binary:logistic",
        "max_depth": max_depth,
        "eta": 0.3,
        "seed": seed,
        "nthread": 1,
    }
    if base_score is not None:
        params["base_score"] = base_score
    return xgboost.train(params, matrix, num_boost_round=n_trees)
