"""Tests of converting a retraining directory: layout, thresholds, all-or-nothing, the CLI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import xgboost
from click.testing import CliRunner

import convert.onnx_export as onnx_export
import convert.retraining as retraining
from convert.manifest import read_manifest
from convert.onnx_export import INPUT_NAME, OUTPUT_NAME, ConversionError
from convert.retraining import RetrainingError, convert_directory, scan_directory
from inference.cli import main
from kernels.registry import FeatureRegistry
from tests.convert.retraining_dir import (
    GROUP,
    SYMBOLS,
    TRADES_SHEET_FEATURES,
    UNIVERSE,
    RetrainingDirectory,
    build_retraining_directory,
    model_rows,
    predict,
    sample_orders,
    threshold_of,
)

MODEL_NAMES = sorted(
    [*(f"{symbol}_trades" for symbol in SYMBOLS), "SPX_Iron Condor", "RUT_IWM_combined"]
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> RetrainingDirectory:
    """A small retraining directory (few trees) in the real layout, built once."""
    return build_retraining_directory(
        tmp_path_factory.mktemp("retraining") / "out", n_trees=12, rows=240
    )


@pytest.fixture
def source(tmp_path: Path, built: RetrainingDirectory) -> Path:
    """A private copy of the retraining directory, free to spoil."""
    return Path(shutil.copytree(built.path, tmp_path / "retraining"))


def _registry_check(names: list[str]) -> None:
    FeatureRegistry(UNIVERSE).plan(names)


def _files(root: Path) -> list[str]:
    """Every path under ``root``, relative, so 'nothing written' can be asserted exactly."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")) if root.exists() else []


def test_the_layout_is_recognised(source: Path) -> None:
    layout = scan_directory(source)

    assert layout.problems == []
    routes = {entry.name: (entry.kind, entry.symbols, entry.strategies) for entry in layout.models}
    assert routes == {
        **{f"{symbol}_trades": ("symbol", (symbol,), ()) for symbol in SYMBOLS},
        "SPX_Iron Condor": ("symbol_strategy", ("SPX",), ("Iron Condor",)),
        "RUT_IWM_combined": ("group", GROUP, ()),
    }
    by_name = {entry.name: entry for entry in layout.models}
    assert by_name["SPX_trades"].features_file == source / "SPX_trades_features.pkl"
    assert by_name["SPX_Iron Condor"].features_file is None


def test_thresholds_come_per_strategy_from_both_files(source: Path) -> None:
    by_name = {entry.name: entry for entry in scan_directory(source).models}

    assert by_name["SPY_trades"].thresholds == {
        "default": 0.5,
        **{strategy: threshold_of("SPY", strategy) for strategy in ("Butterfly", "Sonar")},
        **{strategy: threshold_of("SPY", strategy) for strategy in ("Iron Condor", "Vertical")},
    }
    # thresholds.json spells XSP's Iron Condor "Iron_Condor".
    assert by_name["XSP_trades"].thresholds["Iron Condor"] == threshold_of("XSP", "Iron Condor")
    assert by_name["SPX_Iron Condor"].thresholds == {
        "default": 0.5,
        "Iron Condor": threshold_of("SPX", "Iron Condor"),
    }
    assert by_name["RUT_IWM_combined"].thresholds["Sonar"] == threshold_of("IWM", "Sonar")


def test_missing_threshold_entries_fall_back_to_one_half_with_a_note(source: Path) -> None:
    table = json.loads((source / "thresholds.json").read_text())
    del table["TSLA"]
    table["DIA"] = {"Butterfly": 0.6}
    (source / "thresholds.json").write_text(json.dumps(table))
    (source / "thresholds_grouped.json").unlink()

    layout = scan_directory(source)

    by_name = {entry.name: entry for entry in layout.models}
    assert by_name["TSLA_trades"].thresholds == {"default": 0.5}
    assert by_name["RUT_IWM_combined"].thresholds == {"default": 0.5}
    assert "TSLA_trades_model.joblib: no entry in thresholds.json; threshold 0.5 for all" in (
        layout.notes
    )
    assert "RUT_IWM_combined_model.pkl: no thresholds_grouped.json; threshold 0.5 for all" in (
        layout.notes
    )
    assert "thresholds.json: DIA has no model; its thresholds are unused" in layout.notes


