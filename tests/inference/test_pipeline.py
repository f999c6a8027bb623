"""The data plane without HTTP: features follow the order's time, never the future."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import numpy as np
import pytest

from inference.pipeline import Predictor
from inference.schema import Order
from inference.service import build_service
from tests.fixtures import TUESDAY_MORNING, batch_of_32, demo_settings, order


@pytest.fixture
async def predictor() -> AsyncIterator[Predictor]:
    service = build_service(demo_settings())
    await service.start()
    yield service.predictor
    await service.stop()


def as_order(body: dict[str, object]) -> Order:
    return msgspec.convert(body, Order)


async def test_a_different_timestamp_changes_temporal_and_market_features(
    predictor: Predictor,
) -> None:
    early = as_order(order("SPX", "Butterfly", TUESDAY_MORNING))
    later = as_order(order("SPX", "Butterfly", TUESDAY_MORNING + timedelta(hours=2, minutes=10)))
    inputs = await predictor.model_inputs([early, later], share_market_data=False)
    assert inputs[0] is not None
    assert inputs[1] is not None
    (label_a, row_a), (label_b, row_b) = inputs[0], inputs[1]
    names = predictor.models.models[0].manifest.features
    assert label_a == label_b
    changed = {name for name, a, b in zip(names, row_a, row_b, strict=True) if a != b}
    assert {"hour", "minutes_to_close"} <= changed
    assert {"SPX_close", "SPX_sma_20", "vix"} <= changed
    assert not changed & {"premium", "strike1", "strike4", "strategy_Butterfly"}


async def test_same_order_same_time_gives_the_same_row(predictor: Predictor) -> None:
    body = order("RUT", "Sonar", TUESDAY_MORNING)
    first = await predictor.model_inputs([as_order(body)])
    second = await predictor.model_inputs([as_order(body)])
    assert first[0] is not None
    assert second[0] is not None
    np.testing.assert_array_equal(first[0][1], second[0][1])


async def test_shared_snapshot_uses_the_earliest_time_so_no_order_sees_its_future(
    predictor: Predictor,
) -> None:
    early = order("SPX", "Vertical", TUESDAY_MORNING)
    late = order("SPX", "Vertical", TUESDAY_MORNING + timedelta(minutes=45))
    response = await predictor.predict_batch([as_order(early), as_order(late)], True)
    as_of = {p.data_as_of for p in response.predictions}
    assert len(as_of) == 1
    separate = await predictor.predict_batch([as_order(early), as_order(late)], False)
    assert len({p.data_as_of for p in separate.predictions}) == 2


async def test_batch_metrics_count_this_batch_only(predictor: Predictor) -> None:
    orders = [as_order(body) for body in batch_of_32()]
    first = await predictor.predict_batch(orders)
    second = await predictor.predict_batch(orders)
    assert first.batch_metrics.prediction_misses == 32
    assert first.batch_metrics.prediction_hits == 0
    assert second.batch_metrics.prediction_hits == 32
    assert second.batch_metrics.prediction_misses == 0
    # Nine symbols (eight plus VIX) each resolve one snapshot per batch.
    assert second.batch_metrics.market_data_hits == 9


async def test_missing_features_are_counted(predictor: Predictor) -> None:
    bare = as_order(
        {"symbol": "SPX", "strategy": "Butterfly", "premium": 2.0, "predicted_price": 5800}
    )
    full = as_order(order("SPX", "Butterfly", TUESDAY_MORNING))
    response = await predictor.predict_batch([bare, full])
    without, with_strikes = response.predictions
    assert without.missing_features > with_strikes.missing_features
