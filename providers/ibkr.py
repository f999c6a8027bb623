"""Interactive Brokers market data through ib_insync or ib_async: streamed, paced, reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from providers.base import (
    BAR_SECONDS,
    MarketSnapshot,
    NoMarketData,
    ProviderError,
    StaleData,
)
from providers.calendar import BARS_PER_SESSION, to_epoch_ns
from providers.feed import BarMirror, Quote, finite_price

log = logging.getLogger(__name__)

#: Indices and their listing exchange; every other symbol is a US stock or ETF routed SMART.
INDEX_EXCHANGES: dict[str, str] = {
    "SPX": "CBOE",
    "VIX": "CBOE",
    "XSP": "CBOE",
    "RUT": "RUSSELL",
    "NDX": "NASDAQ",
}
BAR_SIZE = "5 mins"
WHAT_TO_SHOW = "TRADES"
#: IB error codes that are informational, not failures of a request.
_NOTICES = frozenset({2104, 2106, 2107, 2108, 2158, 2119})
_PACING_CAP_S = 600.0
_ONE_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class ContractSpec:
    """What identifies a symbol's contract at IB."""

    symbol: str
    sec_type: str
    exchange: str
    currency: str = "USD"


def contract_spec(symbol: str) -> ContractSpec:
    """Return the IB contract of ``symbol``: indices on their exchange, the rest SMART stocks."""
    ticker = symbol.upper()
    exchange = INDEX_EXCHANGES.get(ticker)
    if exchange is not None:
        return ContractSpec(ticker, "IND", exchange)
    return ContractSpec(ticker, "STK", "SMART")


def load_ib_api(preferred: str | None = None) -> Any:
    """Import the IB client library: ib_async (the maintained fork) if installed, else ib_insync.

    Args:
        preferred: Import exactly this module instead (``ib_insync`` or ``ib_async``).

    Raises:
        ProviderError: neither library is installed.
    """
    names = (preferred,) if preferred else ("ib_async", "ib_insync")
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ProviderError("the ibkr provider needs ib_insync or ib_async: pip install ib_insync")