def test_bad_thresholds_are_all_reported(source: Path) -> None:
    (source / "thresholds.json").write_text(
        json.dumps({"SPX": {"Strangle": 0.5, "Butterfly": 1.5}, "SPY": 0.6, "QQQ": {"Sonar": "hi"}})
    )

    problems = scan_directory(source).problems

    assert len(problems) == 4
    assert any("['SPX']['Strangle']: unknown strategy 'Strangle'" in p for p in problems)
    assert any("['SPX']['Butterfly']: 1.5 is not a threshold within [0, 1]" in p for p in problems)
    assert any("['SPY'] is not an object" in p for p in problems)
    assert any("['QQQ']['Sonar']: 'hi' is not a threshold" in p for p in problems)


def test_names_the_layout_cannot_place_are_problems(tmp_path: Path, booster_file: Path) -> None:
    directory = tmp_path / "retraining"
    directory.mkdir()
    for name in ("SPX_Strangle_model.json", "SPX_model.json", "SPX_combined_model.json"):
        shutil.copy(booster_file, directory / name)
    shutil.copy(booster_file, directory / "SPY_Iron_Condor_model.json")
    shutil.copy(booster_file, directory / "SPY_IronCondor_model.json")
    (directory / "notes.txt").write_text("not a model")

    layout = scan_directory(directory)

    assert [entry.name for entry in layout.models] == ["SPY_IronCondor"]
    assert len(layout.problems) == 4
    assert any("SPX_Strangle_model.json: cannot tell" in p for p in layout.problems)
    assert any("SPX_model.json: cannot tell" in p for p in layout.problems)
    assert any("SPX_combined_model.json: cannot tell" in p for p in layout.problems)
    assert any(
        "SPY_Iron_Condor_model.json: serves the same orders as SPY_IronCondor_model.json" in p
        for p in layout.problems
    )


def test_a_model_saved_twice_is_converted_from_json_not_the_pickle(
    source: Path, built: RetrainingDirectory
) -> None:
    built.boosters["SPX_trades"].save_model(source / "SPX_trades_model.json")

    layout = scan_directory(source)

    chosen = next(entry for entry in layout.models if entry.name == "SPX_trades")
    assert chosen.path.name == "SPX_trades_model.json"
    assert "SPX_trades_model.pkl: not converted; SPX_trades_model.json is used instead" in (
        layout.notes
    )


def test_a_directory_converts_with_zero_missing_and_exact_parity(
    tmp_path: Path, source: Path, built: RetrainingDirectory
) -> None:
    out = tmp_path / "models"

    result = convert_directory(source, out, allow_pickle=True, known_features=_registry_check)

    assert [stored.manifest.name for stored in result.stored] == MODEL_NAMES
    assert all(stored.written for stored in result.stored)
    rng = np.random.default_rng(7)
    for stored in result.stored:
        manifest = read_manifest(stored.path / "manifest.json")
        assert manifest == stored.manifest
        assert manifest.missing == "zero"
        assert manifest.features == TRADES_SHEET_FEATURES
        assert manifest.parity.rows >= 10_000
        assert manifest.parity.max_abs_diff <= 1e-5
        assert manifest.source.xgboost_version == ".".join(xgboost.__version__.split(".")[:3])
        # The served model on the served rows (zero-filled) equals Booster.predict.
        symbol = manifest.symbols[-1]
        orders = sample_orders(
            rng, symbol, 50, manifest.strategies[0] if manifest.strategies else None
        )
        rows = model_rows(orders, manifest.features, zero_missing=True)
        session = onnxruntime.InferenceSession(str(stored.path / "model.onnx"))
        [served] = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
        np.testing.assert_allclose(
            served, predict(built.boosters[manifest.name], rows), atol=1e-5, rtol=0
        )


def test_a_second_conversion_of_the_same_directory_writes_nothing(
    tmp_path: Path, source: Path
) -> None:
    out = tmp_path / "models"
    convert_directory(source, out, allow_pickle=True)
    before = _files(out)

    again = convert_directory(source, out, allow_pickle=True)

    assert not any(stored.written for stored in again.stored)
    assert _files(out) == before


