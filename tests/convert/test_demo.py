"""The committed demo model: its manifest, its ONNX/XGBoost parity, and its reproducibility."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime as ort
import pytest
import xgboost

from convert.demo import build_demo_model
from convert.manifest import read_manifest, sha256_file
from inference.schema import Order
from inference.service import build_service
from tests.fixtures import DEMO_REPOSITORY, TUESDAY_MORNING, batch_of_32, demo_settings

VERSION_DIR = max((DEMO_REPOSITORY / "demo").iterdir(), key=lambda path: path.name)


def test_manifest_records_held_out_auc_and_parity() -> None:
    manifest = read_manifest(VERSION_DIR / "manifest.json")
    assert manifest.kind == "default"
    assert 0.6 < manifest.metrics["auc_holdout"] <= 1.0
    assert manifest.parity.rows >= 10_000
    assert manifest.parity.max_abs_diff <= 1e-5
    assert manifest.parity.rows_with_missing > 0
    assert manifest.onnx_sha256 == sha256_file(VERSION_DIR / "model.onnx")
    assert set(manifest.thresholds) == {"default", "Butterfly", "Iron Condor", "Sonar", "Vertical"}


async def test_onnx_equals_xgboost_on_the_rows_the_server_builds() -> None:
    service = build_service(demo_settings())
    await service.start()
    orders = [
        msgspec.convert(body, Order)
        for hours in (0, 1, 3, 4.5)
        for body in batch_of_32(TUESDAY_MORNING + timedelta(hours=hours))
    ]
    inputs = await service.predictor.model_inputs(orders, share_market_data=False)
    await service.stop()
    rows = np.stack([entry[1] for entry in inputs if entry is not None])
    assert rows.shape == (128, 82)
    booster = xgboost.Booster()
    booster.load_model(VERSION_DIR / "booster.json")
    names = read_manifest(VERSION_DIR / "manifest.json").features
    expected = booster.predict(xgboost.DMatrix(rows, missing=np.nan, feature_names=names))
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"))
    (actual,) = session.run(None, {session.get_inputs()[0].name: rows})
    np.testing.assert_allclose(np.ravel(actual), expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.05


@pytest.mark.slow
def test_committed_model_is_what_the_command_produces(tmp_path: Path) -> None:
    manifest = build_demo_model(tmp_path)
    committed = read_manifest(VERSION_DIR / "manifest.json")
    assert manifest.onnx_sha256 == committed.onnx_sha256
    assert manifest.metrics == committed.metrics
    assert manifest.thresholds == committed.thresholds
