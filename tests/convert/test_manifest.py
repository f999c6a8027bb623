"""Tests of the manifest: round trip, strict decoding and value rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest

from convert.manifest import (
    Manifest,
    ManifestError,
    ParityInfo,
    SourceInfo,
    read_manifest,
    sha256_file,
    write_manifest,
)


def _manifest(**overrides: object) -> Manifest:
    """Return a valid manifest with the given fields replaced."""
    fields: dict[str, object] = {
        "name": "SPX_Iron Condor",
        "version": "v3",
        "kind": "symbol_strategy",
        "symbols": ["SPX"],
        "strategies": ["Iron Condor"],
        "features": ["hour", "strategy_Iron Condor", "vix"],
        "missing": "nan",
        "thresholds": {"default": 0.5, "Iron Condor": 0.62},
        "onnx_sha256": "ab" * 32,
        "source": SourceInfo(
            file="SPX_Iron Condor_model.json",
            format="json",
            sha256="cd" * 32,
            xgboost_version="3.0.0",
            n_trees=200,
            max_depth=4,
            objective="binary:logistic",
            base_score=0.5,
        ),
        "converter": {"onnxmltools": "1.16.0", "opset": "15"},
        "parity": ParityInfo(
            rows=10_000, max_abs_diff=2.4e-7, rows_with_missing=4000, threshold_rows=3000
        ),
        "created": "2024-06-03T14:05:00+00:00",
        "metrics": {"auc": 0.71},
        "description": "test model",
    }
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    manifest = _manifest()

    write_manifest(path, manifest)

    assert read_manifest(path) == manifest


def test_written_json_is_stable(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"

    write_manifest(first, _manifest(thresholds={"default": 0.5, "Butterfly": 0.4}))
    write_manifest(second, _manifest(thresholds={"Butterfly": 0.4, "default": 0.5}))

    assert first.read_bytes() == second.read_bytes()
    assert first.read_text().endswith("}\n")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "portfolio"}, "kind 'portfolio' is not one of"),
        ({"missing": "mean"}, "missing 'mean' is not one of"),
        ({"thresholds": {"Butterfly": 0.5}}, "thresholds has no 'default' entry"),
        ({"thresholds": {"default": 1.2}}, r"thresholds\['default'\] = 1.2 is not within"),
        ({"thresholds": {"default": float("nan")}}, r"thresholds\['default'\] = nan"),
        ({"thresholds": {"default": 0.5, "Sonar": -0.1}}, r"thresholds\['Sonar'\]"),
        ({"features": []}, "features is empty"),
        ({"features": ["vix", "vix"]}, r"features lists \['vix'\] more than once"),
        ({"symbols": []}, "needs at least one symbol"),
        ({"strategies": []}, "needs at least one strategy"),
        ({"name": "../models"}, "name '../models' must be one plain path component"),
        ({"version": ".hidden"}, "version '.hidden' must be one plain path component"),
        ({"onnx_sha256": "ABC"}, "onnx_sha256 is not 64 lower-case hex digits"),
    ],
)
def test_invalid_values_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        _manifest(**overrides)


def test_default_kind_may_serve_everything() -> None:
    manifest = _manifest(kind="default", symbols=[], strategies=[])

    assert manifest.kind == "default"


def _rewrite(path: Path, **changes: object) -> None:
    """Replace top-level fields of a written manifest file."""
    raw = msgspec.json.decode(path.read_bytes())
    raw.update(changes)
    path.write_bytes(msgspec.json.encode(raw))


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    """A valid manifest file."""
    path = tmp_path / "manifest.json"
    write_manifest(path, _manifest())
    return path


def test_read_names_the_file_and_a_mistyped_field(manifest_path: Path) -> None:
    raw = msgspec.json.decode(manifest_path.read_bytes())
    raw["parity"]["rows"] = "10000"
    manifest_path.write_bytes(msgspec.json.encode(raw))

    with pytest.raises(ManifestError, match=r"manifest\.json.*`\$\.parity\.rows`"):
        read_manifest(manifest_path)


def test_read_refuses_unknown_fields(manifest_path: Path) -> None:
    _rewrite(manifest_path, owner="someone")

    with pytest.raises(ManifestError, match="unknown field `owner`"):
        read_manifest(manifest_path)


def test_read_refuses_missing_fields(manifest_path: Path) -> None:
    raw = msgspec.json.decode(manifest_path.read_bytes())
    del raw["onnx_sha256"]
    manifest_path.write_bytes(msgspec.json.encode(raw))

    with pytest.raises(ManifestError, match="missing required field `onnx_sha256`"):
        read_manifest(manifest_path)


def test_read_applies_the_value_rules(manifest_path: Path) -> None:
    _rewrite(manifest_path, kind="everything")

    with pytest.raises(ManifestError, match=r"manifest\.json.*kind 'everything'"):
        read_manifest(manifest_path)


def test_read_refuses_broken_json(manifest_path: Path) -> None:
    manifest_path.write_bytes(manifest_path.read_bytes()[:50])

    with pytest.raises(ManifestError, match=r"manifest\.json: invalid manifest"):
        read_manifest(manifest_path)


def test_read_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read the manifest"):
        read_manifest(tmp_path / "absent.json")


def test_manifest_error_is_a_value_error() -> None:
    assert issubclass(ManifestError, ValueError)
