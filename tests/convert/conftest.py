"""Fixtures shared by the converter tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import xgboost

from tests.convert.boosters import FEATURES, train_booster


@pytest.fixture(scope="module")
def booster() -> xgboost.Booster:
    """A booster shaped like real retraining output, only smaller."""
    return train_booster(n_trees=40, max_depth=4, feature_names=FEATURES)


@pytest.fixture
def booster_file(tmp_path: Path, booster: xgboost.Booster) -> Path:
    """The module's booster saved as JSON."""
    path = tmp_path / "SPX_trades_model.json"
    booster.save_model(path)
    return path
