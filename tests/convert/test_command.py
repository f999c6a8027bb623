"""Tests of convert_file, the summary table and the ``magic8 convert`` command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import pytest
import xgboost
from click.testing import CliRunner

from convert.command import KNOWN_FEATURES_KEY, convert_command, convert_file, print_summary
from convert.manifest import read_manifest
from convert.onnx_export import ConversionError
from tests.convert.boosters import FEATURES, train_booster


def _refuse_unknown(names: list[str]) -> None:
    """Stand in for the feature registry: knows FEATURES and nothing else."""
    unknown = [name for name in names if name not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features: {unknown}")


@pytest.fixture(scope="module")
def unnamed_booster() -> xgboost.Booster:
    """A booster saved without feature names, as some retraining scripts did."""
    return train_booster(n_trees=10, n_features=len(FEATURES))


def test_convert_file_takes_names_from_the_booster(tmp_path: Path, booster_file: Path) -> None:
    checked: list[list[str]] = []

    manifest = convert_file(
        booster_file,
        tmp_path / "models",
        name=None,
        kind="symbol",
        symbols=["SPX"],
        thresholds={"Iron Condor": 0.6},
        known_features=checked.append,
    )

    assert checked == [FEATURES]
    assert manifest.name == "SPX_trades_model"
    assert manifest.features == FEATURES
    assert manifest.thresholds == {"default": 0.5, "Iron Condor": 0.6}
    stored = read_manifest(tmp_path / "models" / "SPX_trades_model" / "v1" / "manifest.json")
    assert stored == manifest


def test_convert_file_uses_the_given_names_for_an_unnamed_booster(
    tmp_path: Path, unnamed_booster: xgboost.Booster
) -> None:
    source = tmp_path / "unnamed.ubj"
    unnamed_booster.save_model(source)

    manifest = convert_file(source, tmp_path / "models", name="SPY", feature_names=FEATURES)

    assert manifest.features == FEATURES
    assert manifest.source.format == "ubj"


def test_convert_file_needs_names_from_somewhere(
    tmp_path: Path, unnamed_booster: xgboost.Booster
) -> None:
    source = tmp_path / "unnamed.json"
    unnamed_booster.save_model(source)

    with pytest.raises(ConversionError, match="no feature names; give a feature list"):
        convert_file(source, tmp_path / "models", name="SPY")


def test_convert_file_refuses_conflicting_names(tmp_path: Path, booster_file: Path) -> None:
    with pytest.raises(ConversionError, match="differ from the feature list"):
        convert_file(
            booster_file, tmp_path / "models", name="SPX", feature_names=list(reversed(FEATURES))
        )


def test_convert_file_refuses_unknown_features_before_converting(
    tmp_path: Path, unnamed_booster: xgboost.Booster
) -> None:
    source = tmp_path / "unnamed.json"
    unnamed_booster.save_model(source)
    names = [*FEATURES[:-1], "moon_phase"]

    with pytest.raises(ConversionError, match=r"unknown features: \['moon_phase'\]"):
        convert_file(
            source,
            tmp_path / "models",
            name="SPY",
            feature_names=names,
            known_features=_refuse_unknown,
        )

    assert not (tmp_path / "models").exists()


def test_summary_lists_each_model(tmp_path: Path, booster_file: Path) -> None:
    manifest = convert_file(booster_file, tmp_path / "models", name="SPX", kind="default")
    out = io.StringIO()

    print_summary([manifest], file=out)

    header, row = out.getvalue().splitlines()
    assert header.split()[:4] == ["name", "version", "kind", "symbols"]
    assert row.split()[:7] == ["SPX", "v1", "default", "*", "*", str(len(FEATURES)), "40"]
    assert row.endswith("default=0.5")


def test_cli_converts_and_prints_the_table(tmp_path: Path, booster_file: Path) -> None:
    out = tmp_path / "models"

    result = CliRunner().invoke(
        convert_command,
        [
            str(booster_file),
            "--out", str(out),
            "--name", "SPX_Iron Condor",
            "--kind", "symbol_strategy",
            "--symbols", "SPX,SPY",
            "--strategies", "Iron Condor",
            "--threshold", "0.55",
            "--threshold", "Iron Condor=0.6",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "SPX_Iron Condor" in result.output
    assert "SPX,SPY" in result.output
    manifest = read_manifest(out / "SPX_Iron Condor" / "v1" / "manifest.json")
    assert manifest.symbols == ["SPX", "SPY"]
    assert manifest.strategies == ["Iron Condor"]
    assert manifest.thresholds == {"default": 0.55, "Iron Condor": 0.6}


def test_cli_reads_a_feature_file_and_the_registry_check(
    tmp_path: Path, unnamed_booster: xgboost.Booster
) -> None:
    source = tmp_path / "SPY_trades_model.json"
    unnamed_booster.save_model(source)
    features_file = tmp_path / "SPY_trades_features.json"
    features_file.write_text(json.dumps([*FEATURES[:-1], "moon_phase"]))

    @click.group()
    @click.pass_context
    def magic8(ctx: click.Context) -> None:
        ctx.meta[KNOWN_FEATURES_KEY] = _refuse_unknown

    magic8.add_command(convert_command)

    result = CliRunner().invoke(
        magic8,
        ["convert", str(source), "--out", str(tmp_path / "m"), "--features", str(features_file)],
    )

    assert result.exit_code != 0
    assert "unknown features: ['moon_phase']" in result.output
    assert not (tmp_path / "m").exists()


def test_cli_fails_with_one_line_for_a_bad_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"learner": {')

    result = CliRunner().invoke(convert_command, [str(broken), "--out", str(tmp_path / "m")])

    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "not a readable XGBoost model" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_cli_refuses_a_bad_threshold(tmp_path: Path, booster_file: Path) -> None:
    result = CliRunner().invoke(
        convert_command,
        [str(booster_file), "--out", str(tmp_path / "m"), "--threshold", "high"],
    )

    assert result.exit_code == 2
    assert "is not a number or STRATEGY=NUMBER" in result.output
