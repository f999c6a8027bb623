"""The market-data provider contract: async snapshots of completed 5-minute bars."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import polars as pl

BAR_SECONDS = 300
BAR_NS = BAR_SECONDS * 1_000_000_000

#: Column layout every provider returns; ``start`` is the bar's start (IB convention), UTC.
BAR_SCHEMA: dict[str, pl.DataType] = {
    "start": pl.Datetime("ns", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}


class ProviderError(Exception):
    """A provider could not answer (connection, timeout, protocol); counts against its circuit."""


class NoMarketData(ProviderError):
    """The provider has no bars at all for this symbol; it never invents prices instead."""

    def __init__(self, provider: str, symbol: str) -> None:
        super().__init__(f"{provider} has no market data for {symbol}")
        self.provider = provider
        self.symbol = symbol


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """The last completed 5-minute bars of one symbol as of a decision time.

    Attributes:
        symbol: Upper-case ticker (``SPX``, ``VIX`` …).
        bars: Frame with :data:`BAR_SCHEMA`, sorted by ``start`` ascending, holding only bars
            whose ``start + 5 min <= requested as-of`` (no look-ahead), at most the count asked.
        as_of: Start time (UTC) of the newest bar in ``bars``.
        source: Name of the provider the bars came from (``synthetic``, ``replay`` …).
    """

    symbol: str
    bars: pl.DataFrame
    as_of: datetime
    source: str

    @property
    def last_close(self) -> float:
        """Close of the newest completed bar."""
        return float(self.bars["close"][-1])


class StaleData(ProviderError):
    """The provider holds bars but cannot vouch that they are current.

    Streaming providers raise it when their feed has gone silent or their link is down: the
    bars may look young on the exchange clock (at night the session's last bar is current),
    yet nothing guarantees a newer bar has not been missed. The market-data chain treats the
    snapshot as stale whatever its bar ages say: a fresh provider is preferred, and if none
    exists the answer carries ``stale: true`` (or is refused, per ``on_stale``).

    Attributes:
        snapshot: What the provider has, as it would have answered.
        reason: Why it cannot vouch for it (``feed heartbeat silent for 16.2 s`` …).
    """

    def __init__(self, snapshot: MarketSnapshot, reason: str) -> None:
        super().__init__(f"{snapshot.source} data for {snapshot.symbol} is not live: {reason}")
        self.snapshot = snapshot
        self.reason = reason


@runtime_checkable
class MarketDataProvider(Protocol):
    """What every market-data provider implements.

    Providers are async; ``snapshot`` must not block the event loop for long (the synthetic
    provider computes in microseconds per cached day; network providers await I/O).
    """

    name: str

    async def start(self) -> None:
        """Open connections / subscriptions; called once before serving."""

    async def close(self) -> None:
        """Release connections; called once at shutdown."""

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Return up to ``bars`` completed bars of ``symbol`` as of ``as_of`` (tz-aware).

        Raises:
            NoMarketData: the provider has no data for the symbol at that time.
            ProviderError: the provider failed to answer.
        """

    def health(self) -> dict[str, Any]:
        """Describe the provider's state for ``GET /health`` (name, state, data age …)."""