def test_only_a_changed_model_gets_a_new_version(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "models"
    convert_directory(source, out, allow_pickle=True)
    thresholds = json.loads((source / "thresholds.json").read_text())
    thresholds["QQQ"]["Sonar"] = 0.77
    (source / "thresholds.json").write_text(json.dumps(thresholds))

    again = convert_directory(source, out, allow_pickle=True)

    written = {
        stored.manifest.name: stored.manifest.version for stored in again.stored if stored.written
    }
    assert written == {"QQQ_trades": "v2"}
    assert read_manifest(out / "QQQ_trades" / "v2" / "manifest.json").thresholds["Sonar"] == 0.77


def test_missing_can_be_overridden(tmp_path: Path, source: Path) -> None:
    result = convert_directory(source, tmp_path / "models", allow_pickle=True, missing="nan")

    assert {stored.manifest.missing for stored in result.stored} == {"nan"}


def test_pickles_are_refused_without_the_flag_and_nothing_is_written(
    tmp_path: Path, source: Path
) -> None:
    out = tmp_path / "models"

    with pytest.raises(RetrainingError) as caught:
        convert_directory(source, out)

    [problem] = caught.value.problems
    assert problem.startswith("18 pickle(s) (AAPL_trades_features.pkl, AAPL_trades_model.joblib")
    assert "--allow-pickle" in problem
    assert _files(out) == []


def test_a_pickle_that_would_run_code_refuses_the_whole_directory(
    tmp_path: Path, source: Path
) -> None:
    target = tmp_path / "created-by-the-pickle"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(target), "w"))

    (source / "NDX_trades_model.pkl").write_bytes(pickle.dumps(Payload()))
    out = tmp_path / "models"

    with pytest.raises(RetrainingError) as caught:
        convert_directory(source, out, allow_pickle=True, known_features=_registry_check)

    assert caught.value.problems == [
        "NDX_trades_model.pkl: refused to unpickle: it refers to io.open, which is not admitted"
    ]
    assert "9 model(s) passed and were discarded" in str(caught.value)
    assert not target.exists()
    assert _files(out) == []


def test_unknown_features_of_every_model_are_reported_at_once(tmp_path: Path, source: Path) -> None:
    for name, unknown in (("SPY", ["moon_phase", "SPY_gamma"]), ("XSP", ["strategy_Strangle"])):
        names = list(TRADES_SHEET_FEATURES)
        names[3 : 3 + len(unknown)] = unknown
        (source / f"{name}_trades_features.pkl").write_bytes(pickle.dumps(names))
    out = tmp_path / "models"

    with pytest.raises(RetrainingError) as caught:
        convert_directory(source, out, allow_pickle=True, known_features=_registry_check)

    assert caught.value.problems == [
        "SPY_trades_model.pkl: unknown feature(s): 'moon_phase', 'SPY_gamma'",
        "XSP_trades_model.pkl: unknown feature(s): 'strategy_Strangle'",
    ]
    assert _files(out) == []


def test_a_truncated_model_file_refuses_the_directory(tmp_path: Path, source: Path) -> None:
    json_model = source / "SPX_Iron Condor_model.json"
    json_model.write_bytes(json_model.read_bytes()[:5000])
    pickled = source / "QQQ_trades_model.pkl"
    pickled.write_bytes(pickled.read_bytes()[:-100])
    out = tmp_path / "models"

    with pytest.raises(RetrainingError) as caught:
        convert_directory(source, out, allow_pickle=True)

    [first, second] = caught.value.problems
    assert first.startswith("QQQ_trades_model.pkl: refused to unpickle: pickle data was truncated")
    assert second.startswith("SPX_Iron Condor_model.json: not a readable XGBoost model")
    assert _files(out) == []


