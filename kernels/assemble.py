"""Gather a model's feature rows from the order matrix and the market vectors (train and serve)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registry import ORDER_FEATURES, SOURCE_ORDER, FeaturePlan

_N_ORDER = len(ORDER_FEATURES)


@dataclass(frozen=True, slots=True)
class GatherMaps:
    """Precomputed column maps of a plan: where each model column is read from.

    Attributes:
        width: Number of model features.
        order_positions: Model columns read from the order feature matrix.
        order_columns: Their columns in the order feature matrix.
        market_positions: Model columns read from the market vector.
        market_columns: Their columns in the market vector.
        source_columns: Each model column's position in an order row followed by a market
            vector (order columns first, then market columns offset by the order width).
    """

    width: int
    order_positions: np.ndarray
    order_columns: np.ndarray
    market_positions: np.ndarray
    market_columns: np.ndarray
    source_columns: np.ndarray

    @classmethod
    def of(cls, plan: FeaturePlan) -> GatherMaps:
        """Build the maps of ``plan``."""
        from_order = plan.source == SOURCE_ORDER
        return cls(
            width=len(plan.names),
            order_positions=np.flatnonzero(from_order),
            order_columns=plan.index[from_order],
            market_positions=np.flatnonzero(~from_order),
            market_columns=plan.index[~from_order],
            source_columns=np.where(from_order, plan.index, plan.index + _N_ORDER).astype(np.intp),
        )


def assemble(
    maps: GatherMaps,
    order_matrix: np.ndarray,
    market_matrix: np.ndarray,
    rows: np.ndarray,
    views: np.ndarray,
    zero_missing: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Build float32 model rows and count the missing features of each.

    Args:
        maps: The model's gather maps.
        order_matrix: float64 (n_orders, len(ORDER_FEATURES)) from ``order_features``.
        market_matrix: float64 (n_views, len(market_columns)): one market vector per as-of.
        rows: intp indices of the orders to assemble.
        views: intp market-vector index of each of those orders.
        zero_missing: Fill missing values with 0 (models trained that way), after counting.

    Returns:
        ``(matrix, missing)``: float32 C-contiguous (len(rows), width), and int64 counts.
    """
    if order_matrix.shape[1] != _N_ORDER:
        raise ValueError(
            f"order_matrix: expected {_N_ORDER} columns (ORDER_FEATURES), got {order_matrix.shape}"
        )
    # PERF: gather the rows of each source side by side, then one column take() in model
    # order and one cast to float32: ~15 µs for 32 orders, where two np.ix_ scatters into
    # the output took ~30 µs. No per-order Python work either way.
    source = np.concatenate((order_matrix[rows], market_matrix[views]), axis=1)
    matrix = source.take(maps.source_columns, axis=1).astype(np.float32)
    missing_mask = np.isnan(matrix)
    missing = missing_mask.sum(axis=1)
    if zero_missing:
        matrix[missing_mask] = 0.0
    return matrix, missing
