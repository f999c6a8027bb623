"""Market data for the pipeline: the provider chain, circuit breakers, staleness and the cache."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from providers.base import (
    MarketDataProvider,
    MarketSnapshot,
    NoMarketData,
    ProviderError,
    StaleData,
)
from providers.calendar import is_stale, last_completed_bar_start, next_bar_boundary

from .cache import TTLCache
from .errors import Unavailable

log = logging.getLogger(__name__)

#: Longest reuse of a snapshot that lacks the newest completed bar (it may arrive any moment).
LAGGING_TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class ResolvedSnapshot:
    """A snapshot together with the verdict on its age."""

    snapshot: MarketSnapshot
    stale: bool


class CircuitBreaker:
    """Opens after consecutive failures; lets one trial through after a cool-down."""

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Whether a call may be made now."""
        return self.state != "open"

    def record_success(self) -> None:
        """Close the circuit."""
        self.failures = 0
        self.opened_at = None

    def record_failure(self) -> None:
        """Count a failure; open (or re-open after a failed trial) at the threshold."""
        self.failures += 1
        if self.failures >= self.failure_threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()


@dataclass(eq=False)
class ProviderSlot:
    """One provider of the chain with its staleness limit and breaker.

    Attributes:
        cache_ttl_s: Longest a snapshot of this provider is reused; None reuses it until the
            next bar completes. Streaming providers answer from memory, so a short reuse
            costs little and lets a dead feed show within seconds.
    """

    provider: MarketDataProvider
    max_staleness_s: float
    breaker: CircuitBreaker
    cache_ttl_s: float | None = None
    errors: int = 0
    last_error: str | None = None
    last_as_of: datetime | None = None


