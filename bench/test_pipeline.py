"""The 32-order batch in process, bytes in → bytes out: warm, cold, cached, and the peer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.inprocess import Pipeline
from bench.peers.previous_design import Magic8Predictor


def test_warm(benchmark: Any, pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> None:
    """Market data and feature blocks cached; every prediction computed (SPEC §8's case)."""
    pipeline.stages.clear()
    benchmark.group = "pipeline: 32 orders, 8 symbols × 4 strategies"
    benchmark(lambda: loop.run_until_complete(pipeline.handle_next()))
    benchmark.extra_info["stage_medians_us"] = pipeline.stage_medians_us()


def test_cold(benchmark: Any, pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> None:
    """Market data, feature blocks and predictions all forgotten before each batch."""
    body = pipeline.bodies[0]
    benchmark.group = "pipeline: 32 orders, 8 symbols × 4 strategies"
    benchmark.pedantic(
        lambda: loop.run_until_complete(pipeline.handle(body)),
        setup=pipeline.clear_caches,
        rounds=50,
        warmup_rounds=2,
    )


def test_cached(benchmark: Any, pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> None:
    """The same batch again: every order from the prediction cache."""
    body = pipeline.bodies[0]
    loop.run_until_complete(pipeline.handle(body))
    benchmark.group = "pipeline: 32 orders, 8 symbols × 4 strategies"
    benchmark(lambda: loop.run_until_complete(pipeline.handle(body)))


def test_previous_design(
    benchmark: Any, pipeline: Pipeline, routed: list[Any], loop: asyncio.AbstractEventLoop
) -> None:
    """The previous design's pipeline on the same bodies with the same booster."""
    model_dir: Path = routed[0][0].path
    peer = Magic8Predictor(model_dir)
    bodies = pipeline.bodies
    state = {"next": 0}

    def call() -> bytes:
        state["next"] = (state["next"] + 1) % len(bodies)
        return loop.run_until_complete(peer.predict_batch_bytes(bodies[state["next"]]))

    benchmark.group = "pipeline: 32 orders, 8 symbols × 4 strategies"
    benchmark.pedantic(call, rounds=5, warmup_rounds=1)
