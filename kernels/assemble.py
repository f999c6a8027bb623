"""Gather a model's feature rows from the order matrix and the market vectors (train and serve)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registry import SOURCE_ORDER, FeaturePlan


@dataclass(frozen=True, slots=True)
class GatherMaps:
    """Precomputed column maps of a plan: where each model column is read from.

    Attributes:
        width: Number of model features.
        order_positions: Model columns read from the order feature matrix.
        order_columns: Their columns in the order feature matrix.
        market_positions: Model columns read from the market vector.
        market_columns: Their columns in the market vector.
    """

    width: int
    order_positions: np.ndarray
    order_columns: np.ndarray
    market_positions: np.ndarray
    market_columns: np.ndarray

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
    # PERF: two fancy-index copies fill the whole batch; no per-order Python work.
    matrix = np.empty((rows.shape[0], maps.width), dtype=np.float32)
    matrix[:, maps.order_positions] = order_matrix[np.ix_(rows, maps.order_columns)]
    matrix[:, maps.market_positions] = market_matrix[np.ix_(views, maps.market_columns)]
    missing_mask = np.isnan(matrix)
    missing = missing_mask.sum(axis=1)
    if zero_missing:
        matrix[missing_mask] = 0.0
    return matrix, missing
