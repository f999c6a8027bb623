"""Rows that probe every split of a booster, for checking its ONNX conversion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost

MIN_PARITY_ROWS = 10_000

# Each split is probed at its threshold, at the neighbouring float32 values on both sides (where
# `x < t` flips) and a relative step either side (where a float64 -> float32 rounding would land).
_RELATIVE_STEP = 1e-6
# Share of cells in the mixed block that are missing, and one row in this many in that block is
# forced to hold at least one missing cell, so >= 10 % of all rows carry a NaN whatever the width.
_MISSING_CELL_SHARE = 0.15
_FORCED_MISSING_EVERY = 4
# Share of cells in the mixed block taken from the probes rather than drawn at random.
_PROBE_CELL_SHARE = 0.45
# The mixed block always holds the edge rows below, whatever n_rows asks for.
_MIN_MIXED_ROWS = 3


def unnamed_copy(booster: xgboost.Booster) -> xgboost.Booster:
    """Return a copy of a booster without feature names, so its splits read ``f0``, ``f1``, ...

    onnxmltools only understands those names, and the dump of an unnamed booster cannot be confused
    by names holding spaces or quotes.

    Args:
        booster: The booster to copy; it is left unchanged.

    Returns:
        The unnamed copy.
    """
    plain = booster.copy()
    plain.feature_names = None
    return plain


def _split_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the split (non-leaf) nodes of one dumped tree."""
    pending = [node]
    while pending:
        current = pending.pop()
        if "children" in current:
            yield current
            pending.extend(current["children"])


def dumped_trees(booster: xgboost.Booster) -> list[dict[str, Any]]:
    """Return the trees of a booster as parsed JSON dumps with ``fN`` feature names.

    Args:
        booster: The booster.

    Returns:
        One nested dict per tree.
    """
    return [json.loads(tree) for tree in unnamed_copy(booster).get_dump(dump_format="json")]


def tree_depth(tree: dict[str, Any]) -> int:
    """Return the depth of a dumped tree (a lone leaf has depth 0).

    Args:
        tree: One tree from `dumped_trees`.

    Returns:
        The number of splits on the longest root-to-leaf path.
    """
    children = tree.get("children", [])
    return 1 + max(tree_depth(child) for child in children) if children else 0


def split_thresholds(booster: xgboost.Booster) -> dict[int, npt.NDArray[np.float32]]:
    """Collect the distinct split thresholds of every feature over all trees.

    Args:
        booster: A booster with numerical splits only.

    Returns:
        Feature index -> sorted distinct float32 thresholds; features never split on are absent.

    Raises:
        ValueError: If a split is not a numerical ``x < threshold`` test (e.g. categorical).
    """
    collected: dict[int, list[float]] = {}
    for tree in dumped_trees(booster):
        for node in _split_nodes(tree):
            condition = node.get("split_condition")
            if not isinstance(condition, int | float) or isinstance(condition, bool):
                raise ValueError(f"split {node.get('nodeid')} is not numerical: {condition!r}")
            collected.setdefault(int(node["split"][1:]), []).append(float(condition))
    # XGBoost keeps thresholds as float32 and its dump prints enough digits to round-trip them.
    return {
        feature: np.unique(np.asarray(values, dtype=np.float32))
        for feature, values in collected.items()
    }


def _probes(thresholds: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Return the distinct values at and around each threshold, in float32."""
    below = np.nextafter(thresholds, np.float32(-np.inf))
    above = np.nextafter(thresholds, np.float32(np.inf))
    wide = thresholds.astype(np.float64)
    stepped_down = (wide - np.abs(wide) * _RELATIVE_STEP).astype(np.float32)
    stepped_up = (wide + np.abs(wide) * _RELATIVE_STEP).astype(np.float32)
    return np.unique(np.concatenate([thresholds, below, above, stepped_down, stepped_up]))


def _random_values(
    rng: np.random.Generator, thresholds: npt.NDArray[np.float32] | None, size: int
) -> npt.NDArray[np.float32]:
    """Draw values spread a little beyond the range of a feature's thresholds."""
    if thresholds is None:
        return rng.normal(size=size).astype(np.float32)
    low, high = float(thresholds[0]), float(thresholds[-1])
    margin = 0.25 * (high - low) if high > low else max(abs(low), 1.0)
    return rng.uniform(low - margin, high + margin, size=size).astype(np.float32)


def parity_rows(
    booster: xgboost.Booster, n_features: int, n_rows: int = MIN_PARITY_ROWS, seed: int = 0
) -> npt.NDArray[np.float32]:
    """Build float32 rows that probe every split of a booster, with missing values mixed in.

    The first block holds, for every feature, each of its probe values (every split threshold,
    the float32 neighbours on both sides and a relative step of 1e-6 either side) at least once,
    without missing values, the rest of the block being random probes of the same feature. The
    second block, at least as large as the first, mixes probes, random values around each
    feature's threshold range and missing values, with one row in four forced to hold a NaN.

    Args:
        booster: The booster whose splits are probed.
        n_features: Number of input columns.
        n_rows: Minimum number of rows; more are produced when needed to cover every split.
        seed: Seed of the random generator, so the rows are reproducible.

    Returns:
        A C-contiguous float32 array of shape ``(n, n_features)`` with ``n >= n_rows``.

    Raises:
        ValueError: If a split is not numerical, or ``n_features`` is below 1 or does not reach
            a split's feature index.
    """
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, not {n_features}")
    rng = np.random.default_rng(seed)
    thresholds = split_thresholds(booster)
    if thresholds and max(thresholds) >= n_features:
        raise ValueError(f"the booster splits on feature {max(thresholds)} of {n_features}")
    probes = {feature: _probes(values) for feature, values in thresholds.items()}
    coverage_rows = max((len(values) for values in probes.values()), default=0)
    mixed_rows = max(n_rows - coverage_rows, coverage_rows, _MIN_MIXED_ROWS)

    coverage = np.empty((coverage_rows, n_features), dtype=np.float32)
    mixed = np.empty((mixed_rows, n_features), dtype=np.float32)
    for feature in range(n_features):
        feature_probes = probes.get(feature)
        mixed[:, feature] = _random_values(rng, thresholds.get(feature), mixed_rows)
        if feature_probes is None:
            coverage[:, feature] = _random_values(rng, None, coverage_rows)
            continue
        spare = coverage_rows - len(feature_probes)
        coverage[:, feature] = rng.permutation(
            np.concatenate([feature_probes, rng.choice(feature_probes, size=spare)])
        )
        from_probes = rng.random(mixed_rows) < _PROBE_CELL_SHARE
        mixed[from_probes, feature] = rng.choice(feature_probes, size=int(from_probes.sum()))

    mixed[rng.random(mixed.shape) < _MISSING_CELL_SHARE] = np.nan
    forced = np.arange(0, mixed_rows, _FORCED_MISSING_EVERY)
    mixed[forced, rng.integers(0, n_features, size=len(forced))] = np.nan
    # Edge rows: everything missing (every default branch) and everything zero (a "zero" model's
    # view of an all-missing order).
    mixed[1] = np.nan
    mixed[2] = 0.0
    return np.ascontiguousarray(np.concatenate([coverage, mixed]))
