"""Tests of the start-up warm-up of every kernel."""

from __future__ import annotations

from kernels import market, trade
from kernels.warmup import compile_all


def test_compile_all_compiles_every_kernel() -> None:
    assert compile_all() >= 0.0
    for kernel in (
        market._market_block_kernel,
        market._vix_block_kernel,
        trade._risk_reward_kernel,
        trade._order_features_kernel,
    ):
        # Writable and read-only (polars views) specialisations.
        assert len(kernel.signatures) >= 2, kernel
