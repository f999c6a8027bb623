"""The central feed: one process publishes completed bars, quotes and a heartbeat to Redis.

Redis layout (documented for other consumers in the README, "Market data"):

* ``bars:{SYMBOL}:5m`` — list of completed 5-minute bars, oldest first, one JSON object per
  element: ``{"start", "open", "high", "low", "close", "volume"}``; ``start`` is the bar's
  start, ISO-8601 with offset; ``volume`` may be null. Trimmed to the newest ``keep_bars``.
* ``quote:{SYMBOL}`` — the latest quote as JSON: ``{"symbol", "price", "bid", "ask", "last",
  "time", "source"}``; unset prices are null, never NaN.
* channel ``market:prices:{SYMBOL}`` — every change, as ``{"type": "bar", "symbol", "bar"}`` or
  ``{"type": "quote", "symbol", "quote"}``. VIX messages also go to the seed's ``market:vix``.
* key and channel ``market:heartbeat`` — ``{"type": "heartbeat", "time", "as_of", "source",
  "interval_s", "seq", "symbols", "stale"}`` every ``interval_s``; the key expires after a
  few missed beats. ``stale`` lists symbols the source cannot vouch for right now (its IB link
  is down, say): their last bars stay published but consumers must not treat them as live.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np
import polars as pl
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from providers.base import (
    BAR_NS,
    BAR_SCHEMA,
    BAR_SECONDS,
    MarketDataProvider,
    MarketSnapshot,
    NoMarketData,
    ProviderError,
    StaleData,
)
from providers.calendar import to_epoch_ns

log = logging.getLogger(__name__)

BARS_KEY = "bars:{symbol}:5m"
QUOTE_KEY = "quote:{symbol}"
PRICE_CHANNEL = "market:prices:{symbol}"
HEARTBEAT = "market:heartbeat"
VIX_CHANNEL = "market:vix"
#: The heartbeat key outlives this many missed beats, then expires.
HEARTBEAT_KEY_BEATS = 5


class BarRecord(msgspec.Struct, frozen=True):
    """One completed 5-minute bar as stored in ``bars:{SYMBOL}:5m``."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float | None = None


class Quote(msgspec.Struct, frozen=True):
    """The latest price of one symbol; unset prices are None (IB's NaN and -1 included)."""

    symbol: str
    price: float | None
    time: datetime
    source: str
    bid: float | None = None
    ask: float | None = None
    last: float | None = None


class BarUpdate(msgspec.Struct, frozen=True, tag="bar", tag_field="type"):
    """Channel message: a bar completed."""

    symbol: str
    bar: BarRecord


class QuoteUpdate(msgspec.Struct, frozen=True, tag="quote", tag_field="type"):
    """Channel message: a quote changed."""

    symbol: str
    quote: Quote


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat", tag_field="type"):
    """Channel message and key: the feed is alive.

    Attributes:
        time: Wall-clock time the beat was sent.
        as_of: The feed's market clock (differs from ``time`` when replaying a day).
        source: Provider the feed reads (``ibkr``, ``synthetic``, ``replay``).
        interval_s: Seconds between beats.
        seq: Beat counter since the feed started.
        symbols: Symbols the feed publishes.
        stale: Symbols whose source cannot vouch for its data right now.
    """

    time: datetime
    as_of: datetime
    source: str
    interval_s: float
    seq: int
    symbols: list[str]
    stale: list[str] = []


FeedMessage = BarUpdate | QuoteUpdate | Heartbeat

ENCODER = msgspec.json.Encoder()
MESSAGE_DECODER = msgspec.json.Decoder(FeedMessage)
BAR_DECODER = msgspec.json.Decoder(BarRecord)
QUOTE_DECODER = msgspec.json.Decoder(Quote)
HEARTBEAT_DECODER = msgspec.json.Decoder(Heartbeat)


