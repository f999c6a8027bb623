"""The full feature pass for a snapshot and a 32-order batch: Numba vs polars vs reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench import feature_passes

PASSES: dict[str, Callable[[feature_passes.FeatureInputs], feature_passes.FeatureOutputs]] = {
    "numba": feature_passes.numba_pass,
    "polars": feature_passes.polars_pass,
    "reference": feature_passes.reference_pass,
}


@pytest.mark.parametrize("name", list(PASSES))
def test_feature_pass(
    benchmark: Any, feature_inputs: feature_passes.FeatureInputs, name: str
) -> None:
    """Every pass computes the same values before one of them is timed."""
    expected = feature_passes.numba_pass(feature_inputs)
    assert feature_passes.max_difference(expected, PASSES[name](feature_inputs)) < 1e-9
    benchmark.group = "feature pass: 8 symbols + VIX, 32 orders"
    benchmark(PASSES[name], feature_inputs)
