"""Tests of the feature registry: layout, plans and error reporting."""

from __future__ import annotations

import pytest

from kernels.registry import (
    DEFAULT_UNIVERSE,
    MARKET_INDICATORS,
    ORDER_FEATURES,
    VIX_FEATURES,
    DuplicateFeatureError,
    FeatureRegistry,
    UnknownFeatureError,
)


def test_order_features_are_the_documented_fifty() -> None:
    assert len(ORDER_FEATURES) == 50
    assert len(set(ORDER_FEATURES)) == 50
    assert ORDER_FEATURES[9:13] == (
        "strategy_Butterfly",
        "strategy_Iron Condor",
        "strategy_Sonar",
        "strategy_Vertical",
    )
    assert ORDER_FEATURES[-1] == "predictions_aligned"


def test_market_columns_layout() -> None:
    registry = FeatureRegistry()
    assert registry.universe == DEFAULT_UNIVERSE
    for i, symbol in enumerate(DEFAULT_UNIVERSE):
        for k, indicator in enumerate(MARKET_INDICATORS):
            assert registry.market_columns[i * 6 + k] == f"{symbol}_{indicator}"
    vix_start = len(DEFAULT_UNIVERSE) * 6
    assert registry.market_columns[vix_start:] == VIX_FEATURES
    assert registry.names == ORDER_FEATURES + registry.market_columns


def test_universe_is_upper_cased_and_checked() -> None:
    assert FeatureRegistry(["spy", "qqq"]).universe == ("SPY", "QQQ")
    with pytest.raises(ValueError, match="SPY"):
        FeatureRegistry(["SPY", "spy"])
    with pytest.raises(ValueError, match="vix_bounds"):
        FeatureRegistry(vix_bounds=(20.0, 15.0, 25.0))


def test_plan_maps_every_name_to_its_column() -> None:
    registry = FeatureRegistry(["SPX", "QQQ", "TSLA"])
    names = ["QQQ_rsi", "hour", "vix_regime_high", "strategy_Iron Condor", "SPX_close"]
    plan = registry.plan(names)
    assert plan.names == tuple(names)
    assert plan.source.dtype.name == "int8"
    assert plan.index.dtype.name == "int64"
    assert plan.source.tolist() == [1, 0, 1, 0, 1]
    assert plan.index.tolist() == [
        1 * 6 + MARKET_INDICATORS.index("rsi"),
        ORDER_FEATURES.index("hour"),
        3 * 6 + VIX_FEATURES.index("vix_regime_high"),
        ORDER_FEATURES.index("strategy_Iron Condor"),
        0,
    ]
    assert plan.symbols == ("SPX", "QQQ")
    assert plan.needs_vix
    assert not plan.needs_order_price


def test_plan_of_everything_round_trips() -> None:
    registry = FeatureRegistry()
    plan = registry.plan(registry.names)
    sources = (ORDER_FEATURES, registry.market_columns)
    for name, source, index in zip(plan.names, plan.source, plan.index, strict=True):
        assert sources[source][index] == name
    assert plan.symbols == DEFAULT_UNIVERSE
    assert plan.needs_order_price


@pytest.mark.parametrize(
    ("name", "needs_price"),
    [("price", True), ("predictions_aligned", True), ("premium", False), ("risk", False)],
)
def test_plan_flags_order_price(name: str, needs_price: bool) -> None:
    plan = FeatureRegistry().plan([name])
    assert plan.needs_order_price is needs_price
    assert not plan.needs_vix
    assert plan.symbols == ()


def test_unknown_names_are_reported_all_at_once() -> None:
    registry = FeatureRegistry()
    with pytest.raises(UnknownFeatureError) as caught:
        registry.plan(["hour", "SPX_rsi_14", "strategy_Iron_Condor", "VIX_close", "vix"])
    assert caught.value.unknown == ["SPX_rsi_14", "strategy_Iron_Condor", "VIX_close"]
    for name in caught.value.unknown:
        assert repr(name) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_duplicates_are_refused() -> None:
    with pytest.raises(DuplicateFeatureError) as caught:
        FeatureRegistry().plan(["hour", "vix", "hour"])
    assert caught.value.duplicates == ["hour"]


def test_describe_every_name() -> None:
    registry = FeatureRegistry(vix_bounds=(12.0, 18.0, 30.0))
    for name in registry.names:
        text = registry.describe(name)
        assert text
        assert "\n" not in text
    assert "TSLA" in registry.describe("TSLA_sma_20")
    assert "18" in registry.describe("vix_regime_elevated")
    with pytest.raises(UnknownFeatureError):
        registry.describe("nope")
