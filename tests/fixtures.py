"""Shared test helpers: orders the bot sends, an in-process app, a free port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import falcon.testing

from inference.app import create_app
from inference.config import PROJECT_ROOT, Settings, load_settings

DEMO_REPOSITORY = PROJECT_ROOT / "models"
SYMBOLS = ("SPX", "SPY", "XSP", "NDX", "QQQ", "RUT", "AAPL", "TSLA")
#: A Tuesday at 11:07 New York (EST): the market is open and has 2+ sessions of history.
TUESDAY_MORNING = datetime(2025, 3, 4, 16, 7, 30, tzinfo=UTC)

#: Rough price levels per symbol, so strikes sit around the simulated market.
LEVEL = {
    "SPX": 5800.0,
    "SPY": 580.0,
    "XSP": 580.0,
    "NDX": 20500.0,
    "QQQ": 500.0,
    "RUT": 2200.0,
    "AAPL": 230.0,
    "TSLA": 350.0,
}

#: The seed's "Test batch endpoint" curl body (batch-endpoint-integration.md).
SEED_CURL_BODY: dict[str, Any] = {
    "requests": [
        {"symbol": "SPX", "strategy": "Butterfly", "premium": 24.82, "predicted_price": 5855},
        {"symbol": "SPX", "strategy": "Iron Condor", "premium": 0.65, "predicted_price": 5855},
    ]
}

PREDICTION_FIELDS = (
    "timestamp",
    "symbol",
    "strategy",
    "win_probability",
    "prediction",
    "data_source",
    "n_features",
    "threshold",
    "model_type",
    "model_version",
    "loss_probability",
    "confidence",
    "risk",
    "reward",
    "risk_reward_ratio",
    "data_as_of",
    "stale",
    "missing_features",
    "cached",
)


def order(symbol: str, strategy: str, when: datetime | None = None, **extra: Any) -> dict[str, Any]:
    """A Magic8-like order around the symbol's level, with strikes laid out per strategy."""
    level = LEVEL[symbol]
    step = level / 1000
    strikes = {
        "Butterfly": [level - 10 * step, level, level + 10 * step],
        "Iron Condor": [level - 30 * step, level - 15 * step, level + 15 * step, level + 30 * step],
        "Sonar": [level - 20 * step, level - 8 * step, level + 8 * step, level + 20 * step],
        "Vertical": [level - 20 * step, level - 10 * step],
    }[strategy]
    body: dict[str, Any] = {
        "symbol": symbol,
        "strategy": strategy,
        "premium": round({"Butterfly": 3.0, "Vertical": 1.1}.get(strategy, 2.0) * step, 2),
        "predicted_price": round(level * 1.002, 2),
        "strikes": [round(strike, 2) for strike in strikes],
    }
    if when is not None:
        body["timestamp"] = when.isoformat()
    body.update(extra)
    return body


def batch_of_32(when: datetime | None = TUESDAY_MORNING) -> list[dict[str, Any]]:
    """The bot's five-minute batch: 8 symbols × 4 strategies."""
    return [
        order(symbol, strategy, when)
        for symbol in SYMBOLS
        for strategy in ("Butterfly", "Iron Condor", "Sonar", "Vertical")
    ]


def demo_settings(repository: Path = DEMO_REPOSITORY, **sections: Any) -> Settings:
    """Settings on the embedded defaults, ignoring any config file of the developer's."""
    return load_settings(None, prediction={"models_dir": str(repository)}, **sections)


@asynccontextmanager
async def running_app(
    settings: Settings | None = None,
) -> AsyncIterator[falcon.testing.ASGIConductor]:
    """The ASGI app with its lifespan run (models loaded and warmed), in process."""
    app = create_app(settings or demo_settings())
    async with falcon.testing.ASGIConductor(app) as conductor:
        yield conductor


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
