"""Tests of the booster to ONNX conversion, its gate and the repository writes."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import xgboost
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convert.onnx_export as onnx_export
from convert.manifest import read_manifest, sha256_file
from convert.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    TARGET_OPSET,
    ConversionError,
    booster_to_onnx,
    export_model,
    load_booster,
    parity_check,
)
from convert.parity import parity_rows
from tests.convert.boosters import FEATURES, train_booster


def _export(booster: xgboost.Booster, repo: Path, source: Path, **overrides: object) -> Path:
    """Export with the arguments most tests share; returns the version directory."""
    arguments: dict[str, object] = {
        "feature_names": FEATURES,
        "out_repo": repo,
        "name": "SPX",
        "kind": "symbol",
        "symbols": ["SPX"],
        "strategies": [],
        "thresholds": {"default": 0.5, "Iron Condor": 0.6},
        "missing": "nan",
        "source_path": source,
    }
    arguments.update(overrides)
    version_dir, _ = export_model(booster, **arguments)  # type: ignore[arg-type]
    return version_dir


def _assert_parity(booster: xgboost.Booster, n_features: int) -> None:
    onnx_bytes = booster_to_onnx(booster, n_features).SerializeToString()
    parity = parity_check(booster, onnx_bytes, parity_rows(booster, n_features))
    assert parity.rows >= 10_000
    assert parity.max_abs_diff <= PARITY_TOLERANCE


def test_graph_has_one_input_and_the_win_probability_output(booster: xgboost.Booster) -> None:
    model = booster_to_onnx(booster, len(FEATURES))
    session = onnxruntime.InferenceSession(model.SerializeToString())

    [model_input] = session.get_inputs()
    [model_output] = session.get_outputs()
    assert (model_input.name, model_input.type) == (INPUT_NAME, "tensor(float)")
    assert model_input.shape[1] == len(FEATURES)
    assert (model_output.name, model_output.type) == (OUTPUT_NAME, "tensor(float)")
    assert len(model_output.shape) == 1
    opsets = {opset.domain: opset.version for opset in model.opset_import}
    assert opsets[""] == TARGET_OPSET
    assert "ai.onnx.ml" in opsets
    assert not [node for node in model.graph.node if node.op_type == "ZipMap"]


def test_output_is_the_probability_of_class_one(booster: xgboost.Booster) -> None:
    rows = parity_rows(booster, len(FEATURES))[:500]
    session = onnxruntime.InferenceSession(
        booster_to_onnx(booster, len(FEATURES)).SerializeToString()
    )

    [win_probability] = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    expected = booster.predict(xgboost.DMatrix(rows, missing=np.nan, feature_names=FEATURES))

    assert win_probability.dtype == np.float32
    assert win_probability.shape == (500,)
    np.testing.assert_allclose(win_probability, expected, atol=PARITY_TOLERANCE, rtol=0)


def test_conversion_leaves_the_feature_names_on_the_booster(booster: xgboost.Booster) -> None:
    booster_to_onnx(booster, len(FEATURES))

    assert booster.feature_names == FEATURES


def test_conversion_is_deterministic(booster: xgboost.Booster) -> None:
    first = booster_to_onnx(booster, len(FEATURES)).SerializeToString()
    again = booster_to_onnx(booster, len(FEATURES)).SerializeToString()

    assert first == again


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_saved_boosters_convert_within_tolerance(
    tmp_path: Path, booster: xgboost.Booster, suffix: str
) -> None:
    path = tmp_path / f"model{suffix}"
    booster.save_model(path)

    loaded = load_booster(path)

    assert loaded.feature_names == FEATURES
    _assert_parity(loaded, len(FEATURES))


@pytest.mark.parametrize("base_score", [None, 0.5, 0.2, 0.85])
def test_base_score_settings_convert_within_tolerance(base_score: float | None) -> None:
    _assert_parity(train_booster(n_trees=15, feature_names=FEATURES, base_score=base_score), 6)


def test_single_tree_with_whole_number_covers_stays_a_classifier() -> None:
    # With base_score 0.5 every hessian is 0.25, so 400 rows split 200/200 give covers 100, 50
    # and 50: onnxmltools alone would take this booster for a regressor.
    values = np.arange(400, dtype=np.float32).reshape(-1, 1)
    stump = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 1, "base_score": 0.5, "nthread": 1},
        xgboost.DMatrix(values, label=(values[:, 0] >= 200).astype(np.int64)),
        num_boost_round=1,
    )

    _assert_parity(stump, 1)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    max_depth=st.integers(min_value=1, max_value=8),
    n_trees=st.integers(min_value=1, max_value=300),
    seed=st.integers(min_value=0, max_value=2**16),
    explicit_base_score=st.booleans(),
)
def test_random_boosters_convert_within_tolerance(
    max_depth: int, n_trees: int, seed: int, explicit_base_score: bool
) -> None:
    trained = train_booster(
        n_trees=n_trees,
        max_depth=max_depth,
        feature_names=FEATURES,
        seed=seed,
        base_score=0.5 if explicit_base_score else None,
        n_rows=400,
    )

    _assert_parity(trained, len(FEATURES))


def test_load_refuses_a_truncated_file(tmp_path: Path, booster_file: Path) -> None:
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(booster_file.read_bytes()[:1000])

    with pytest.raises(ConversionError, match="not a readable XGBoost model"):
        load_booster(truncated)


def test_load_refuses_a_truncated_ubj_file(tmp_path: Path, booster: xgboost.Booster) -> None:
    path = tmp_path / "model.ubj"
    booster.save_model(path)
    path.write_bytes(path.read_bytes()[:-200])

    with pytest.raises(ConversionError, match="not a readable XGBoost model"):
        load_booster(path)


def test_load_refuses_pickles_and_other_files(tmp_path: Path, booster: xgboost.Booster) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(booster))

    with pytest.raises(ConversionError, match=r"unsupported booster file type '\.pkl'"):
        load_booster(path)


def test_load_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="no such file"):
        load_booster(tmp_path / "absent.json")


def test_conversion_refuses_other_objectives() -> None:
    values = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    regressor = xgboost.train(
        {"objective": "reg:squarederror", "nthread": 1},
        xgboost.DMatrix(values, label=values[:, 0]),
        num_boost_round=2,
    )

    with pytest.raises(ConversionError, match="objective 'reg:squarederror'"):
        booster_to_onnx(regressor, 2)


def test_conversion_refuses_a_wrong_feature_count(booster: xgboost.Booster) -> None:
    with pytest.raises(ConversionError, match="6 features but 5 names"):
        booster_to_onnx(booster, 5)


def test_export_writes_model_and_manifest(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    repo = tmp_path / "models"

    version_dir = _export(booster, repo, booster_file, metrics={"auc": 0.7})

    assert version_dir == repo / "SPX" / "v1"
    assert sorted(entry.name for entry in repo.iterdir()) == ["SPX"]
    manifest = read_manifest(version_dir / "manifest.json")
    assert manifest.onnx_sha256 == sha256_file(version_dir / "model.onnx")
    assert manifest.features == FEATURES
    assert manifest.metrics == {"auc": 0.7}
    assert manifest.parity.rows >= 10_000
    assert manifest.parity.max_abs_diff <= PARITY_TOLERANCE
    assert manifest.parity.rows_with_missing >= manifest.parity.rows // 10
    assert manifest.parity.threshold_rows > 0
    assert manifest.source.file == booster_file.name
    assert manifest.source.format == "json"
    assert manifest.source.sha256 == sha256_file(booster_file)
    assert manifest.source.xgboost_version == xgboost.__version__
    assert manifest.source.n_trees == 40
    assert manifest.source.max_depth == 4
    assert manifest.converter["opset"] == str(TARGET_OPSET)
    assert manifest.created.endswith("+00:00")
    onnx.checker.check_model(onnx.load(version_dir / "model.onnx"))


def test_export_records_the_version_a_ubj_file_was_saved_with(
    tmp_path: Path, booster: xgboost.Booster
) -> None:
    source = tmp_path / "model.ubj"
    booster.save_model(source)

    version_dir = _export(booster, tmp_path / "models", source)

    source_info = read_manifest(version_dir / "manifest.json").source
    assert (source_info.format, source_info.xgboost_version) == ("ubj", xgboost.__version__)


def test_second_export_of_the_same_booster_is_a_no_op(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    repo = tmp_path / "models"
    first = _export(booster, repo, booster_file)
    written = (first / "manifest.json").read_bytes()

    again = _export(booster, repo, booster_file)

    assert again == first
    assert sorted(entry.name for entry in (repo / "SPX").iterdir()) == ["v1"]
    assert (first / "manifest.json").read_bytes() == written


def test_export_of_a_different_booster_adds_the_next_version(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    repo = tmp_path / "models"
    _export(booster, repo, booster_file)
    other = train_booster(n_trees=10, feature_names=FEATURES, seed=7)
    other_file = tmp_path / "other.json"
    other.save_model(other_file)

    second = _export(other, repo, other_file)

    assert second == repo / "SPX" / "v2"
    assert read_manifest(second / "manifest.json").version == "v2"


def test_changed_thresholds_make_a_new_version(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    repo = tmp_path / "models"
    _export(booster, repo, booster_file)

    second = _export(booster, repo, booster_file, thresholds={"default": 0.55})

    assert second.name == "v2"


def test_export_refuses_to_replace_a_given_version(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    repo = tmp_path / "models"
    _export(booster, repo, booster_file, version="2024-06")

    with pytest.raises(ConversionError, match="already exists with a different model"):
        _export(booster, repo, booster_file, version="2024-06", thresholds={"default": 0.7})


def test_gate_refuses_a_parity_failure_and_writes_nothing(
    tmp_path: Path,
    booster: xgboost.Booster,
    booster_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    impostor = train_booster(n_trees=5, feature_names=FEATURES, seed=99)
    impostor_model = booster_to_onnx(impostor, len(FEATURES))
    monkeypatch.setattr(onnx_export, "booster_to_onnx", lambda *_: impostor_model)
    repo = tmp_path / "models"
    repo.mkdir()

    with pytest.raises(ConversionError, match="parity failed"):
        _export(booster, repo, booster_file)

    assert list(repo.iterdir()) == []


def test_gate_refuses_a_model_the_checker_rejects(
    tmp_path: Path,
    booster: xgboost.Booster,
    booster_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tampered = booster_to_onnx(booster, len(FEATURES))
    tampered.graph.node[1].input[1] = "no_such_tensor"
    monkeypatch.setattr(onnx_export, "booster_to_onnx", lambda *_: tampered)
    repo = tmp_path / "models"

    with pytest.raises(ConversionError, match="onnx.checker rejected"):
        _export(booster, repo, booster_file)

    assert not repo.exists()


def test_export_refuses_invalid_manifest_values(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    repo = tmp_path / "models"

    with pytest.raises(ConversionError, match=r"thresholds\['default'\] = 1.5"):
        _export(booster, repo, booster_file, thresholds={"default": 1.5})
    with pytest.raises(ConversionError, match="one plain path component"):
        _export(booster, repo, booster_file, name="../escape")

    assert not repo.exists()


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path,
    booster: xgboost.Booster,
    booster_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", refuse)
    repo = tmp_path / "models"

    with pytest.raises(ConversionError, match="disk full"):
        _export(booster, repo, booster_file)

    assert list(repo.iterdir()) == []


def test_manifest_json_is_sorted_and_pretty(
    tmp_path: Path, booster: xgboost.Booster, booster_file: Path
) -> None:
    version_dir = _export(booster, tmp_path / "models", booster_file)
    text = (version_dir / "manifest.json").read_text()

    keys = list(json.loads(text))

    assert keys == sorted(keys)
    assert text.startswith("{\n  ")
