"""Tests of the order-feature and risk/reward kernels against the reference, plus wrappers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.orders import OrderColumns
from kernels.reference import ReferenceOrder, risk_reward_one, temporal_features, trade_features
from kernels.registry import ORDER_FEATURES, STRATEGIES
from kernels.trade import MAX_T_NS, MIN_T_NS, order_features, risk_reward
from tests.kernels.helpers import assert_row_matches, order_columns, same

NS = 10**9
STRIKE_COUNT = {"Butterfly": 3, "Iron Condor": 4, "Sonar": 4, "Vertical": 2}
TEMPORAL = ORDER_FEATURES[:9]

_MISSING_OR = st.one_of(st.just(math.nan), st.floats(1.0, 8000.0))


def _t_ns(moment: datetime) -> int:
    return int(moment.timestamp()) * NS


@st.composite
def decision_times(draw: st.DrawFn) -> int:
    """Draw a time anywhere in range, or near a DST switch (8-14 March, 1-7 November)."""
    if draw(st.booleans()):
        return draw(st.integers(MIN_T_NS, MAX_T_NS - 1))
    day = datetime(
        draw(st.integers(2007, 2099)),
        draw(st.sampled_from([3, 11])),
        draw(st.integers(1, 15)),
        tzinfo=UTC,
    )
    return _t_ns(day) + draw(st.integers(0, 86_400 * NS - 1))


@st.composite
def orders(draw: st.DrawFn) -> ReferenceOrder:
    """Draw an order of any strategy, with or without strikes, risk, reward and delta data."""
    strategy = draw(st.sampled_from(STRATEGIES))
    count = draw(st.sampled_from([0, STRIKE_COUNT[strategy], STRIKE_COUNT[strategy], 2, 3, 4]))
    strikes = draw(st.lists(st.floats(10.0, 6000.0), min_size=count, max_size=count))
    price = draw(st.sampled_from([math.nan, 0.0, 5000.0, draw(st.floats(1.0, 6000.0))]))
    delta = st.one_of(st.just(math.nan), st.just(price), st.floats(1.0, 6000.0))
    return ReferenceOrder(
        t_ns=draw(decision_times()),
        strategy=strategy,
        action=draw(st.sampled_from(["BUY", "SELL"])),
        option_type=draw(st.sampled_from(["CALL", "PUT"])),
        quantity=float(draw(st.integers(1, 10))),
        premium=draw(st.one_of(st.floats(0.05, 50.0), st.just(0.0))),
        predicted=draw(st.floats(1.0, 6000.0)),
        price=price,
        strikes=strikes,
        risk=draw(st.one_of(st.just(math.nan), st.floats(-5000.0, 5000.0))),
        reward=draw(st.one_of(st.just(math.nan), st.floats(-5000.0, 5000.0))),
        short_term=draw(delta),
        long_term=draw(delta),
        expected_move=draw(_MISSING_OR),
        low=draw(_MISSING_OR),
        high=draw(_MISSING_OR),
        target1=draw(_MISSING_OR),
        target2=draw(_MISSING_OR),
        bids=draw(st.lists(_MISSING_OR, min_size=4, max_size=4)),
        asks=draw(st.lists(_MISSING_OR, min_size=4, max_size=4)),
    )


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(orders(), min_size=0, max_size=8))
def test_order_features_match_reference(batch: list[ReferenceOrder]) -> None:
    out = order_features(order_columns(batch))
    assert out.shape == (len(batch), len(ORDER_FEATURES))
    assert not np.isinf(out).any()
    for i, order in enumerate(batch):
        assert_row_matches(out[i], trade_features(order), ORDER_FEATURES, f"order {order}")


@settings(max_examples=300, deadline=None)
@given(times=st.lists(decision_times(), min_size=1, max_size=16))
def test_temporal_features_match_zoneinfo(times: list[int]) -> None:
    cols = OrderColumns.empty(len(times))
    cols.t_ns[:] = times
    out = order_features(cols)
    for i, t_ns in enumerate(times):
        assert_row_matches(out[i, :9], temporal_features(t_ns), TEMPORAL, f"t={t_ns}")


def test_temporal_features_at_every_dst_switch() -> None:
    # The switch instants of every supported year, found by zoneinfo's own offsets.
    times = []
    for year in range(2007, 2100):
        for month in (3, 11):
            start = datetime(year, month, 1, tzinfo=UTC)
            hours = [start + timedelta(hours=h) for h in range(24 * 15)]
            offsets = [temporal_features(_t_ns(h))["hour"] for h in hours]
            switch = next(
                h
                for h, prev, now in zip(hours[1:], offsets, offsets[1:], strict=False)
                if (now - prev) % 24 != 1
            )
            times += [_t_ns(switch) + delta for delta in (-NS, 0, NS, -3600 * NS)]
    cols = OrderColumns.empty(len(times))
    cols.t_ns[:] = times
    out = order_features(cols)
    for i, t_ns in enumerate(times):
        assert_row_matches(out[i, :9], temporal_features(t_ns), TEMPORAL, f"t={t_ns}")


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2024-07-01T09:29:59", (0, 0, 0, 0)),
        ("2024-07-01T09:30:00", (1, 1, 0, 390)),
        ("2024-07-01T15:30:00", (1, 0, 1, 30)),
        ("2024-07-01T15:59:59", (1, 0, 1, 1)),
        ("2024-07-01T16:00:00", (0, 0, 0, 0)),
        ("2024-07-06T12:00:00", (0, 0, 0, 0)),
    ],
)
def test_session_flags(local: str, expected: tuple[int, int, int, int]) -> None:
    cols = OrderColumns.empty(1)
    # July: New York is on EDT, UTC-4.
    cols.t_ns[0] = _t_ns(datetime.fromisoformat(local).replace(tzinfo=UTC) + timedelta(hours=4))
    row = dict(zip(ORDER_FEATURES, order_features(cols)[0], strict=True))
    assert (
        row["is_market_open"],
        row["is_open_30min"],
        row["is_close_30min"],
        row["minutes_to_close"],
    ) == expected


@settings(max_examples=150, deadline=None)
@given(order=orders())
def test_risk_reward_matches_reference(order: ReferenceOrder) -> None:
    cols = order_columns([order])
    actual = risk_reward(
        cols.strategy,
        cols.action,
        cols.option_type,
        cols.strikes,
        cols.n_strikes,
        cols.premium,
        cols.quantity,
    )
    expected = risk_reward_one(
        order["strategy"],
        order["action"],
        order["option_type"],
        order["strikes"],
        order["premium"],
        order["quantity"],
    )
    for name, got, want in zip(
        ("risk", "reward", "ratio", "be_low", "be_high"), actual, expected, strict=True
    ):
        assert same(float(got[0]), want), f"{name}: {got[0]} != {want}"


@pytest.mark.parametrize(
    ("strategy", "action", "option_type", "strikes", "premium", "expected"),
    [
        # Long butterfly 100/105/110 for 1.5: lose 150, make (5 - 1.5) * 100.
        ("Butterfly", "BUY", "CALL", [110, 100, 105], 1.5, (-150, 350, 350 / 150, 101.5, 108.5)),
        # Short iron condor, wider wing 10 wide, credit 2.
        ("Iron Condor", "SELL", "CALL", [90, 95, 105, 115], 2.0, (-800, 200, 0.25, 93, 107)),
        ("Vertical", "SELL", "PUT", [100, 95], 1.0, (-400, 100, 0.25, 99, 99)),
        ("Vertical", "BUY", "CALL", [100, 95], 1.0, (-100, 400, 4.0, 96, 96)),
        ("Sonar", "BUY", "CALL", [], 1.0, (math.nan,) * 5),
    ],
)
def test_risk_reward_known_structures(
    strategy: str,
    action: str,
    option_type: str,
    strikes: list[float],
    premium: float,
    expected: tuple[float, ...],
) -> None:
    cols = OrderColumns.empty(1)
    cols.strategy[0] = STRATEGIES.index(strategy)
    cols.action[0] = 0 if action == "BUY" else 1
    cols.option_type[0] = 0 if option_type == "CALL" else 1
    cols.strikes[0, : len(strikes)] = sorted(strikes)
    cols.n_strikes[0] = len(strikes)
    cols.premium[0] = premium
    actual = risk_reward(
        cols.strategy,
        cols.action,
        cols.option_type,
        cols.strikes,
        cols.n_strikes,
        cols.premium,
        cols.quantity,
    )
    for got, want in zip(actual, expected, strict=True):
        assert same(float(got[0]), want), (actual, expected)


def test_order_risk_and_reward_take_precedence() -> None:
    cols = OrderColumns.empty(1)
    cols.t_ns[0] = MIN_T_NS
    cols.strategy[0] = STRATEGIES.index("Vertical")
    cols.strikes[0, :2] = [95.0, 100.0]
    cols.n_strikes[0] = 2
    cols.premium[0] = 1.0
    cols.risk[0] = 250.0
    row = dict(zip(ORDER_FEATURES, order_features(cols)[0], strict=True))
    assert row["risk"] == -250.0
    assert row["reward"] == 400.0
    assert row["risk_reward_ratio"] == pytest.approx(1.6)


def test_order_columns_check_assignments() -> None:
    cols = OrderColumns.empty(2)
    with pytest.raises(ValueError, match="premium: expected dtype float64"):
        cols.premium = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"strikes: expected shape \(n, 4\)"):
        cols.strikes = np.zeros((2, 3))
    with pytest.raises(ValueError, match="bids: array must be C-contiguous"):
        cols.bids = np.zeros((4, 2)).T
    with pytest.raises(ValueError, match="t_ns: expected a numpy array"):
        cols.t_ns = [0, 0]  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        cols.symbol = np.zeros(2)  # type: ignore[attr-defined]


def test_order_features_name_bad_column_and_value() -> None:
    cols = OrderColumns.empty(2)
    cols.t_ns[:] = MIN_T_NS
    cols.price = np.zeros(3)
    with pytest.raises(ValueError, match="price: expected 2 rows"):
        order_features(cols)
    cols.price = np.zeros(2)
    cols.strategy[1] = 4
    with pytest.raises(ValueError, match=r"strategy\[1\]: invalid value 4"):
        order_features(cols)
    cols.strategy[1] = 0
    cols.n_strikes[0] = 1
    with pytest.raises(ValueError, match=r"n_strikes\[0\]"):
        order_features(cols)
    cols.n_strikes[0] = 0
    cols.t_ns[1] = MIN_T_NS - 1
    with pytest.raises(ValueError, match=r"t_ns\[1\].*outside the supported range"):
        order_features(cols)
    cols.t_ns[1] = MAX_T_NS
    with pytest.raises(ValueError, match=r"t_ns\[1\]"):
        order_features(cols)


def test_validate_names_the_column() -> None:
    cols = OrderColumns.empty(3)
    cols.validate()
    cols.target2 = np.zeros(4)
    with pytest.raises(ValueError, match="target2: expected 3 rows"):
        cols.validate()


def test_risk_reward_names_bad_argument() -> None:
    cols = OrderColumns.empty(2)
    arguments = [
        cols.strategy,
        cols.action,
        cols.option_type,
        cols.strikes,
        cols.n_strikes,
        cols.premium,
        cols.quantity,
    ]
    bad_quantity = [*arguments[:6], np.ones(2, dtype=np.int64)]
    with pytest.raises(ValueError, match="quantity: expected dtype float64"):
        risk_reward(*bad_quantity)
    bad_strikes = [*arguments[:3], np.zeros((1, 4)), *arguments[4:]]
    with pytest.raises(ValueError, match="strikes: expected 2 rows"):
        risk_reward(*bad_strikes)
    cols.action[0] = 2
    with pytest.raises(ValueError, match=r"action\[0\]: invalid value 2"):
        risk_reward(*arguments)


def test_empty_batch() -> None:
    assert order_features(OrderColumns.empty(0)).shape == (0, len(ORDER_FEATURES))
