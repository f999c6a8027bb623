"""onnxruntime vs XGBoost ``inplace_predict``, one thread each: routed rows and batch 1/32/1000."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime
import pytest
import xgboost

from bench.peers.previous_design import _booster_file
from bench.workload import ReferenceBooster, reference_booster
from inference.repository import session_options


def _booster(path: Any) -> xgboost.Booster:
    booster = xgboost.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})
    return booster


@pytest.fixture(scope="module")
def reference() -> ReferenceBooster:
    """The 300-tree, depth-6, 85-feature booster and its ONNX graph."""
    return reference_booster()


@pytest.mark.parametrize("runtime", ["onnxruntime", "xgboost"])
def test_routed_rows(benchmark: Any, routed: list[Any], runtime: str) -> None:
    """The rows the router produces for the 32-order batch, on the model it routes them to."""
    model, matrix = routed[0]
    benchmark.group = f"inference: routed {matrix.shape[0]} rows, {model.label}"
    if runtime == "onnxruntime":
        feed, output = {model.input_name: matrix}, [model.output_name]
        benchmark(model.session.run, output, feed)
    else:
        booster = _booster(_booster_file(model.path, model.manifest))
        benchmark(booster.inplace_predict, matrix)


@pytest.mark.parametrize("batch", [1, 32, 1000])
@pytest.mark.parametrize("runtime", ["onnxruntime", "xgboost"])
def test_reference_booster(
    benchmark: Any, reference: ReferenceBooster, runtime: str, batch: int
) -> None:
    """The reference booster at one batch size; both runtimes agree within 1e-5."""
    rows = np.ascontiguousarray(reference.rows[:batch])
    session = onnxruntime.InferenceSession(
        reference.onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    booster = _booster(reference.booster_path)
    name = session.get_inputs()[0].name
    ort_out = session.run(None, {name: rows})[0]
    assert np.max(np.abs(ort_out - booster.inplace_predict(rows))) < 1e-5
    benchmark.group = f"inference: reference booster, batch {batch}"
    if runtime == "onnxruntime":
        benchmark(session.run, None, {name: rows})
    else:
        benchmark(booster.inplace_predict, rows)