class MarketData:
    """Resolves snapshots through ``primary`` then each fallback, honestly.

    A provider that fails, has no data, or is stale is passed over for the next; when only
    stale data exists it is returned flagged (``on_stale="flag"``) or refused with 503.
    """

    def __init__(
        self,
        slots: Sequence[ProviderSlot],
        cache: TTLCache[MarketSnapshot],
        history_bars: int,
        on_stale: str = "flag",
    ) -> None:
        self.slots = tuple(slots)
        self.cache = cache
        self.history_bars = history_bars
        self.on_stale = on_stale

    async def start(self) -> None:
        """Start every provider of the chain."""
        for slot in self.slots:
            await slot.provider.start()

    async def close(self) -> None:
        """Close every provider of the chain."""
        for slot in self.slots:
            await slot.provider.close()

    async def resolve_many(
        self, symbols: Sequence[str], as_of: datetime
    ) -> dict[str, ResolvedSnapshot | None]:
        """Resolve several symbols at one as-of time; None where no provider has data."""
        answered = self._fresh_from_cache(symbols, as_of)
        if answered is not None:
            return answered
        if len(symbols) == 1:
            return {symbols[0]: await self.resolve(symbols[0], as_of)}
        results = await asyncio.gather(*(self.resolve(symbol, as_of) for symbol in symbols))
        return dict(zip(symbols, results, strict=True))

    def _fresh_from_cache(
        self, symbols: Sequence[str], as_of: datetime
    ) -> dict[str, ResolvedSnapshot | None] | None:
        """Answer every symbol from the first provider's cache, or None to take the full path.

        PERF: between bar completions every symbol of a batch is cached; gathering one task
        per symbol costs ~25 µs each (9 symbols: most of the market-data stage), these
        lookups ~1 µs. Only a snapshot holding the newest completed bar qualifies: its lag is
        0, so it is fresh under any staleness limit, and the chain would have returned it.
        """
        slot = self.slots[0]
        bar_key = last_completed_bar_start(as_of)
        clock = time.monotonic()
        keys = [(slot.provider.name, symbol, bar_key) for symbol in symbols]
        for key in keys:
            snapshot = self.cache.peek(key, clock)
            if snapshot is None or snapshot.as_of != bar_key:
                return None
        answered: dict[str, ResolvedSnapshot | None] = {}
        for key in keys:
            # get() again to count the hit and refresh recency, as the full path would.
            snapshot = self.cache.get(key, clock)
            assert snapshot is not None  # peeked at the same clock just above
            answered[key[1]] = ResolvedSnapshot(snapshot, stale=False)
        return answered

    async def resolve(self, symbol: str, as_of: datetime) -> ResolvedSnapshot | None:
        """Return the freshest snapshot the chain has for ``symbol`` as of ``as_of``.

        Raises:
            Unavailable: only stale data exists and ``on_stale`` is ``reject``.
        """
        bar_key = last_completed_bar_start(as_of)
        stale_answer: ResolvedSnapshot | None = None
        for slot in self.slots:
            fetched = await self._fetch(slot, symbol, as_of, bar_key)
            if fetched is None:
                continue
            snapshot, not_live = fetched
            stale = not_live or is_stale(snapshot.as_of, as_of, slot.max_staleness_s)
            if not stale:
                return ResolvedSnapshot(snapshot, stale=False)
            stale_answer = stale_answer or ResolvedSnapshot(snapshot, stale=True)
        if stale_answer is not None and self.on_stale == "reject":
            raise Unavailable(
                f"only stale market data for {symbol} "
                f"(newest bar {stale_answer.snapshot.as_of.isoformat()})",
                retry_after=30,
            )
        return stale_answer

    async def _fetch(
        self, slot: ProviderSlot, symbol: str, as_of: datetime, bar_key: datetime
    ) -> tuple[MarketSnapshot, bool] | None:
        """Ask one provider (or the cache); return the snapshot and whether it is not live."""
        key = (slot.provider.name, symbol, bar_key)
        clock = time.monotonic()
        cached = self.cache.get(key, clock)
        if cached is not None:
            return cached, False
        if not slot.breaker.allow():
            return None
        try:
            snapshot = await slot.provider.snapshot(symbol, as_of, self.history_bars)
        except NoMarketData:
            # Not a failure of the provider: it answered, with nothing.
            slot.breaker.record_success()
            return None
        except StaleData as ex:
            # The provider answered honestly that its feed is down. Not a circuit failure:
            # asking again costs nothing and shows the recovery at once. Never cached.
            slot.breaker.record_success()
            slot.last_error = str(ex)
            slot.last_as_of = ex.snapshot.as_of
            return ex.snapshot, True
        except ProviderError as ex:
            slot.breaker.record_failure()
            slot.errors += 1
            slot.last_error = str(ex)
            log.warning("provider failed", extra={"provider": slot.provider.name, "error": str(ex)})
            return None
        slot.breaker.record_success()
        slot.last_as_of = snapshot.as_of
        # Never reuse a snapshot past the moment a new bar completes.
        now = datetime.now(UTC)
        max_age = (next_bar_boundary(now) - now).total_seconds()
        if slot.cache_ttl_s is not None:
            max_age = min(max_age, slot.cache_ttl_s)
        if snapshot.as_of < bar_key:
            # The newest completed bar had not reached the provider yet (a stream delivers it
            # a moment after the boundary): reusing this answer until the next boundary would
            # serve a bar-old view for five minutes.
            max_age = min(max_age, LAGGING_TTL_S)
        self.cache.put(key, snapshot, clock, max_age=max_age)
        return snapshot, False

    def health(self) -> list[dict[str, Any]]:
        """Each provider's state, data age and circuit state."""
        now = datetime.now(UTC)
        report = []
        for slot in self.slots:
            entry = dict(slot.provider.health())
            entry.update(
                circuit=slot.breaker.state,
                errors=slot.errors,
                last_error=slot.last_error,
                data_as_of=slot.last_as_of.isoformat() if slot.last_as_of else None,
                data_age_s=(now - slot.last_as_of).total_seconds() if slot.last_as_of else None,
                max_staleness_s=slot.max_staleness_s,
            )
            report.append(entry)
        return report
