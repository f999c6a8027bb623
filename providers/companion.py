"""HTTP client of a Magic8-Companion style market-data service (SPEC §6), with a hard deadline."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote as url_quote

import httpx
import msgspec
import polars as pl

from providers.base import BAR_SCHEMA, MarketSnapshot, NoMarketData, ProviderError
from providers.calendar import BAR
from providers.feed import Quote, aware_utc, finite_price


class CompanionBar(msgspec.Struct, frozen=True):
    """One bar as the service sends it; ``time`` is the bar's start (ISO-8601 or epoch s)."""

    time: datetime | float
    open: float
    high: float
    low: float
    close: float
    volume: float | None = None


class CompanionBars(msgspec.Struct, frozen=True):
    """Body of ``GET /api/market_data/{symbol}/bars``; the seed's ``data`` key is accepted too."""

    bars: list[CompanionBar] | None = None
    data: list[CompanionBar] | None = None


class CompanionQuote(msgspec.Struct, frozen=True):
    """Body of ``GET /api/market_data/{symbol}/quote``."""

    price: float | None = None
    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    time: datetime | float | None = None


_BARS = msgspec.json.Decoder(CompanionBars)
_QUOTE = msgspec.json.Decoder(CompanionQuote)


def _moment(value: datetime | float) -> datetime:
    if isinstance(value, datetime):
        return aware_utc(value, "companion bar time")
    return datetime.fromtimestamp(value, UTC)


