"""Tests of the parity rows: coverage of every split, missing values, float32 branching."""

from __future__ import annotations

import numpy as np
import xgboost

from convert.onnx_export import booster_to_onnx, parity_check
from convert.parity import MIN_PARITY_ROWS, parity_rows, split_thresholds, unnamed_copy
from tests.convert.boosters import FEATURES, train_booster


def test_rows_are_float32_and_at_least_the_minimum(booster: xgboost.Booster) -> None:
    rows = parity_rows(booster, len(FEATURES))

    assert rows.dtype == np.float32
    assert rows.flags.c_contiguous
    assert rows.shape[0] >= MIN_PARITY_ROWS
    assert rows.shape[1] == len(FEATURES)


def test_rows_carry_missing_values_in_at_least_a_tenth(booster: xgboost.Booster) -> None:
    rows = parity_rows(booster, len(FEATURES))

    assert np.isnan(rows).any(axis=1).mean() >= 0.10
    assert np.isnan(rows).all(axis=1).any()


def test_missing_share_holds_for_a_single_feature() -> None:
    single = train_booster(n_trees=30, max_depth=3, n_features=1)

    rows = parity_rows(single, 1)

    assert np.isnan(rows).any(axis=1).mean() >= 0.10


def test_every_threshold_and_its_neighbours_appear_in_its_column(
    booster: xgboost.Booster,
) -> None:
    rows = parity_rows(booster, len(FEATURES))

    for feature, thresholds in split_thresholds(booster).items():
        column = rows[:, feature]
        for probe in (
            thresholds,
            np.nextafter(thresholds, np.float32(-np.inf)),
            np.nextafter(thresholds, np.float32(np.inf)),
        ):
            assert np.isin(probe, column).all(), f"feature {feature} lacks a probe"


def test_thresholds_cover_every_split_of_every_tree(booster: xgboost.Booster) -> None:
    frame_splits = {
        (int(line.split("[f")[1].split("<")[0]), np.float32(line.split("<")[1].split("]")[0]))
        for tree in unnamed_copy(booster).get_dump()
        for line in tree.splitlines()
        if "[f" in line
    }
    thresholds = split_thresholds(booster)

    assert frame_splits
    for feature, threshold in frame_splits:
        assert threshold in thresholds[feature]


def test_rows_grow_to_cover_many_thresholds() -> None:
    # Overfitting noise with the exact method on one continuous feature learns far more distinct
    # thresholds than n_rows / 5, so covering each with five probes needs more rows than asked.
    rng = np.random.default_rng(1)
    values = rng.normal(size=(4000, 1)).astype(np.float32)
    labels = rng.integers(0, 2, size=4000)
    dense = xgboost.train(
        {
            "objective": "binary:logistic",
            "max_depth": 8,
            "tree_method": "exact",
            "min_child_weight": 0,
            "nthread": 1,
        },
        xgboost.DMatrix(values, label=labels),
        num_boost_round=60,
    )
    thresholds = split_thresholds(dense)[0]

    rows = parity_rows(dense, 1, n_rows=1000)

    assert len(thresholds) * 5 > 1000
    assert rows.shape[0] >= 2 * len(thresholds)
    assert np.isin(thresholds, rows[:, 0]).all()


def test_rows_are_reproducible_for_a_seed(booster: xgboost.Booster) -> None:
    first = parity_rows(booster, len(FEATURES), seed=3)
    again = parity_rows(booster, len(FEATURES), seed=3)
    other = parity_rows(booster, len(FEATURES), seed=4)

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other, equal_nan=True)


def test_float32_values_branch_identically_at_a_threshold() -> None:
    # One stump on one feature: x < t goes left in XGBoost and BRANCH_LT in onnxruntime. A value
    # exactly at t must go right in both, its float32 predecessor left in both.
    values = np.linspace(-1.0, 1.0, 401, dtype=np.float32).reshape(-1, 1)
    labels = (values[:, 0] > 0.123).astype(np.int64)
    stump = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 1, "nthread": 1},
        xgboost.DMatrix(values, label=labels),
        num_boost_round=1,
    )
    threshold = split_thresholds(stump)[0][0]
    probes = np.array(
        [
            [np.nextafter(threshold, np.float32(-np.inf))],
            [threshold],
            [np.nextafter(threshold, np.float32(np.inf))],
            [np.nan],
        ],
        dtype=np.float32,
    )
    onnx_bytes = booster_to_onnx(stump, 1).SerializeToString()

    expected = stump.predict(xgboost.DMatrix(probes, missing=np.nan))
    parity = parity_check(stump, onnx_bytes, probes)

    assert expected[0] != expected[1]
    assert expected[1] == expected[2]
    assert parity.max_abs_diff <= 1e-7
    assert parity.threshold_rows == 1
    assert parity.rows_with_missing == 1