class HistoricalPacer:
    """IB's historical-data pacing rules, kept before a request leaves rather than after.

    IB rejects with error 162 (pacing violation) a client that makes more than 60 historical
    requests in ten minutes, an identical request within 15 seconds, or six requests for one
    contract within two seconds. A small margin covers the clock difference with the gateway.
    """

    def __init__(
        self,
        max_requests: int = 60,
        window_s: float = 600.0,
        identical_gap_s: float = 15.0,
        per_contract_max: int = 5,
        per_contract_window_s: float = 2.0,
        margin_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_requests = max_requests
        self.window_s = window_s + margin_s
        self.identical_gap_s = identical_gap_s + margin_s
        self.per_contract_max = per_contract_max
        self.per_contract_window_s = per_contract_window_s + margin_s
        self._clock = clock
        self._sent: deque[float] = deque()
        self._identical: dict[tuple[str, ...], float] = {}
        self._per_contract: dict[tuple[str, ...], deque[float]] = {}
        self._hold_until = 0.0
        self.total = 0

    def delay(self, identity: tuple[str, ...], contract: tuple[str, ...]) -> float:
        """Seconds to wait before a request with ``identity`` for ``contract`` may leave."""
        now = self._clock()
        while self._sent and now - self._sent[0] >= self.window_s:
            self._sent.popleft()
        waits = [self._hold_until - now]
        if len(self._sent) >= self.max_requests:
            waits.append(self._sent[len(self._sent) - self.max_requests] + self.window_s - now)
        previous = self._identical.get(identity)
        if previous is not None:
            waits.append(previous + self.identical_gap_s - now)
        recent = self._per_contract.get(contract)
        if recent is not None:
            while recent and now - recent[0] >= self.per_contract_window_s:
                recent.popleft()
            if len(recent) >= self.per_contract_max:
                waits.append(recent[0] + self.per_contract_window_s - now)
        return max(0.0, *waits)

    def record(self, identity: tuple[str, ...], contract: tuple[str, ...]) -> None:
        """Count a request that is being sent now."""
        now = self._clock()
        self._sent.append(now)
        self._identical[identity] = now
        self._per_contract.setdefault(contract, deque()).append(now)
        self.total += 1

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (after IB reported a pacing violation)."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    async def acquire(self, identity: tuple[str, ...], contract: tuple[str, ...]) -> None:
        """Wait until the request may leave, then count it."""
        while (wait := self.delay(identity, contract)) > 0:
            await asyncio.sleep(wait)
        self.record(identity, contract)

    def sent_in_window(self) -> int:
        """Requests sent in the last ten minutes."""
        now = self._clock()
        return sum(1 for sent in self._sent if now - sent < self.window_s)


@dataclass(eq=False)
class _Series:
    """One symbol's stream: the bar mirror and the state of its subscription."""

    symbol: str
    bars: BarMirror
    streaming: bool = False
    no_definition: str | None = None
    error: str | None = None
    requests: int = 0
    refusals: int = 0
    last_update: float | None = None

    def upsert(self, bar: Any) -> None:
        """Apply one ib_insync ``BarData`` (IB sends the open bar repeatedly)."""
        values = (bar.open, bar.high, bar.low, bar.close)
        if not all(finite_price(value) for value in values):
            return
        volume = float(bar.volume) if bar.volume is not None and bar.volume >= 0 else math.nan
        self.bars.upsert(
            _start_ns(bar.date),
            (float(bar.open), float(bar.high), float(bar.low), float(bar.close), volume),
        )


def _start_ns(date: Any) -> int:
    # formatDate=2 makes IB send epoch seconds, which ib_insync parses as aware UTC datetimes.
    if isinstance(date, datetime):
        if date.tzinfo is None:
            raise ProviderError(f"IB sent a bar time without a zone: {date!r}")
        return to_epoch_ns(date)
    raise ProviderError(f"IB sent a daily bar where 5-minute bars were asked: {date!r}")


class IBKRProvider:
    """Market data from TWS / IB Gateway over one read-only API connection.

    On connect, each symbol's 5-minute TRADES bars (regular hours) are requested once with
    ``keepUpToDate``, so IB streams the open bar and every new one: a snapshot is an
    in-memory slice, never a request to IB, and however many orders arrive the provider
    sends one history request per symbol per connection. Requests go through
    :class:`HistoricalPacer`; IB's refusals (162 pacing, 354 not subscribed) are retried
    after a doubling backoff, never in a loop; 200 (no such contract) makes the symbol
    report no data. A lost connection is re-established with backoff and the bars missed
    meanwhile are fetched with a request sized to the gap.

    While the link is down, or a symbol's stream has ended, snapshots raise
    :class:`~providers.base.StaleData`: the bars are kept but not vouched for.
    """

    name = "ibkr"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7497,
        client_id: int = 99,
        symbols: Sequence[str] = ("SPX", "SPY", "XSP", "NDX", "QQQ", "RUT", "AAPL", "TSLA", "VIX"),
        *,
        history_bars: int = 100,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 60.0,
        reconnect_backoff_s: float = 1.0,
        reconnect_max_backoff_s: float = 60.0,
        pacing_backoff_s: float = 60.0,
        start_wait_s: float | None = None,
        quotes: bool = True,
        pacer: HistoricalPacer | None = None,
        api: Any = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Configure the provider; nothing connects until :meth:`start`.

        Args:
            host: TWS / IB Gateway host.
            port: Its API port.
            client_id: API client id, unique among the gateway's clients (default 99).
            symbols: Tickers to stream.
            history_bars: Completed bars to hold per symbol (at least what snapshots ask).
            connect_timeout_s: Limit on connecting and on each start-up synchronisation.
            request_timeout_s: Limit on one history request; ib_insync cancels it after.
            reconnect_backoff_s: First wait before reconnecting; doubles per failed attempt.
            reconnect_max_backoff_s: Longest wait between reconnect attempts.
            pacing_backoff_s: First wait after IB refuses a history request; doubles per
                consecutive refusal up to ten minutes.
            start_wait_s: How long :meth:`start` waits for the first bars (default: the
                connect timeout); the provider keeps trying in the background after that.
            quotes: Also subscribe to streaming quotes (``reqMktData``) for :meth:`quote`.
            pacer: Pacing state, shared if several providers use one IB session.
            api: The ib_insync or ib_async module (default: :func:`load_ib_api`).
            clock: Wall clock (default: now, UTC); used to size catch-up requests.
        """
        self.host = host
        self.port = port
        self.client_id = client_id
        self.symbols = tuple(dict.fromkeys(symbol.upper() for symbol in symbols))
        self.history_bars = history_bars
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._reconnect_backoff = (reconnect_backoff_s, reconnect_max_backoff_s)
        self._pacing_backoff_s = pacing_backoff_s
        self._start_wait_s = connect_timeout_s if start_wait_s is None else start_wait_s
        self._quotes = quotes
        self.pacer = pacer or HistoricalPacer()
        self._api = api
        self._clock = clock or (lambda: datetime.now(UTC))
        # Enough sessions that the request returns history_bars completed bars early in a day.
        self._history_days = math.ceil(history_bars / BARS_PER_SESSION) + 1
        keep = history_bars + BARS_PER_SESSION
        self._series = {symbol: _Series(symbol, BarMirror(keep)) for symbol in self.symbols}
        self._contracts: dict[str, Any] = {}
        self._tickers: dict[str, Any] = {}
        self._quotes_refused: dict[str, str] = {}
        self._subscriptions: dict[int, str] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._ib: Any = None
        self._supervisor: asyncio.Task[None] | None = None
        self._session_lost: asyncio.Event | None = None
        self._answered: set[str] = set()
        self._first_answers = asyncio.Event()
        self._link_down = False
        self.state = "stopped"
        self.server_version: int | None = None
        self.connects = 0
        self.pacing_violations = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background and wait (bounded) for the first bars of every symbol."""
        if self._supervisor is not None:
            return
        api = self._api = self._api or load_ib_api()
        # ib_insync finds its loop through the event-loop policy, and uvicorn runs its loop
        # without making it the thread's current loop: make it current, or ib_insync would
        # schedule its I/O on a second loop that never runs.
        asyncio.set_event_loop(asyncio.get_running_loop())
        self._ib = api.IB()
        self._ib.RaiseRequestErrors = True
        self._ib.errorEvent += self._on_error
        self._ib.disconnectedEvent += self._on_disconnected
        for symbol in self.symbols:
            spec = contract_spec(symbol)
            if spec.sec_type == "IND":
                self._contracts[symbol] = api.Index(spec.symbol, spec.exchange, spec.currency)
            else:
                self._contracts[symbol] = api.Stock(spec.symbol, spec.exchange, spec.currency)
        self._first_answers.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="ibkr-supervisor")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_answers.wait(), self._start_wait_s)

    async def close(self) -> None:
        """Stop reconnecting and disconnect."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._ib is not None:
            self._ib.disconnect()
        self.state = "stopped"

    async def _supervise(self) -> None:
        """Keep one API session up: connect, stream, and reconnect with backoff when lost."""
        first, longest = self._reconnect_backoff
        backoff = first
        while True:
            self.state = "connecting"
            try:
                await self._ib.connectAsync(
                    self.host,
                    self.port,
                    clientId=self.client_id,
                    timeout=self._connect_timeout_s,
                    readonly=True,
                )
            except asyncio.CancelledError:
                raise
            except Exception as ex:  # ib_insync raises OSError, TimeoutError, ConnectionError…
                self.last_error = f"connect to {self.host}:{self.port} failed: {ex!r}"
                log.warning("ibkr connect failed", extra={"error": repr(ex), "retry_s": backoff})
                self._ib.disconnect()
                self.state = "backoff"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, longest)
                continue
            self.state = "connected"
            self.connects += 1
            self.server_version = self._ib.client.serverVersion()
            self._link_down = False
            connected_at = time.monotonic()
            log.info("ibkr connected", extra={"server_version": self.server_version})
            await self._stream_until_lost()
            self.state = "backoff"
            # A session that lasted resets the backoff; one that drops at once keeps growing it.
            if time.monotonic() - connected_at > longest:
                backoff = first
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, longest)

    async def _stream_until_lost(self) -> None:
        lost = self._session_lost = asyncio.Event()
        tasks = [
            asyncio.create_task(self._follow(symbol), name=f"ibkr-{symbol}")
            for symbol in self.symbols
        ]
        try:
            await lost.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for series in self._series.values():
                series.streaming = False
            self._subscriptions.clear()
            self._tickers.clear()
            self._ib.disconnect()

    def _on_disconnected(self) -> None:
        self.last_error = f"connection to IB lost at {datetime.now(UTC).isoformat()}"
        for series in self._series.values():
            series.streaming = False
        if self._session_lost is not None:
            self._session_lost.set()

    # -- one symbol's stream -------------------------------------------------------------------

    async def _follow(self, symbol: str) -> None:
        """Stream ``symbol`` for this session; a defect in one symbol never ends the others."""
        try:
            await self._follow_stream(symbol)
        except ConnectionError:
            return
        except Exception as ex:
            # Unexpected: say so loudly and leave the symbol visibly not streaming.
            self._series[symbol].error = f"stream failed: {ex!r}"
            log.exception("ibkr stream failed", extra={"symbol": symbol})

    async def _follow_stream(self, symbol: str) -> None:
        """Request ``symbol``'s bars with live updates; re-request after the stream ends."""
        series = self._series[symbol]
        contract = self._contracts[symbol]
        spec = contract_spec(symbol)
        refusals = 0
        while True:
            if not contract.conId:
                known = await self._qualify(series, contract)
                if known is None:
                    return
                if not known:
                    await asyncio.sleep(self._backoff(refusals))
                    refusals += 1
                    continue
            duration = self._duration(series)
            identity = (symbol, spec.exchange, "", duration, BAR_SIZE, WHAT_TO_SHOW, "RTH")
            await self.pacer.acquire(identity, (symbol, spec.exchange, WHAT_TO_SHOW))
            series.requests += 1
            try:
                bars = await self._ib.reqHistoricalDataAsync(
                    contract,
                    "",
                    duration,
                    BAR_SIZE,
                    WHAT_TO_SHOW,
                    True,
                    formatDate=2,
                    keepUpToDate=True,
                    timeout=self._request_timeout_s,
                )
            except ConnectionError:
                return
            except self._api.RequestError as ex:
                delay = self._refused(series, ex.code, ex.message, refusals)
                self._answer(symbol)
                if delay is None:
                    return
                refusals += 1
                await asyncio.sleep(delay)
                continue
            if not bars:
                # A timeout (ib_insync has cancelled it) or an empty answer: back off too.
                series.error = f"no bars for {duration} (timeout or empty answer)"
                self._cancel(bars)
                self._answer(symbol)
                await asyncio.sleep(self._backoff(refusals))
                refusals += 1
                continue
            refusals = 0
            await self._stream(series, bars)

    async def _qualify(self, series: _Series, contract: Any) -> bool | None:
        """Fill in IB's contract id (streaming quotes need it); None when IB does not know it.

        Returns:
            True when qualified, False to retry later, None for an unknown contract.
        """
        try:
            found = await asyncio.wait_for(
                self._ib.qualifyContractsAsync(contract), self._request_timeout_s
            )
        except self._api.RequestError as ex:
            if ex.code != 200:
                series.error = f"IB error {ex.code}: {ex.message}"
                return False
            found = []
        except TimeoutError:
            series.error = "contract details request timed out"
            return False
        if not found:
            series.no_definition = f"IB knows no unique {contract_spec(series.symbol)}"
            self.last_error = f"{series.symbol}: {series.no_definition}"
            self._answer(series.symbol)
            return None
        return True

    async def _stream(self, series: _Series, bars: Any) -> None:
        symbol = series.symbol
        for bar in bars:
            series.upsert(bar)
        series.error = None
        series.streaming = True
        series.last_update = time.monotonic()
        ended = self._ended[symbol] = asyncio.Event()
        self._subscriptions[bars.reqId] = symbol
        handler = functools.partial(self._on_bar_update, series)
        bars.updateEvent += handler
        self._answer(symbol)
        if self._quotes and symbol not in self._quotes_refused and symbol not in self._tickers:
            self._tickers[symbol] = self._ib.reqMktData(self._contracts[symbol], "", False, False)
        try:
            await ended.wait()
        finally:
            bars.updateEvent -= handler
            series.streaming = False
            self._subscriptions.pop(bars.reqId, None)
        self._cancel(bars)
        await asyncio.sleep(self._backoff(0))

    def _on_bar_update(self, series: _Series, bars: Any, has_new_bar: bool) -> None:
        if has_new_bar and len(bars) >= 2:
            # The bar before the new one has just closed: keep its final values.
            series.upsert(bars[-2])
        series.upsert(bars[-1])
        series.last_update = time.monotonic()

    def _duration(self, series: _Series) -> str:
        """The history to ask for: full on first contact, the gap since the newest bar after."""
        newest = series.bars.newest_start()
        if newest is None:
            return f"{self._history_days} D"
        gap = int(self._clock().timestamp() - newest / 1e9) + BAR_SECONDS
        if gap <= _ONE_DAY_S:
            return f"{max(gap, 2 * BAR_SECONDS)} S"
        return f"{self._history_days + 1} D"

    def _refused(self, series: _Series, code: int, message: str, refusals: int) -> float | None:
        """Record IB's refusal of a history request; return the wait before retrying."""
        series.refusals += 1
        series.error = f"IB error {code}: {message}"
        self.last_error = f"{series.symbol}: {series.error}"
        log.warning("ibkr refused history", extra={"symbol": series.symbol, "code": code})
        if code == 200:
            series.no_definition = message
            return None
        delay = self._backoff(refusals)
        if code == 162 and "pacing" in message.lower():
            # A pacing violation is counted per session: hold every request, not just this one.
            self.pacing_violations += 1
            self.pacer.hold(delay)
        return delay

    def _backoff(self, refusals: int) -> float:
        return float(min(self._pacing_backoff_s * 2 ** min(refusals, 10), _PACING_CAP_S))

    def _cancel(self, bars: Any) -> None:
        with contextlib.suppress(ConnectionError):
            if self._ib.isConnected():
                self._ib.cancelHistoricalData(bars)

    def _answer(self, symbol: str) -> None:
        self._answered.add(symbol)
        if len(self._answered) >= len(self.symbols):
            self._first_answers.set()

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        if code in _NOTICES:
            return
        if code == 1100:  # connectivity between the gateway and IB lost
            self._link_down = True
            return
        if code in (1101, 1102):  # restored (1101: data lost, so subscribe again)
            self._link_down = False
            if code == 1101:
                for ended in self._ended.values():
                    ended.set()
            return
        symbol = self._subscriptions.get(req_id)
        if symbol is not None:
            # IB ended a live subscription (e.g. 162 "HMDS query cancelled").
            self._series[symbol].error = f"IB error {code}: {message}"
            self._ended[symbol].set()
            return
        if code == 354 and contract is not None:
            ticker_symbol = getattr(contract, "symbol", "")
            ticker = self._tickers.pop(ticker_symbol, None)
            if ticker is not None:
                self._quotes_refused[ticker_symbol] = message
                with contextlib.suppress(ConnectionError):
                    self._ib.cancelMktData(contract)

    # -- reading -----------------------------------------------------------------------------

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Return up to ``bars`` completed bars of ``symbol`` as of ``as_of`` from the mirror.

        Raises:
            NoMarketData: the symbol is not streamed, IB does not know it, or none of its
                bars has completed by ``as_of``.
            StaleData: bars exist but the link or the symbol's stream is down.
            ProviderError: not connected and nothing received yet.
        """
        ticker = symbol.upper()
        series = self._series.get(ticker)
        if series is None or series.no_definition is not None:
            raise NoMarketData(self.name, ticker)
        if not series.bars:
            if self.state != "connected":
                raise ProviderError(f"ibkr is {self.state}: {self.last_error or 'not connected'}")
            raise NoMarketData(self.name, ticker)
        snapshot = series.bars.snapshot(ticker, as_of, bars, self.name)
        if snapshot is None:
            raise NoMarketData(self.name, ticker)
        if not self._live(series):
            reason = self.last_error if self.state != "connected" else series.error
            raise StaleData(snapshot, f"IB stream down ({reason or self.state})")
        return snapshot

    def _live(self, series: _Series) -> bool:
        return self.state == "connected" and series.streaming and not self._link_down

    def quote(self, symbol: str) -> Quote | None:
        """Return the latest quote: IB's ticks when subscribed, else the open bar's close.

        Unset prices (NaN from ib_insync, -1 from IB) are None.
        """
        ticker_symbol = symbol.upper()
        series = self._series.get(ticker_symbol)
        if series is None or not self._live(series):
            return None
        ticker = self._tickers.get(ticker_symbol)
        bid = ask = last = None
        if ticker is not None:
            bid, ask, last = (
                finite_price(ticker.bid),
                finite_price(ticker.ask),
                finite_price(ticker.last),
            )
        price = last
        if price is None and bid is not None and ask is not None:
            price = (bid + ask) / 2
        if price is None:
            price = finite_price(series.bars.last_close())
        if price is None:
            return None
        return Quote(
            symbol=ticker_symbol,
            price=price,
            bid=bid,
            ask=ask,
            last=last,
            time=self._clock(),
            source=self.name,
        )

    def health(self) -> dict[str, Any]:
        """Connection state, per-symbol stream state and pacing counters for ``GET /health``."""
        symbols = {}
        for symbol, series in self._series.items():
            newest = series.bars.newest_start()
            symbols[symbol] = {
                "bars": len(series.bars),
                "newest_bar": (
                    datetime.fromtimestamp(newest // 1_000_000_000, UTC).isoformat()
                    if newest is not None
                    else None
                ),
                "streaming": series.streaming,
                "requests": series.requests,
                "refusals": series.refusals,
                "error": series.no_definition or series.error,
                "quotes": (
                    "refused: " + self._quotes_refused[symbol]
                    if symbol in self._quotes_refused
                    else "streaming"
                    if symbol in self._tickers
                    else "off"
                ),
            }
        return {
            "name": self.name,
            "state": self.state,
            "endpoint": f"{self.host}:{self.port}",
            "client_id": self.client_id,
            "server_version": self.server_version,
            "connects": self.connects,
            "historical_requests_10min": self.pacer.sent_in_window(),
            "historical_requests_total": self.pacer.total,
            "pacing_violations": self.pacing_violations,
            "last_error": self.last_error,
            "symbols": symbols,
        }
