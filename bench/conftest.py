"""Fixtures of the pytest-benchmark suites: ``pytest bench`` (``-m 'not server'`` skips HTTP).

The suites time the same set-ups ``magic8 bench`` uses, one case per test, for people who
want pytest-benchmark's tooling (``--benchmark-compare``, histograms). The CLI's own runner
interleaves compared cases in one loop and times coroutines inside the event loop, so its
ratios are the ones the gate trusts; here each awaited call also pays ``run_until_complete``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.cli import WORKER_THREAD_ENV

# One thread per native pool, as in a worker (before numba/polars/onnxruntime start theirs).
for _name, _value in WORKER_THREAD_ENV.items():
    os.environ.setdefault(_name, _value)

from bench import feature_passes  # noqa: E402
from bench.inprocess import Pipeline  # noqa: E402
from inference.config import Settings, load_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The configured settings; ``MAGIC8_BENCH_MODELS`` points at another repository."""
    models = os.environ.get("MAGIC8_BENCH_MODELS")
    if models:
        return load_settings(prediction={"models_dir": str(Path(models).resolve())})
    return load_settings()


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the whole session (the pipeline's caches live on it)."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="session")
def pipeline(settings: Settings, loop: asyncio.AbstractEventLoop) -> Iterator[Pipeline]:
    """Our data plane, started and warmed as a worker does."""
    built = Pipeline(settings)
    loop.run_until_complete(built.start())
    yield built
    loop.run_until_complete(built.service.stop())


@pytest.fixture(scope="session")
def routed(pipeline: Pipeline, loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The matrices the router hands onnxruntime for the 32-order batch."""
    return loop.run_until_complete(pipeline.routed_rows())


@pytest.fixture(scope="session")
def feature_inputs() -> feature_passes.FeatureInputs:
    """Bars of every symbol and the 32 orders as columns, at the benchmark's decision time."""
    return feature_passes.feature_inputs()
