"""Shared helpers for the kernel tests: NaN-aware comparison and building order batches."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from kernels._checks import F8
from kernels.orders import COLUMN_LAYOUT, OrderColumns
from kernels.reference import ReferenceOrder
from kernels.registry import STRATEGIES

REL_TOL = 1e-9
# Sample std of near-identical returns is ~1e-17 and only its rounding differs between a
# two-pass float sum and statistics.stdev's exact arithmetic; prices never get this small.
ABS_TOL = 1e-12


def same(actual: float, expected: float) -> bool:
    """Return whether two feature values agree (NaN equals NaN)."""
    if math.isnan(expected):
        return math.isnan(actual)
    return math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def assert_row_matches(
    actual: Sequence[float] | np.ndarray,
    expected: dict[str, float],
    names: Sequence[str],
    context: str,
) -> None:
    """Assert a kernel output row equals the reference values, feature by feature."""
    mismatched = [
        f"{name}: kernel {actual[k]!r} != reference {expected[name]!r}"
        for k, name in enumerate(names)
        if not same(float(actual[k]), expected[name])
    ]
    assert not mismatched, f"{context}\n" + "\n".join(mismatched)


#: The one-dimensional float columns, copied from a reference order field by field.
SCALAR_FIELDS = tuple(
    name for name, (dtype, width) in COLUMN_LAYOUT.items() if dtype == F8 and width == 0
)


def order_columns(orders: Sequence[ReferenceOrder]) -> OrderColumns:
    """Build the kernel's column batch from reference orders."""
    cols = OrderColumns.empty(len(orders))
    for i, order in enumerate(orders):
        cols.t_ns[i] = order["t_ns"]
        cols.strategy[i] = STRATEGIES.index(order["strategy"])
        cols.action[i] = 0 if order["action"] == "BUY" else 1
        cols.option_type[i] = 0 if order["option_type"] == "CALL" else 1
        strikes = sorted(order["strikes"])
        cols.strikes[i, : len(strikes)] = strikes
        cols.n_strikes[i] = len(strikes)
        fields: Mapping[str, object] = order  # read by computed name below
        for name in SCALAR_FIELDS:
            getattr(cols, name)[i] = fields[name]
        cols.bids[i] = order["bids"]
        cols.asks[i] = order["asks"]
    return cols


def csr(
    series: Sequence[tuple[list[int], list[float], list[float], list[float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate per-symbol (starts, high, low, close) lists into the CSR kernel layout."""
    lengths = [len(starts) for starts, _, _, _ in series]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    columns = [
        np.array([value for one in series for value in one[k]], dtype=dtype)
        for k, dtype in enumerate((np.int64, np.float64, np.float64, np.float64))
    ]
    return columns[0], columns[1], columns[2], columns[3], offsets