class CompanionProvider:
    """Bars and quotes from an HTTP market-data service that owns the IB connection.

    Every call has one deadline, ``timeout`` seconds, that covers connecting, reading and
    any retries: a connection error or a 5xx answer is retried (at most ``retry_attempts``
    times, with doubling waits) only while time remains, so no request waits longer.
    """

    name = "companion"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        retry_attempts: int = 3,
        retry_backoff_s: float = 0.1,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Configure the client; the connection pool opens in :meth:`start`.

        Args:
            base_url: Service root, e.g. ``http://localhost:8765``.
            timeout: Deadline of one call, retries included, in seconds.
            retry_attempts: Retries after a connection error or a 5xx answer.
            retry_backoff_s: Wait before the first retry; doubles per retry.
            transport: httpx transport (tests; default: a real connection pool).
        """
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.state = "unknown"
        self.requests = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: datetime | None = None

    async def start(self) -> None:
        """Open the connection pool (no request is made)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                transport=self._transport,
                headers={"Accept": "application/json"},
            )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Fetch up to ``bars`` bars of ``symbol`` and keep those completed by ``as_of``.

        Raises:
            NoMarketData: the service answers 404 or no bar has completed by ``as_of``.
            ProviderError: the deadline passed, the service failed, or sent a bad body.
        """
        ticker = symbol.upper()
        # One more than needed: a live service includes the bar still open.
        response = await self._get(
            f"/api/market_data/{url_quote(ticker, safe='')}/bars",
            {"count": str(bars + 1), "interval": "5 mins"},
        )
        if response.status_code == 404:
            raise NoMarketData(self.name, ticker)
        body = self._decode(_BARS, response, ticker)
        records = body.bars if body.bars is not None else body.data or []
        try:
            starts = [_moment(record.time) for record in records]
        except ValueError as ex:
            raise self._failed(f"bad bars for {ticker}: {ex}") from ex
        # Only bars with start + 5 min <= as_of have completed; the service may send the
        # open bar, or bars past an as-of time in the past.
        limit = as_of.astimezone(UTC) - BAR
        kept = sorted(
            (
                (start, record)
                for start, record in zip(starts, records, strict=True)
                if start <= limit and finite_price(record.close) is not None
            ),
            key=lambda pair: pair[0],
        )
        unique = list({start: record for start, record in kept}.items())[-bars:]
        if not unique:
            raise NoMarketData(self.name, ticker)
        frame = pl.DataFrame(
            {
                "start": [start for start, _ in unique],
                "open": [record.open for _, record in unique],
                "high": [record.high for _, record in unique],
                "low": [record.low for _, record in unique],
                "close": [record.close for _, record in unique],
                "volume": [
                    float("nan") if record.volume is None else record.volume for _, record in unique
                ],
            },
            schema=BAR_SCHEMA,
        )
        return MarketSnapshot(symbol=ticker, bars=frame, as_of=unique[-1][0], source=self.name)

    async def quote(self, symbol: str) -> Quote | None:
        """Fetch the latest quote of ``symbol``; None when the service has none (404).

        Raises:
            ProviderError: the deadline passed, the service failed, or sent a bad body.
        """
        ticker = symbol.upper()
        response = await self._get(f"/api/market_data/{url_quote(ticker, safe='')}/quote", {})
        if response.status_code == 404:
            return None
        body = self._decode(_QUOTE, response, ticker)
        bid, ask, last = finite_price(body.bid), finite_price(body.ask), finite_price(body.last)
        price = finite_price(body.price) or last
        if price is None and bid is not None and ask is not None:
            price = (bid + ask) / 2
        try:
            stamp = datetime.now(UTC) if body.time is None else _moment(body.time)
        except ValueError as ex:
            raise self._failed(f"bad quote for {ticker}: {ex}") from ex
        return Quote(
            symbol=ticker, price=price, bid=bid, ask=ask, last=last, time=stamp, source=self.name
        )

    async def probe(self) -> dict[str, Any]:
        """Call the service's ``GET /health`` and return its JSON body.

        Raises:
            ProviderError: the deadline passed or the service failed.
        """
        response = await self._get("/health", {})
        if response.status_code >= 400:
            raise self._failed(f"GET /health answered {response.status_code}")
        try:
            result = msgspec.json.decode(response.content)
        except msgspec.DecodeError as ex:
            raise self._failed(f"GET /health sent invalid JSON: {ex}") from ex
        return result if isinstance(result, dict) else {"body": result}

    def _decode(
        self, decoder: msgspec.json.Decoder[Any], response: httpx.Response, what: str
    ) -> Any:
        if response.status_code >= 400:
            raise self._failed(f"{response.request.url.path} answered {response.status_code}")
        try:
            return decoder.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as ex:
            raise self._failed(f"bad body for {what}: {ex}") from ex

    async def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        """GET with retries inside one deadline of ``timeout`` seconds."""
        if self._client is None:
            await self.start()
        client = self._client
        assert client is not None
        self.requests += 1
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            problem: str
            try:
                async with asyncio.timeout(remaining):
                    response = await client.get(path, params=params, timeout=remaining)
            except (TimeoutError, httpx.TimeoutException) as ex:
                raise self._failed(f"no answer within {self.timeout} s ({path})") from ex
            except httpx.TransportError as ex:
                problem = f"{type(ex).__name__}: {ex}"
            else:
                if response.status_code < 500:
                    self.state = "up"
                    self.last_success = datetime.now(UTC)
                    return response
                problem = f"HTTP {response.status_code}"
            wait = self.retry_backoff_s * 2**attempt
            if attempt >= self.retry_attempts or time.monotonic() + wait >= deadline:
                raise self._failed(f"{path} failed after {attempt + 1} attempt(s): {problem}")
            attempt += 1
            await asyncio.sleep(wait)

    def _failed(self, message: str) -> ProviderError:
        self.state = "down"
        self.failures += 1
        self.last_error = message
        return ProviderError(f"companion at {self.base_url}: {message}")

    def health(self) -> dict[str, Any]:
        """State of the service as last seen, for ``GET /health``."""
        return {
            "name": self.name,
            "state": self.state,
            "base_url": self.base_url,
            "timeout_s": self.timeout,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_success": self.last_success.isoformat() if self.last_success else None,
        }