def finite_price(value: float | None) -> float | None:
    """Return ``value`` if it is a usable price, else None.

    ib_insync reports unset prices as NaN and IB sends -1 for "no bid/ask"; both are unset.
    """
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def aware_utc(moment: datetime, what: str) -> datetime:
    """Return ``moment`` in UTC; a naive time is refused rather than guessed.

    Raises:
        ValueError: ``moment`` has no UTC offset.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} {moment.isoformat()} has no UTC offset")
    return moment.astimezone(UTC)


def bars_frame(records: Sequence[BarRecord]) -> pl.DataFrame:
    """Turn bar records into a frame with :data:`~providers.base.BAR_SCHEMA` columns."""
    return pl.DataFrame(
        {
            "start": [aware_utc(record.start, "bar start") for record in records],
            "open": [record.open for record in records],
            "high": [record.high for record in records],
            "low": [record.low for record in records],
            "close": [record.close for record in records],
            "volume": [record.volume for record in records],
        },
        schema=BAR_SCHEMA,
    )


BarValues = tuple[float, float, float, float, float]


class BarMirror:
    """One symbol's bars in memory, kept current from a stream, sliced as of any time.

    Streams repeat the open bar until it closes, and a reconnect re-sends bars already held,
    so an update replaces the bar with the same start and older bars can arrive late.
    """

    def __init__(self, keep: int) -> None:
        """Hold at most ``keep`` bars (the oldest are dropped)."""
        self.keep = keep
        self.starts: list[int] = []
        self.rows: list[BarValues] = []
        self.version = 0
        self._frame: tuple[int, pl.DataFrame, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def upsert(self, start_ns: int, values: BarValues) -> bool:
        """Insert or replace the bar starting at ``start_ns``; return whether anything changed."""
        starts = self.starts
        if not starts or start_ns > starts[-1]:
            starts.append(start_ns)
            self.rows.append(values)
        else:
            index = int(np.searchsorted(starts, start_ns))
            if index < len(starts) and starts[index] == start_ns:
                if _same(self.rows[index], values):
                    return False
                self.rows[index] = values
            else:
                starts.insert(index, start_ns)
                self.rows.insert(index, values)
        if len(starts) > self.keep:
            del starts[: -self.keep]
            del self.rows[: -self.keep]
        self.version += 1
        return True

    def newest_start(self) -> int | None:
        """Start (epoch ns) of the newest bar held, or None."""
        return self.starts[-1] if self.starts else None

    def last_close(self) -> float | None:
        """Close of the newest bar held (complete or not), or None."""
        return self.rows[-1][3] if self.rows else None

    def frame(self) -> tuple[pl.DataFrame, np.ndarray]:
        """The bars as a frame and their starts (epoch ns), rebuilt only after a change."""
        if self._frame is None or self._frame[0] != self.version:
            starts = np.asarray(self.starts, dtype=np.int64)
            values = np.asarray(self.rows, dtype=np.float64).reshape(-1, 5)
            columns = [pl.Series("start", starts, dtype=pl.Int64).cast(BAR_SCHEMA["start"])]
            columns += [
                pl.Series(name, values[:, column], dtype=pl.Float64)
                for column, name in enumerate(("open", "high", "low", "close", "volume"))
            ]
            self._frame = (self.version, pl.DataFrame(columns), starts)
        return self._frame[1], self._frame[2]

    def snapshot(
        self, symbol: str, as_of: datetime, bars: int, source: str
    ) -> MarketSnapshot | None:
        """The newest ``bars`` bars completed by ``as_of`` (start + 5 min <= as_of), or None."""
        if not self.starts:
            return None
        frame, starts = self.frame()
        cut = int(np.searchsorted(starts, to_epoch_ns(as_of) - BAR_NS, side="right"))
        if cut == 0:
            return None
        count = min(bars, cut)
        return MarketSnapshot(
            symbol=symbol,
            bars=frame.slice(cut - count, count),
            as_of=datetime.fromtimestamp(int(starts[cut - 1]) // 1_000_000_000, UTC),
            source=source,
        )


def _same(old: BarValues, new: BarValues) -> bool:
    # NaN volume never equals itself; compare it by "both unset".
    return old[:4] == new[:4] and (old[4] == new[4] or (math.isnan(old[4]) and math.isnan(new[4])))


@runtime_checkable
class QuoteSource(Protocol):
    """A provider that knows a live quote (``ibkr`` from memory, ``companion`` by request)."""

    def quote(self, symbol: str) -> Quote | None | Awaitable[Quote | None]:
        """Return the latest quote of ``symbol``, or None when there is none."""


def _bar_records(frame: pl.DataFrame) -> list[BarRecord]:
    return [
        BarRecord(
            start=row["start"],
            open=row["open"],
            high=row["high"],
            low=row["low"],
            close=row["close"],
            volume=None if row["volume"] is None or math.isnan(row["volume"]) else row["volume"],
        )
        for row in frame.iter_rows(named=True)
    ]


@dataclass(slots=True)
class _Published:
    """What the feed has published for one symbol, kept to rewrite Redis after a restart."""

    bars: deque[tuple[datetime, bytes]]
    quote: bytes | None = None
    quote_record: Quote | None = None


class FeedPublisher:
    """Publishes a provider's completed bars, quotes and a heartbeat to Redis.

    One process runs this next to the single IB connection (or a simulator, or a replayed
    day); every predictor worker reads Redis instead of opening its own IB session.

    After every (re)connect the feed rewrites the keys from its own memory in one
    transaction, so a Redis restart without persistence is repaired within one beat.
    """

    def __init__(
        self,
        source: MarketDataProvider,
        redis_url: str,
        symbols: Sequence[str],
        *,
        interval_s: float = 1.0,
        keep_bars: int = 300,
        clock: Callable[[], datetime] | None = None,
        channel_template: str = PRICE_CHANNEL,
        heartbeat_channel: str = HEARTBEAT,
        vix_channel: str | None = VIX_CHANNEL,
        reconnect_backoff_s: float = 0.5,
        reconnect_max_backoff_s: float = 5.0,
    ) -> None:
        """Configure the feed; nothing connects until :meth:`run`.

        Args:
            source: Provider whose data is published (started and closed by :meth:`run`).
            redis_url: ``redis://host:port/db``.
            symbols: Tickers to publish.
            interval_s: Seconds between polls of the source and between heartbeats.
            keep_bars: Bars kept per symbol in Redis and in the feed's memory.
            clock: The market clock (default: now, UTC); a replay runs a faster clock.
            channel_template: Channel per symbol, ``{symbol}`` replaced.
            heartbeat_channel: Channel and key of the heartbeat.
            vix_channel: Seed channel that also receives VIX messages (None: none).
            reconnect_backoff_s: First wait after Redis is lost; doubles per failure.
            reconnect_max_backoff_s: Longest wait between reconnect attempts.
        """
        if interval_s <= 0 or keep_bars < 1:
            raise ValueError("interval_s must be > 0 and keep_bars >= 1")
        self.source = source
        self.redis_url = redis_url
        self.symbols = tuple(dict.fromkeys(symbol.upper() for symbol in symbols))
        self.interval_s = interval_s
        self.keep_bars = keep_bars
        self._clock = clock or (lambda: datetime.now(UTC))
        self._channel_template = channel_template
        self._heartbeat_channel = heartbeat_channel
        self._vix_channel = vix_channel
        self._backoff = (reconnect_backoff_s, reconnect_max_backoff_s)
        self._published = {
            symbol: _Published(bars=deque(maxlen=keep_bars)) for symbol in self.symbols
        }
        self.seq = 0
        self.bars_published = 0
        self.quotes_published = 0
        self.reconnects = 0
        self.last_error: str | None = None

    def channel(self, symbol: str) -> str:
        """The price channel of ``symbol``."""
        return self._channel_template.format(symbol=symbol)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, reconnecting to Redis with backoff.

        The source is started first and closed last.
        """
        await self.source.start()
        try:
            backoff = self._backoff[0]
            while not stop.is_set():
                client = aioredis.Redis.from_url(
                    self.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0
                )
                try:
                    await client.ping()
                    await self._rewrite(client)
                    backoff = self._backoff[0]
                    while not stop.is_set():
                        await self._tick(client)
                        await _wait(stop, self.interval_s)
                except (RedisError, OSError) as ex:
                    self.reconnects += 1
                    self.last_error = f"redis: {ex}"
                    log.warning("feed lost redis", extra={"error": str(ex), "retry_s": backoff})
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, self._backoff[1])
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await client.aclose()
        finally:
            await self.source.close()

    async def _rewrite(self, client: aioredis.Redis) -> None:
        """Replace the keys with the feed's memory in one transaction."""
        pipe = client.pipeline(transaction=True)
        for symbol, published in self._published.items():
            key = BARS_KEY.format(symbol=symbol)
            pipe.delete(key)
            if published.bars:
                pipe.rpush(key, *(encoded for _, encoded in published.bars))
            if published.quote is not None:
                pipe.set(QUOTE_KEY.format(symbol=symbol), published.quote)
        await pipe.execute()

    async def _tick(self, client: aioredis.Redis) -> None:
        """Poll the source once and publish what changed, then beat."""
        now = self._clock()
        pipe = client.pipeline(transaction=False)
        stale: list[str] = []
        bars: dict[str, list[tuple[datetime, bytes]]] = {}
        quotes: dict[str, Quote | None] = {}
        for symbol in self.symbols:
            try:
                snapshot = await self.source.snapshot(symbol, now, self.keep_bars)
            except StaleData:
                # The source's link is down: publish nothing new, and say so in the beat.
                stale.append(symbol)
                continue
            except NoMarketData:
                continue
            except ProviderError as ex:
                stale.append(symbol)
                self.last_error = str(ex)
                continue
            bars[symbol] = self._queue_bars(pipe, symbol, snapshot)
            quotes[symbol] = self._queue_quote(
                pipe, symbol, snapshot, now, await self._live_quote(symbol)
            )
        self.seq += 1
        beat = ENCODER.encode(
            Heartbeat(
                time=datetime.now(UTC),
                as_of=now,
                source=self.source.name,
                interval_s=self.interval_s,
                seq=self.seq,
                symbols=list(self.symbols),
                stale=stale,
            )
        )
        expiry_ms = max(1000, int(self.interval_s * HEARTBEAT_KEY_BEATS * 1000))
        pipe.set(self._heartbeat_channel, beat, px=expiry_ms)
        pipe.publish(self._heartbeat_channel, beat)
        await pipe.execute()
        # Only now is it in Redis: had the pipeline failed, the next tick after the
        # reconnect would publish these bars again, messages included, so no reader
        # that stayed connected misses one.
        for symbol, queued in bars.items():
            self._published[symbol].bars.extend(queued)
            self.bars_published += len(queued)
        for symbol, quote in quotes.items():
            if quote is not None:
                published = self._published[symbol]
                published.quote, published.quote_record = ENCODER.encode(quote), quote
                self.quotes_published += 1

    async def _live_quote(self, symbol: str) -> Quote | None:
        """The source's own quote, if it has one; None falls back to the newest close."""
        if not isinstance(self.source, QuoteSource):
            return None
        try:
            quote = self.source.quote(symbol)
            if inspect.isawaitable(quote):  # an HTTP source's quote is a request
                quote = await quote
        except ProviderError as ex:
            self.last_error = str(ex)
            return None
        return quote

    def _queue_bars(
        self, pipe: Any, symbol: str, snapshot: MarketSnapshot
    ) -> list[tuple[datetime, bytes]]:
        """Queue the bars not published yet; return them, to remember once Redis has them."""
        published = self._published[symbol]
        frame = snapshot.bars
        if published.bars:
            frame = frame.filter(pl.col("start") > published.bars[-1][0])
        if frame.is_empty():
            return []
        key = BARS_KEY.format(symbol=symbol)
        queued = []
        for record in _bar_records(frame):
            encoded = ENCODER.encode(record)
            queued.append((record.start, encoded))
            pipe.rpush(key, encoded)
            self._publish(pipe, symbol, ENCODER.encode(BarUpdate(symbol=symbol, bar=record)))
        pipe.ltrim(key, -self.keep_bars, -1)
        return queued

    def _queue_quote(
        self,
        pipe: Any,
        symbol: str,
        snapshot: MarketSnapshot,
        now: datetime,
        quote: Quote | None,
    ) -> Quote | None:
        """Queue the quote if it changed; return it, to remember once Redis has it."""
        if quote is None:
            # Without a live quote, the latest price is the newest completed bar's close.
            close = finite_price(snapshot.last_close)
            ends = snapshot.as_of.timestamp() + BAR_SECONDS
            quote = Quote(
                symbol=symbol,
                price=close,
                last=close,
                time=datetime.fromtimestamp(min(ends, now.timestamp()), UTC),
                source=self.source.name,
            )
        if quote == self._published[symbol].quote_record:
            return None
        pipe.set(QUOTE_KEY.format(symbol=symbol), ENCODER.encode(quote))
        self._publish(pipe, symbol, ENCODER.encode(QuoteUpdate(symbol=symbol, quote=quote)))
        return quote

    def _publish(self, pipe: Any, symbol: str, message: bytes) -> None:
        pipe.publish(self.channel(symbol), message)
        if symbol == "VIX" and self._vix_channel:
            pipe.publish(self._vix_channel, message)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def replay_clock(start: datetime, speed: float) -> Callable[[], datetime]:
    """A market clock that starts at ``start`` and runs ``speed`` times faster than real time.

    Raises:
        ValueError: ``speed`` is not positive or ``start`` is naive.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    origin = aware_utc(start, "replay start")
    began = time.monotonic()

    def clock() -> datetime:
        return datetime.fromtimestamp(origin.timestamp() + (time.monotonic() - began) * speed, UTC)

    return clock
