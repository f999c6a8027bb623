"""Converter trust, the treelite/onnxmltools way: train random boosters, convert, compare.

Hypothesis draws the shape of a booster (depth 1-8, 1-300 trees), how much of its training
data is missing, its base score, the file format it is saved in and feature names (with
spaces), trains it, saves and reloads it, runs the full export with its gate, and then checks
the written ``model.onnx`` against ``Booster.predict`` on fresh rows with missing values.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import xgboost
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convert.manifest import sha256_file
from convert.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    export_model,
    load_booster,
)

# Feature names as retraining output has them: words, digits, underscores and spaces
# (XGBoost itself forbids '[', ']' and '<').
_NAME = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ "),
    min_size=1,
    max_size=24,
).filter(lambda name: name.strip() == name)


@st.composite
def _feature_names(draw: st.DrawFn) -> list[str]:
    """1-8 distinct names, at least one of them holding a space."""
    names = draw(st.lists(_NAME, min_size=1, max_size=8, unique=True))
    if not any(" " in name for name in names):
        names[draw(st.integers(0, len(names) - 1))] = "strategy_Iron Condor"
    return names


def _training_data(
    n_features: int, missing_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows with holes, a 0/1 column like the strategy one-hots, and labels they explain."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(400, n_features)).astype(np.float32)
    values[:, -1] = rng.integers(0, 2, size=400)
    labels_from = np.nan_to_num(values[:, 0]) + 0.7 * values[:, -1]
    values[rng.random(values.shape) < missing_share] = np.nan
    labels = (labels_from + rng.normal(scale=0.8, size=400) > 0.3).astype(np.int64)
    return values, labels


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    max_depth=st.integers(min_value=1, max_value=8),
    n_trees=st.integers(min_value=1, max_value=300),
    missing_share=st.sampled_from([0.0, 0.05, 0.3, 0.6]),
    base_score=st.one_of(st.none(), st.floats(min_value=0.05, max_value=0.95)),
    file_format=st.sampled_from(["json", "ubj"]),
    names=_feature_names(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_converted_boosters_answer_as_booster_predict(
    max_depth: int,
    n_trees: int,
    missing_share: float,
    base_score: float | None,
    file_format: str,
    names: list[str],
    seed: int,
) -> None:
    values, labels = _training_data(len(names), missing_share, seed)
    params: dict[str, object] = {
        "objective": "binary:logistic",
        "max_depth": max_depth,
        "eta": 0.3,
        "seed": seed,
        "nthread": 1,
    }
    if base_score is not None:
        params["base_score"] = base_score
    trained = xgboost.train(
        params,
        xgboost.DMatrix(values, label=labels, missing=np.nan, feature_names=names),
        num_boost_round=n_trees,
    )

    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / f"model.{file_format}"
        trained.save_model(source)
        loaded = load_booster(source)
        version_dir, manifest = export_model(
            loaded,
            feature_names=names,
            out_repo=Path(scratch) / "models",
            name="trust",
            kind="default",
            symbols=[],
            strategies=[],
            thresholds={"default": 0.5},
            missing="nan",
            source_path=source,
        )
        onnx_path = version_dir / "model.onnx"
        assert sha256_file(onnx_path) == manifest.onnx_sha256
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    assert loaded.feature_names == names
    assert manifest.source.format == file_format
    assert manifest.source.n_trees == n_trees
    assert manifest.parity.rows >= 10_000
    assert manifest.parity.rows_with_missing > 0
    assert manifest.parity.max_abs_diff <= PARITY_TOLERANCE
    # Fresh rows the gate never saw, from the training distribution, holes included.
    fresh, _ = _training_data(len(names), max(missing_share, 0.2), seed + 1)
    [served] = session.run([OUTPUT_NAME], {INPUT_NAME: fresh})
    expected = trained.predict(xgboost.DMatrix(fresh, missing=np.nan, feature_names=names))
    np.testing.assert_allclose(served, expected, atol=PARITY_TOLERANCE, rtol=0)