def test_a_parity_failure_refuses_the_directory(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert_tree = onnx_export.booster_to_onnx
    calls: list[int] = []

    def third_conversion_drops_a_tree(booster: xgboost.Booster, n_features: int) -> Any:
        # Stands in for a converter bug: the graph silently loses the last tree.
        calls.append(1)
        if len(calls) == 3:
            booster = booster[: booster.num_boosted_rounds() - 1]
        return convert_tree(booster, n_features)

    monkeypatch.setattr(onnx_export, "booster_to_onnx", third_conversion_drops_a_tree)
    out = tmp_path / "models"
    out.mkdir()

    with pytest.raises(RetrainingError) as caught:
        convert_directory(source, out, allow_pickle=True)

    [problem] = caught.value.problems
    assert problem.startswith("QQQ_trades_model.pkl: parity failed: ONNX differs from")
    assert _files(out) == []


def test_a_failed_write_takes_back_what_this_run_wrote(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    convert_directory(source, out, allow_pickle=True)
    before = _files(out)
    thresholds = json.loads((source / "thresholds.json").read_text())
    for symbol in ("AAPL", "NDX", "QQQ"):
        thresholds[symbol]["Sonar"] = 0.66
    (source / "thresholds.json").write_text(json.dumps(thresholds))
    store = onnx_export.store_model

    def disk_full_at_qqq(prepared: Any, repo: Path) -> Any:
        if prepared.manifest.name == "QQQ_trades":
            raise ConversionError(f"cannot write {repo / 'QQQ_trades' / 'v2'}: disk full")
        return store(prepared, repo)

    monkeypatch.setattr(retraining, "store_model", disk_full_at_qqq)

    with pytest.raises(RetrainingError, match="disk full"):
        convert_directory(source, out, allow_pickle=True)

    assert _files(out) == before


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RetrainingError, match=r"no \*_model"):
        convert_directory(tmp_path, tmp_path / "models")


def test_cli_converts_a_directory_with_the_registry_and_prints_the_table(
    tmp_path: Path, source: Path
) -> None:
    out = tmp_path / "models"

    result = CliRunner().invoke(main, ["convert", str(source), "--out", str(out), "--allow-pickle"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["status", "name", "version", "kind"]
    assert len(lines) == 1 + len(MODEL_NAMES) + 1
    row = next(line for line in lines if "SPX_Iron Condor" in line)
    assert row.split()[:2] == ["written", "SPX_Iron"]
    assert "symbol_strategy" in row
    assert f"Iron Condor={threshold_of('SPX', 'Iron Condor'):g}" in row
    assert lines[-1].startswith(f"10 new version(s), 0 unchanged, in {out}")

    again = CliRunner().invoke(main, ["convert", str(source), "--out", str(out), "--allow-pickle"])

    assert again.exit_code == 0
    assert again.stdout.splitlines()[-1].startswith("0 new version(s), 10 unchanged")


def test_cli_reports_unknown_features_through_the_real_registry(
    tmp_path: Path, source: Path
) -> None:
    names = [*TRADES_SHEET_FEATURES[:-2], "moon_phase", "SPX_gamma"]
    (source / "SPY_trades_features.pkl").write_bytes(pickle.dumps(names))
    out = tmp_path / "models"

    result = CliRunner().invoke(main, ["convert", str(source), "--out", str(out), "--allow-pickle"])

    assert result.exit_code == 1
    assert "nothing written" in result.output
    assert "SPY_trades_model.pkl: unknown feature(s): 'moon_phase', 'SPX_gamma'" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cli_refuses_single_file_options_for_a_directory(tmp_path: Path, source: Path) -> None:
    result = CliRunner().invoke(
        main, ["convert", str(source), "--out", str(tmp_path / "m"), "--kind", "symbol"]
    )

    assert result.exit_code == 2
    assert "--kind only apply to a single model file" in result.output


def test_cli_converts_a_single_pickle_with_a_pickled_feature_list(
    tmp_path: Path, source: Path
) -> None:
    out = tmp_path / "models"

    refused = CliRunner().invoke(
        main, ["convert", str(source / "SPX_trades_model.pkl"), "--out", str(out)]
    )
    result = CliRunner().invoke(
        main,
        [
            "convert", str(source / "SPX_trades_model.pkl"),
            "--out", str(out),
            "--allow-pickle",
            "--features", str(source / "SPX_trades_features.pkl"),
            "--kind", "symbol",
            "--symbols", "SPX",
        ],
    )  # fmt: skip

    assert refused.exit_code == 1
    assert "is a pickle; loading a pickle can run code" in refused.output
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out / "SPX_trades_model" / "v1" / "manifest.json")
    assert manifest.missing == "nan"
    assert manifest.features == TRADES_SHEET_FEATURES
    assert manifest.source.format == "pkl"


def test_convert_file_and_directory_share_the_pickle_refusal(source: Path) -> None:
    with pytest.raises(ConversionError, match="is a pickle"):
        retraining.load_model_file(source / "SPX_trades_model.pkl", allow_pickle=False)
    with pytest.raises(ConversionError, match="is a pickle"):
        retraining.load_feature_file(source / "SPX_trades_features.pkl", allow_pickle=False)


def test_only_the_command_line_flag_lets_pickles_in(tmp_path: Path, source: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["convert", str(source), "--out", str(tmp_path / "models")],
        env={"MAGIC8_CONVERT_ALLOW_PICKLE": "1"},
    )

    assert result.exit_code == 1
    assert "18 pickle(s)" in result.output
    assert not (tmp_path / "models").exists()
