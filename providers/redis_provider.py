"""Market data published to Redis by ``magic8 feed``, mirrored in memory from the subscription."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from providers.base import MarketSnapshot, NoMarketData, ProviderError, StaleData
from providers.calendar import BARS_PER_SESSION, to_epoch_ns
from providers.feed import (
    BAR_DECODER,
    BARS_KEY,
    HEARTBEAT,
    HEARTBEAT_DECODER,
    MESSAGE_DECODER,
    PRICE_CHANNEL,
    QUOTE_DECODER,
    QUOTE_KEY,
    BarMirror,
    BarRecord,
    BarUpdate,
    Heartbeat,
    Quote,
    QuoteUpdate,
    aware_utc,
)

log = logging.getLogger(__name__)


class RedisProvider:
    """Reads what the feed publishes, without ever making a request wait on Redis.

    A background task subscribes to every symbol's channel and the heartbeat, then loads the
    keys (subscribe first, so nothing published in between is lost; bars are merged by start,
    so seeing one twice is harmless) and applies each message to an in-memory mirror. A
    snapshot is a slice of that mirror. When Redis goes away the task reconnects with backoff,
    re-subscribes and reloads the keys, so a Redis restart heals itself.

    Liveness comes from the feed's heartbeat: when none has arrived for
    ``heartbeat_timeout_s`` (the feed stopped, or Redis is unreachable) or the feed says its
    source cannot vouch for a symbol, snapshots raise :class:`~providers.base.StaleData`.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        symbols: Sequence[str],
        *,
        history_bars: int = 100,
        channel_template: str = PRICE_CHANNEL,
        heartbeat: str = HEARTBEAT,
        heartbeat_timeout_s: float = 15.0,
        connect_timeout_s: float = 2.0,
        reconnect_backoff_s: float = 0.5,
        reconnect_max_backoff_s: float = 5.0,
    ) -> None:
        """Configure the provider; nothing connects until :meth:`start`.

        Args:
            url: ``redis://host:port/db``.
            symbols: Tickers to mirror.
            history_bars: Bars kept per symbol (at least what snapshots ask for).
            channel_template: Price channel per symbol, ``{symbol}`` replaced.
            heartbeat: Channel and key of the feed's heartbeat.
            heartbeat_timeout_s: Silence after which the feed counts as down.
            connect_timeout_s: Limit on connecting; :meth:`start` waits at most this long.
            reconnect_backoff_s: First wait before reconnecting; doubles per failure.
            reconnect_max_backoff_s: Longest wait between reconnect attempts.
        """
        self.url = url
        self.symbols = tuple(dict.fromkeys(symbol.upper() for symbol in symbols))
        self.history_bars = history_bars
        self._channels = {channel_template.format(symbol=s): s for s in self.symbols}
        self._heartbeat = heartbeat
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff = (reconnect_backoff_s, reconnect_max_backoff_s)
        keep = history_bars + BARS_PER_SESSION
        self._mirrors = {symbol: BarMirror(keep) for symbol in self.symbols}
        self._quotes: dict[str, Quote] = {}
        self._beat: Heartbeat | None = None
        self._beat_at: float | None = None  # monotonic time the beat was sent
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self.state = "stopped"
        self.loads = 0
        self.messages = 0
        self.malformed = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start mirroring; wait (bounded by the connect timeout) for the first load."""
        if self._task is not None:
            return
        self._loaded.clear()
        self._task = asyncio.create_task(self._mirror(), name="redis-mirror")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), self._connect_timeout_s + 1.0)

    async def close(self) -> None:
        """Stop mirroring and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.state = "stopped"

    async def _mirror(self) -> None:
        """Subscribe, load, apply messages; on any Redis failure reconnect with backoff."""
        first, longest = self._backoff
        backoff = first
        while True:
            self.state = "connecting"
            # No retries inside redis-py: a silent reconnect would skip the reload below.
            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=self._connect_timeout_s,
                socket_keepalive=True,
                retry=Retry(NoBackoff(), 0),
            )
            pubsub: Any = client.pubsub()
            try:
                await pubsub.subscribe(self._heartbeat, *self._channels)
                await self._confirm(pubsub, len(self._channels) + 1)
                await self._load(client)
                self.state = "up"
                self._loaded.set()
                backoff = first
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._apply(message["data"])
            except (RedisError, OSError) as ex:
                self.state = "down"
                self.last_error = f"{type(ex).__name__}: {ex}"
                log.warning("redis lost", extra={"error": self.last_error, "retry_s": backoff})
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, longest)

    async def _confirm(self, pubsub: Any, expected: int) -> None:
        """Read the subscribe confirmations, so the subscription is live before the load."""
        confirmed = 0
        deadline = time.monotonic() + self._connect_timeout_s
        while confirmed < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RedisError("subscription was not confirmed in time")
            message = await pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message["type"] == "subscribe":
                confirmed += 1
            elif message["type"] == "message":
                self._apply(message["data"])

    async def _load(self, client: aioredis.Redis) -> None:
        """Merge the keys into the mirror: bars, quotes and the last heartbeat."""
        pipe = client.pipeline(transaction=False)
        for symbol in self.symbols:
            pipe.lrange(BARS_KEY.format(symbol=symbol), -self.history_bars, -1)
            pipe.get(QUOTE_KEY.format(symbol=symbol))
        pipe.get(self._heartbeat)
        results = await pipe.execute()
        for index, symbol in enumerate(self.symbols):
            for raw in results[2 * index]:
                with self._guard():
                    self._apply_bar(symbol, BAR_DECODER.decode(raw))
            if results[2 * index + 1] is not None:
                with self._guard():
                    self._apply_quote(symbol, QUOTE_DECODER.decode(results[2 * index + 1]))
        if results[-1] is not None:
            with self._guard():
                self._apply_beat(HEARTBEAT_DECODER.decode(results[-1]))
        self.loads += 1

    @contextlib.contextmanager
    def _guard(self) -> Any:
        # A malformed message is counted and skipped; it never stops the mirror.
        try:
            yield
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as ex:
            self.malformed += 1
            self.last_error = f"malformed feed data: {ex}"

    def _apply(self, raw: bytes) -> None:
        self.messages += 1
        with self._guard():
            message = MESSAGE_DECODER.decode(raw)
            if isinstance(message, Heartbeat):
                self._apply_beat(message)
            elif message.symbol in self._mirrors:
                if isinstance(message, BarUpdate):
                    self._apply_bar(message.symbol, message.bar)
                elif isinstance(message, QuoteUpdate):
                    self._apply_quote(message.symbol, message.quote)

    def _apply_bar(self, symbol: str, bar: BarRecord) -> None:
        volume = float("nan") if bar.volume is None else bar.volume
        self._mirrors[symbol].upsert(
            to_epoch_ns(aware_utc(bar.start, "bar start")),
            (bar.open, bar.high, bar.low, bar.close, volume),
        )

    def _apply_quote(self, symbol: str, quote: Quote) -> None:
        self._quotes[symbol] = quote

    def _apply_beat(self, beat: Heartbeat) -> None:
        sent = aware_utc(beat.time, "heartbeat time")
        age = max(0.0, (datetime.now(UTC) - sent).total_seconds())
        self._beat = beat
        self._beat_at = time.monotonic() - age

    # -- reading -----------------------------------------------------------------------------

    def heartbeat_age(self) -> float | None:
        """Seconds since the feed's last heartbeat was sent, or None if none was seen."""
        return None if self._beat_at is None else time.monotonic() - self._beat_at

    def _not_live(self, symbol: str) -> str | None:
        """Why ``symbol``'s data cannot be vouched for, or None when it is live."""
        age = self.heartbeat_age()
        link = "" if self.state == "up" else f"; redis {self.state}: {self.last_error}"
        if age is None:
            return f"no heartbeat from the feed{link}"
        if age > self.heartbeat_timeout_s:
            timeout = self.heartbeat_timeout_s
            return f"feed heartbeat silent for {age:.1f} s (timeout {timeout} s){link}"
        if self._beat is not None and symbol in self._beat.stale:
            return f"the feed's source ({self._beat.source}) reports {symbol} not live"
        return None

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Return up to ``bars`` completed bars of ``symbol`` as of ``as_of`` from memory.

        Raises:
            NoMarketData: the symbol is not mirrored, or none of its bars completed by then.
            StaleData: bars exist but the feed is silent or reports the symbol not live.
            ProviderError: Redis was never reached and nothing is mirrored.
        """
        ticker = symbol.upper()
        mirror = self._mirrors.get(ticker)
        if mirror is None:
            raise NoMarketData(self.name, ticker)
        if not mirror and self.loads == 0:
            raise ProviderError(f"redis is {self.state}: {self.last_error or 'not loaded yet'}")
        snapshot = mirror.snapshot(ticker, as_of, bars, self.name)
        if snapshot is None:
            raise NoMarketData(self.name, ticker)
        reason = self._not_live(ticker)
        if reason is not None:
            raise StaleData(snapshot, reason)
        return snapshot

    def quote(self, symbol: str) -> Quote | None:
        """The latest quote the feed published for ``symbol``, or None."""
        return self._quotes.get(symbol.upper())

    def health(self) -> dict[str, Any]:
        """Connection state, feed heartbeat and mirror sizes for ``GET /health``."""
        age = self.heartbeat_age()
        beat = self._beat
        return {
            "name": self.name,
            "state": self.state,
            "url": _redact(self.url),
            "feed": {
                "alive": age is not None and age <= self.heartbeat_timeout_s,
                "heartbeat_age_s": None if age is None else round(age, 3),
                "heartbeat_timeout_s": self.heartbeat_timeout_s,
                "source": beat.source if beat else None,
                "seq": beat.seq if beat else None,
                "stale_symbols": list(beat.stale) if beat else [],
            },
            "loads": self.loads,
            "messages": self.messages,
            "malformed": self.malformed,
            "last_error": self.last_error,
            "bars": {symbol: len(mirror) for symbol, mirror in self._mirrors.items()},
        }


def _redact(url: str) -> str:
    # APPSEC: /health is public; never echo a Redis password.
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
