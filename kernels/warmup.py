"""Compile (or load from Numba's disk cache) every kernel at start-up, never on a request."""

from __future__ import annotations

import time

import numpy as np

from kernels.market import market_block, vix_block
from kernels.orders import OrderColumns
from kernels.trade import MIN_T_NS, order_features, risk_reward

# 2024-01-02 15:00 UTC (a Tuesday, market open): inside the supported time range.
_T_NS = MIN_T_NS + 536_112_000 * 1_000_000_000


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _bars(n_symbols: int, per_symbol: int) -> tuple[np.ndarray, ...]:
    count = n_symbols * per_symbol
    starts = np.tile(_T_NS - np.arange(per_symbol, 0, -1, dtype=np.int64) * 300 * 10**9, n_symbols)
    close = 100.0 + np.arange(count, dtype=np.float64) % 7.0
    offsets = np.arange(0, count + 1, per_symbol, dtype=np.int64)
    return starts, close + 0.5, close - 0.5, close, offsets


def compile_all() -> float:
    """Run every kernel once on tiny inputs so none compiles while serving.

    Numba compiles one specialisation per argument type, and polars hands out read-only
    views, so each kernel is run with writable and with read-only arrays.

    Returns:
        Seconds taken (compilation, or loading from the on-disk cache).
    """
    began = time.perf_counter()
    starts, high, low, close, offsets = _bars(2, 30)
    orders = OrderColumns.empty(2)
    orders.t_ns[:] = _T_NS
    orders.premium[:] = 1.0
    for wrap in (np.ascontiguousarray, _readonly):
        market_block(wrap(starts), wrap(high), wrap(low), wrap(close), wrap(offsets), _T_NS)
        vix_block(wrap(starts[:30]), wrap(close[:30]), _T_NS, (15.0, 20.0, 25.0))
        risk_reward(
            wrap(orders.strategy),
            wrap(orders.action),
            wrap(orders.option_type),
            wrap(orders.strikes),
            wrap(orders.n_strikes),
            wrap(orders.premium),
            wrap(orders.quantity),
        )
        columns = OrderColumns(
            **{name: wrap(getattr(orders, name)) for name in OrderColumns.__slots__}
        )
        order_features(columns)
    return time.perf_counter() - began
