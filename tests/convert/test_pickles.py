"""Tests of the restricted unpickler: real XGBoost pickles load, anything else runs nothing."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import xgboost

import convert.pickles as pickles
from convert.onnx_export import ConversionError
from convert.pickles import load_pickled_booster, load_pickled_feature_list
from tests.convert.boosters import FEATURES, train_booster, training_data


@pytest.fixture(scope="module")
def classifier() -> xgboost.XGBClassifier:
    """An XGBClassifier fitted on a bare array, as the retraining scripts did."""
    values, labels = training_data(n_rows=400)
    return xgboost.XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1).fit(values, labels)


def _same_predictions(loaded: xgboost.Booster, original: xgboost.Booster) -> None:
    values, _ = training_data(n_rows=200, seed=5)
    expected = original.predict(xgboost.DMatrix(values, feature_names=original.feature_names))
    actual = loaded.predict(xgboost.DMatrix(values, feature_names=loaded.feature_names))
    np.testing.assert_array_equal(actual, expected)


class _Runs:
    """Pickles to something that runs code when unpickled (its reduce is the payload)."""

    def __init__(self, call: Any, *args: Any) -> None:
        self.call = call
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickled_booster_loads_with_its_names_and_predictions(
    tmp_path: Path, booster: xgboost.Booster, protocol: int
) -> None:
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(booster, protocol=protocol))

    loaded, version = load_pickled_booster(path)

    assert loaded.feature_names == FEATURES
    assert version == ".".join(xgboost.__version__.split(".")[:3])
    _same_predictions(loaded, booster)


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_pickled_classifier_loads_as_its_booster(
    tmp_path: Path, classifier: xgboost.XGBClassifier, protocol: int
) -> None:
    path = tmp_path / "SPY_trades_model.pkl"
    path.write_bytes(pickle.dumps(classifier, protocol=protocol))

    loaded, _ = load_pickled_booster(path)

    assert loaded.feature_names is None
    assert loaded.num_boosted_rounds() == 15
    _same_predictions(loaded, classifier.get_booster())


@pytest.mark.parametrize("compress", [0, "zlib", "gzip", "bz2", "lzma", "xz"])
def test_joblib_files_load_compressed_or_not(
    tmp_path: Path, classifier: xgboost.XGBClassifier, compress: str | int
) -> None:
    path = tmp_path / "QQQ_trades_model.joblib"
    joblib.dump(classifier, path, compress=(compress, 3) if compress else 0)

    loaded, _ = load_pickled_booster(path)

    _same_predictions(loaded, classifier.get_booster())


def test_an_early_stopped_classifier_keeps_the_trees_predict_proba_uses(tmp_path: Path) -> None:
    values, labels = training_data(n_rows=600, seed=3)
    classifier = xgboost.XGBClassifier(
        n_estimators=200, max_depth=3, learning_rate=0.8, early_stopping_rounds=3, n_jobs=1
    ).fit(values[:300], labels[:300], eval_set=[(values[300:], labels[300:])], verbose=False)
    assert classifier.best_iteration + 1 < classifier.get_booster().num_boosted_rounds()
    path = tmp_path / "RUT_trades_model.pkl"
    path.write_bytes(pickle.dumps(classifier))

    loaded, _ = load_pickled_booster(path)

    assert loaded.num_boosted_rounds() == classifier.best_iteration + 1
    expected = classifier.predict_proba(values)[:, 1]
    np.testing.assert_allclose(loaded.predict(xgboost.DMatrix(values)), expected, rtol=0, atol=0)


def test_a_pickled_feature_list_keeps_names_with_spaces(tmp_path: Path) -> None:
    path = tmp_path / "SPX_trades_features.pkl"
    path.write_bytes(pickle.dumps(FEATURES))

    assert load_pickled_feature_list(path) == FEATURES


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda target: _Runs(builtins.open, str(target), "w"), id="builtins.open"),
        pytest.param(lambda target: _Runs(os.system, f"touch '{target}'"), id="os.system"),
        pytest.param(
            lambda target: _Runs(subprocess.call, ["touch", str(target)]), id="subprocess.call"
        ),
        pytest.param(
            lambda target: _Runs(builtins.exec, f"open({str(target)!r}, 'w').close()"), id="exec"
        ),
    ],
)
@pytest.mark.parametrize("loader", [load_pickled_booster, load_pickled_feature_list])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path: Path, payload: Any, loader: Any
) -> None:
    target = tmp_path / "created-by-the-pickle"
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(payload(target)))

    with pytest.raises(ConversionError, match="refused to unpickle: it refers to .* not admitted"):
        loader(path)

    assert not target.exists()


def test_code_hidden_inside_a_classifier_is_refused(
    tmp_path: Path, classifier: xgboost.XGBClassifier
) -> None:
    target = tmp_path / "created-by-the-pickle"
    hidden = dict(classifier.__dict__)
    hidden["callbacks"] = [_Runs(builtins.open, str(target), "w")]
    smuggler = xgboost.XGBClassifier()
    smuggler.__dict__.update(hidden)
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(smuggler))

    with pytest.raises(ConversionError, match=r"io\.open, which is not admitted"):
        load_pickled_booster(path)

    assert not target.exists()


def test_the_booster_class_cannot_be_called_with_arguments(
    tmp_path: Path, booster_file: Path
) -> None:
    # Booster(params, cache, model_file) would read any file the pickle names.
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(_Runs(xgboost.Booster, {}, None, str(booster_file))))

    with pytest.raises(ConversionError, match="rebuilt with constructor arguments"):
        load_pickled_booster(path)


def test_codecs_encode_is_admitted_for_latin1_only(tmp_path: Path) -> None:
    import _codecs

    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps(_Runs(_codecs.encode, "payload", "rot13")))

    with pytest.raises(ConversionError, match="only admitted for latin1"):
        load_pickled_feature_list(path)


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    class WithIds(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "outside" if obj == "x" else None

    path = tmp_path / "features.pkl"
    with path.open("wb") as stream:
        WithIds(stream).dump(["x"])

    with pytest.raises(ConversionError, match="persistent ids"):
        load_pickled_feature_list(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (["hour", 3], "must be a pickled list of strings"),
        ({"features": ["hour"]}, "must be a pickled list of strings"),
        (("hour", "minute"), "must be a pickled list of strings"),
    ],
)
def test_a_feature_list_must_be_a_list_of_strings(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps(content))

    with pytest.raises(ConversionError, match=message):
        load_pickled_feature_list(path)


def test_a_feature_list_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(FEATURES))

    with pytest.raises(ConversionError, match="holds a list, not an XGBoost Booster"):
        load_pickled_booster(path)


def test_a_numpy_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps(np.array(FEATURES)))

    with pytest.raises(ConversionError, match=r"numpy\..*not admitted"):
        load_pickled_feature_list(path)


def test_a_multiclass_classifier_is_refused(tmp_path: Path) -> None:
    values, _ = training_data(n_rows=300)
    labels = np.arange(300) % 3
    classifier = xgboost.XGBClassifier(n_estimators=2, n_jobs=1).fit(values, labels)
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(classifier))

    with pytest.raises(ConversionError, match="has 3 classes, not 2"):
        load_pickled_booster(path)


def test_an_unfitted_classifier_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(xgboost.XGBClassifier()))

    with pytest.raises(ConversionError, match="holds no fitted Booster"):
        load_pickled_booster(path)


@pytest.mark.parametrize("keep", [0, 1, 40, 2000, -3])
def test_a_truncated_pickle_is_refused(tmp_path: Path, booster: xgboost.Booster, keep: int) -> None:
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(booster)[:keep])

    with pytest.raises(ConversionError, match="not a readable|refused to unpickle|no model"):
        load_pickled_booster(path)


def test_a_corrupt_model_inside_a_pickle_is_refused(
    tmp_path: Path, booster: xgboost.Booster
) -> None:
    data = pickle.dumps(booster)
    path = tmp_path / "SPX_trades_model.pkl"
    # Overwrite the serialised model's first bytes ('{L...') inside an otherwise valid pickle.
    start = data.index(b"{L")
    path.write_bytes(data[:start] + b"X" * 16 + data[start + 16 :])

    with pytest.raises(ConversionError, match="not a readable XGBoost model"):
        load_pickled_booster(path)


def test_a_decompression_bomb_stops_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pickles, "MAX_PICKLE_BYTES", 1024)
    path = tmp_path / "features.joblib"
    joblib.dump(["x" * 10_000], path, compress=("gzip", 9))

    with pytest.raises(ConversionError, match="exceeds 1024 bytes"):
        load_pickled_feature_list(path)


def test_an_unnamed_booster_pickle_round_trips_through_the_gate(tmp_path: Path) -> None:
    from convert.onnx_export import export_model

    unnamed = train_booster(n_trees=8, n_features=len(FEATURES))
    path = tmp_path / "SPX_trades_model.pkl"
    path.write_bytes(pickle.dumps(unnamed))
    loaded, version = load_pickled_booster(path)

    _, manifest = export_model(
        loaded,
        feature_names=FEATURES,
        out_repo=tmp_path / "models",
        name="SPX_trades",
        kind="symbol",
        symbols=["SPX"],
        strategies=[],
        thresholds={"default": 0.5},
        missing="zero",
        source_path=path,
        source_xgboost_version=version,
    )

    assert manifest.source.format == "pkl"
    assert manifest.source.xgboost_version == version
    assert manifest.parity.max_abs_diff <= 1e-5
