"""Fixtures of the provider tests: the fake IB Gateway, the companion service, a live service."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import msgspec
import pytest

from inference.config import load_settings
from inference.schema import Order
from inference.service import Service, build_service
from tests.fakes.companion import CompanionService
from tests.fakes.ib_gateway import FakeGateway
from tests.fixtures import batch_of_32


def bot_batch(timestamp: datetime | None = None) -> list[Order]:
    """The bot's 32-order batch (8 symbols × 4 strategies), issued at ``timestamp`` or now."""
    return [msgspec.convert(order, Order) for order in batch_of_32(timestamp)]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float, step_s: float = 0.02
) -> float:
    """Poll ``check`` until it is true; return the seconds it took.

    Raises:
        AssertionError: still false after ``timeout_s``.
    """
    started = time.monotonic()
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)


@contextlib.asynccontextmanager
async def running_service(**overrides: Any) -> AsyncIterator[Service]:
    """Build and start the whole serving stack with settings ``overrides``; stop it after."""
    service = await asyncio.to_thread(build_service, load_settings(**overrides))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """A fake IB Gateway on a free port, streaming updates every 0.2 s."""
    fake = FakeGateway(update_interval_s=0.2)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
def companion() -> Iterator[CompanionService]:
    """A companion market-data service on a free port."""
    service = CompanionService()
    service.start()
    try:
        yield service
    finally:
        service.stop()
