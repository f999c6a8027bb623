"""A fake TWS / IB Gateway on a real socket, speaking the IB API wire protocol to a real client.

The protocol, as the TWS API defines it:

* The client opens with ``API\\0`` followed by a length-prefixed ``v<min>..<max>`` string; the
  gateway answers with one message holding its server version and the connection time.
* Every later message in both directions is a 4-byte big-endian length, then NUL-terminated
  text fields, the first of which is the message id.
* The client sends ``startApi`` (71) with its client id; the gateway answers ``managedAccounts``
  (15) and ``nextValidId`` (9), after which the client is ready.

This double answers the start-up requests ib_insync makes (positions, account updates,
executions), ``reqHistoricalData`` with the initial bars and, with ``keepUpToDate``, streamed
``historicalDataUpdate`` messages, ``reqMktData`` with price ticks, and the error messages the
provider must survive: 162 (pacing violation, enforced by a referee that applies IB's real
historical-data pacing rules), 200 (no security definition), 354 (not subscribed), 321
(end date with live updates), 326 (client id in use). Tests can drop every connection, stop
and restart the gateway on the same port, push bars, and script failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from providers.calendar import NY
from providers.synthetic import SyntheticProvider

SERVER_VERSION = 176
MIN_CLIENT_VERSION = 100
ACCOUNT = "DU1234567"

#: What the real gateway resolves: symbol -> (secType, exchange); currency is USD for all.
CONTRACTS: dict[str, tuple[str, str]] = {
    "SPX": ("IND", "CBOE"),
    "VIX": ("IND", "CBOE"),
    "XSP": ("IND", "CBOE"),
    "RUT": ("IND", "RUSSELL"),
    "NDX": ("IND", "NASDAQ"),
    "SPY": ("STK", "SMART"),
    "QQQ": ("STK", "SMART"),
    "AAPL": ("STK", "SMART"),
    "TSLA": ("STK", "SMART"),
}

#: Listing exchange of the stocks, as contract details report it.
PRIMARY_EXCHANGES = {"SPY": "ARCA", "QQQ": "NASDAQ", "AAPL": "NASDAQ", "TSLA": "NASDAQ"}

PACING_MESSAGE = (
    "Historical Market Data Service error message:Historical data request pacing violation"
)
NO_DEFINITION_MESSAGE = "No security definition has been found for the request"
NOT_SUBSCRIBED_MESSAGE = (
    "Requested market data is not subscribed. Delayed market data is available."
)

# IB's historical-data pacing rules (TWS API documentation, "Historical Data Limitations").
PACING_WINDOW_S = 600.0
PACING_MAX_REQUESTS = 60
IDENTICAL_GAP_S = 15.0
SAME_CONTRACT_WINDOW_S = 2.0
SAME_CONTRACT_MAX = 5

_BAR = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Bar:
    """One 5-minute bar as the gateway sends it (start in UTC)."""

    start: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(slots=True)
class HistoricalRequest:
    """A ``reqHistoricalData`` the gateway received, with how it was answered."""

    req_id: int
    client_id: int | None
    symbol: str
    sec_type: str
    exchange: str
    currency: str
    end: str
    bar_size: str
    duration: str
    use_rth: bool
    what_to_show: str
    format_date: int
    keep_up_to_date: bool
    at: float
    error: int | None = None
    bars_sent: int = 0

    @property
    def identity(self) -> tuple[str, ...]:
        """What makes two requests identical in IB's pacing rules."""
        return (
            self.symbol,
            self.sec_type,
            self.exchange,
            self.end,
            self.bar_size,
            self.duration,
            str(self.use_rth),
            self.what_to_show,
        )


@dataclass(eq=False)
class _Session:
    """One API client connection."""

    writer: asyncio.StreamWriter
    server_version: int = 0
    client_id: int | None = None
    subscriptions: dict[int, str] = field(default_factory=dict)  # reqId -> symbol
    tickers: dict[int, str] = field(default_factory=dict)

    def send(self, *fields: object) -> None:
        """Write one length-prefixed message of NUL-terminated fields."""
        if self.writer.is_closing():
            return
        payload = "".join(f"{_text(value)}\0" for value in fields).encode()
        self.writer.write(struct.pack(">I", len(payload)) + payload)

    def error(self, req_id: int, code: int, message: str) -> None:
        """Send an error message (id 4, version 2; servers >= 166 add a JSON field)."""
        if self.server_version >= 166:
            self.send(4, 2, req_id, code, message, "")
        else:
            self.send(4, 2, req_id, code, message)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class SyntheticTape:
    """Bars the gateway serves: the deterministic simulator up to the gateway's clock.

    The newest bar is the one in progress during the session (as IB sends it), with the
    simulator's final values; tests override single bars with :meth:`override`.
    """

    def __init__(self, seed: int = 8, symbols: tuple[str, ...] = tuple(CONTRACTS)) -> None:
        self._provider = SyntheticProvider(seed=seed, symbols=symbols)
        self._overrides: dict[tuple[str, datetime], Bar] = {}

    def override(self, symbol: str, bar: Bar) -> None:
        """Make the tape answer ``bar`` for its symbol and start from now on."""
        self._overrides[(symbol, bar.start)] = bar

    def bars(self, symbol: str, now: datetime, since: datetime | None, sessions: int) -> list[Bar]:
        """Bars of ``symbol`` up to the one in progress at ``now``.

        Args:
            symbol: Ticker.
            now: The gateway's clock.
            since: For a duration in seconds: keep bars starting at or after this time.
            sessions: For a duration in days: this many sessions' worth of bars.
        """
        if since is None:
            count = max(sessions, 1) * 78
        else:
            count = int((now - since).total_seconds()) // 300 + 2
        # start + 5 min <= now + 5 min: the bar in progress counts.
        frame = self._provider.snapshot_sync(symbol, now + _BAR, count).bars
        result = []
        for row in frame.iter_rows(named=True):
            start = row["start"]
            if since is not None and start < since:
                continue
            bar = Bar(start, row["open"], row["high"], row["low"], row["close"], row["volume"])
            result.append(self._overrides.get((symbol, start), bar))
        return result

    def current(self, symbol: str, now: datetime) -> Bar | None:
        """The newest bar at ``now`` (in progress during the session), overrides included."""
        frame = self._provider.snapshot_sync(symbol, now + _BAR, 1).bars
        if frame.is_empty():
            return None
        row = frame.row(0, named=True)
        start = row["start"]
        bar = Bar(start, row["open"], row["high"], row["low"], row["close"], row["volume"])
        candidates = [self._overrides.get((symbol, start), bar)]
        candidates += [
            pushed
            for (name, begins), pushed in self._overrides.items()
            if name == symbol and start < begins <= now
        ]
        return max(candidates, key=lambda candidate: candidate.start)


class PacingReferee:
    """Applies IB's historical-data pacing rules and counts violations."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sent: deque[float] = deque()
        self._identical: dict[tuple[str, ...], float] = {}
        self._per_contract: defaultdict[tuple[str, str, str], deque[float]] = defaultdict(deque)
        self.violations: Counter[str] = Counter()

    def judge(self, request: HistoricalRequest) -> str | None:
        """Record ``request``; return the rule it breaks, or None."""
        now = self._clock()
        while self._sent and now - self._sent[0] >= PACING_WINDOW_S:
            self._sent.popleft()
        contract = (request.symbol, request.exchange, request.what_to_show)
        recent = self._per_contract[contract]
        while recent and now - recent[0] >= SAME_CONTRACT_WINDOW_S:
            recent.popleft()
        previous = self._identical.get(request.identity)
        rule = None
        if previous is not None and now - previous < IDENTICAL_GAP_S:
            rule = "identical request within 15 s"
        elif len(self._sent) >= PACING_MAX_REQUESTS:
            rule = "more than 60 requests in 10 minutes"
        elif len(recent) >= SAME_CONTRACT_MAX:
            rule = "6 or more requests for one contract within 2 s"
        # IB counts rejected requests against the limits too.
        self._sent.append(now)
        recent.append(now)
        self._identical[request.identity] = now
        if rule is not None:
            self.violations[rule] += 1
        return rule


class FakeGateway:
    """A TWS / IB Gateway double listening on 127.0.0.1.

    Attributes:
        historical_requests: Every ``reqHistoricalData`` received, in order.
        contract_requests: Symbols of every ``reqContractDetails`` received, in order.
        received: Every message received after the handshake: (monotonic time, fields).
        unsubscribed_quotes: Symbols whose ``reqMktData`` is refused with error 354.
        handshakes: API sessions accepted so far.
        referee: The pacing referee; ``referee.violations`` counts broken rules.
    """

    def __init__(
        self,
        tape: SyntheticTape | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        update_interval_s: float = 0.5,
    ) -> None:
        self.tape = tape or SyntheticTape()
        self.clock = clock
        self.update_interval_s = update_interval_s
        self.historical_requests: list[HistoricalRequest] = []
        self.contract_requests: list[str] = []
        self.received: list[tuple[float, list[str]]] = []
        self.unsubscribed_quotes: set[str] = set()
        self.handshakes = 0
        self.referee = PacingReferee()
        self._scripted: defaultdict[str, deque[tuple[int, str]]] = defaultdict(deque)
        self._sessions: set[_Session] = set()
        self._server: asyncio.Server | None = None
        self._updater: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port the first time, the same port after a stop)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self._updater is None:
            self._updater = asyncio.create_task(self._stream_updates())

    async def stop(self) -> None:
        """Stop listening and cut every connection, as a gateway restart does."""
        if self._server is not None:
            self._server.close()
            self.drop_connections()
            await self._server.wait_closed()
            self._server = None

    async def close(self) -> None:
        """Stop for good, including the update streamer."""
        await self.stop()
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
            self._updater = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def drop_connections(self) -> None:
        """Abort every client socket (a network cut or a gateway crash)."""
        for session in list(self._sessions):
            session.writer.transport.abort()
        self._sessions.clear()

    @property
    def connected_clients(self) -> int:
        """API sessions currently open."""
        return sum(1 for session in self._sessions if session.client_id is not None)

    # -- scripting ---------------------------------------------------------------------------

    def fail_historical(self, symbol: str, code: int, message: str, times: int = 1) -> None:
        """Answer the next ``times`` history requests for ``symbol`` with error ``code``."""
        for _ in range(times):
            self._scripted[symbol].append((code, message))

    def push_bar(self, symbol: str, bar: Bar) -> int:
        """Make ``bar`` part of the tape and stream it to every live subscription of ``symbol``.

        Returns:
            How many subscriptions it was sent to.
        """
        self.tape.override(symbol, bar)
        sent = 0
        for session in list(self._sessions):
            for req_id, subscribed in session.subscriptions.items():
                if subscribed == symbol:
                    self._send_update(session, req_id, bar)
                    sent += 1
        return sent

    def end_subscriptions(self, symbol: str, code: int, message: str) -> int:
        """End every live subscription of ``symbol`` with an error, as IB's HMDS sometimes does.

        Returns:
            How many subscriptions were ended.
        """
        ended = 0
        for session in list(self._sessions):
            for req_id, subscribed in list(session.subscriptions.items()):
                if subscribed == symbol:
                    del session.subscriptions[req_id]
                    session.error(req_id, code, message)
                    ended += 1
        return ended

    def requests_for(self, symbol: str) -> list[HistoricalRequest]:
        """History requests received for ``symbol``."""
        return [request for request in self.historical_requests if request.symbol == symbol]

    # -- protocol ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        session = _Session(writer)
        self._sessions.add(session)
        try:
            if await reader.readexactly(4) != b"API\0":
                return
            versions = (await _read_message(reader)).decode().split()[0]
            low, _, high = versions.removeprefix("v").partition("..")
            if int(high or low) < MIN_CLIENT_VERSION:
                return
            session.server_version = min(int(high or low), SERVER_VERSION)
            connected = self.clock().astimezone(NY).strftime("%Y%m%d %H:%M:%S EST")
            session.send(session.server_version, connected)
            while True:
                fields = (await _read_message(reader)).decode().split("\0")[:-1]
                self.received.append((time.monotonic(), fields))
                if not self._dispatch(session, fields):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._sessions.discard(session)
            writer.close()
            self._handlers.discard(task)

    def _dispatch(self, session: _Session, fields: list[str]) -> bool:
        """Answer one client message; False closes the connection."""
        msg_id = int(fields[0])
        if msg_id == 71:  # startApi
            return self._start_api(session, int(fields[2]))
        if msg_id == 20:
            self._historical(session, fields)
        elif msg_id == 25:  # cancelHistoricalData
            session.subscriptions.pop(int(fields[2]), None)
        elif msg_id == 9:
            self._contract_details(session, fields)
        elif msg_id == 1:
            self._market_data(session, fields)
        elif msg_id == 2:  # cancelMktData
            session.tickers.pop(int(fields[2]), None)
        elif msg_id == 61:  # reqPositions -> positionEnd
            session.send(62, 1)
        elif msg_id == 6:  # reqAccountUpdates -> accountDownloadEnd
            if fields[2] == "1":
                session.send(54, 1, fields[3])
        elif msg_id == 76:  # reqAccountUpdatesMulti -> accountUpdateMultiEnd
            session.send(74, 1, fields[2])
        elif msg_id == 7:  # reqExecutions -> execDetailsEnd
            session.send(55, 1, fields[2])
        elif msg_id == 5:  # reqOpenOrders -> openOrderEnd
            session.send(53, 1)
        elif msg_id == 99:  # reqCompletedOrders -> completedOrdersEnd
            session.send(102)
        elif msg_id == 49:  # reqCurrentTime
            session.send(49, 1, int(self.clock().timestamp()))
        return True

    def _start_api(self, session: _Session, client_id: int) -> bool:
        if any(other.client_id == client_id for other in self._sessions if other is not session):
            session.error(
                -1,
                326,
                "Unable to connect as the client id is already in use. "
                "Retry with a unique client id.",
            )
            return False
        session.client_id = client_id
        self.handshakes += 1
        session.send(15, 1, ACCOUNT)
        session.send(9, 1, 1)
        session.error(-1, 2104, "Market data farm connection is OK:usfarm")
        session.error(-1, 2106, "HMDS data farm connection is OK:ushmds")
        return True

    def _historical(self, session: _Session, fields: list[str]) -> None:
        # 20, reqId, contract (12 fields), includeExpired, end, barSize, duration, useRTH,
        # whatToShow, formatDate, keepUpToDate, chartOptions
        contract = fields[2:14]
        request = HistoricalRequest(
            req_id=int(fields[1]),
            client_id=session.client_id,
            symbol=contract[1],
            sec_type=contract[2],
            exchange=contract[7],
            currency=contract[9],
            end=fields[15],
            bar_size=fields[16],
            duration=fields[17],
            use_rth=fields[18] == "1",
            what_to_show=fields[19],
            format_date=int(fields[20] or 1),
            keep_up_to_date=fields[21] == "1",
            at=time.monotonic(),
        )
        self.historical_requests.append(request)
        if self.referee.judge(request) is not None:
            self._refuse(session, request, 162, PACING_MESSAGE)
            return
        if CONTRACTS.get(request.symbol) != (request.sec_type, request.exchange) or (
            request.currency != "USD"
        ):
            self._refuse(session, request, 200, NO_DEFINITION_MESSAGE)
            return
        if request.keep_up_to_date and request.end:
            self._refuse(
                session,
                request,
                321,
                "Error validating request.-'bP' : cause - End date not supported with live updates",
            )
            return
        if self._scripted[request.symbol]:
            code, message = self._scripted[request.symbol].popleft()
            self._refuse(session, request, code, message)
            return
        now = self.clock()
        amount, _, unit = request.duration.partition(" ")
        if unit == "S":
            bars = self.tape.bars(request.symbol, now, now - timedelta(seconds=int(amount)), 0)
        else:
            bars = self.tape.bars(request.symbol, now, None, int(amount))
        stamp = now.strftime("%Y%m%d %H:%M:%S")
        payload: list[object] = [17, request.req_id, stamp, stamp, len(bars)]
        for bar in bars:
            payload += [
                _format_date(bar.start, request.format_date),
                bar.open,
                bar.high,
                bar.low,
                bar.close,
                bar.volume,
                round((bar.high + bar.low + bar.close) / 3, 4),
                int(bar.volume // 100),
            ]
        session.send(*payload)
        request.bars_sent = len(bars)
        if request.keep_up_to_date:
            session.subscriptions[request.req_id] = request.symbol

    def _contract_details(self, session: _Session, fields: list[str]) -> None:
        # 9, 8, reqId, contract (12 fields), includeExpired, secIdType, secId[, issuerId]
        req_id = int(fields[2])
        symbol, sec_type, exchange, currency = fields[4], fields[5], fields[10], fields[12]
        self.contract_requests.append(symbol)
        if CONTRACTS.get(symbol) != (sec_type, exchange) or currency != "USD":
            session.error(req_id, 200, NO_DEFINITION_MESSAGE)
            return
        con_id = zlib.crc32(symbol.encode()) % 100_000_000
        primary = PRIMARY_EXCHANGES.get(symbol, exchange)
        hours = "20240306:0930-20240306:1600"
        # contractData for servers >= 164 (no version field), then contractDataEnd.
        session.send(
            *(10, req_id, symbol, sec_type, "", 0.0, "", exchange, "USD", symbol, symbol, symbol),
            *(con_id, 0.01, "", "LMT,MKT", f"{exchange},{primary}", 1, 0, f"{symbol} fake"),
            *(primary, "", "", "", "", "US/Eastern", hours, hours, "", "", 0),
            *(1, "", "", "26", "", "COMMON" if sec_type == "STK" else "", 1, 1, 1),
        )
        session.send(52, 1, req_id)

    def _refuse(self, session: _Session, request: HistoricalRequest, code: int, text: str) -> None:
        request.error = code
        session.error(request.req_id, code, text)

    def _market_data(self, session: _Session, fields: list[str]) -> None:
        # 1, 11, reqId, contract (12 fields), deltaNeutral flag, ticks, snapshot, regulatory, opts
        req_id = int(fields[2])
        symbol, sec_type, exchange = fields[4], fields[5], fields[10]
        if CONTRACTS.get(symbol) != (sec_type, exchange):
            session.error(req_id, 200, NO_DEFINITION_MESSAGE)
            return
        if symbol in self.unsubscribed_quotes:
            session.error(req_id, 354, NOT_SUBSCRIBED_MESSAGE)
            return
        session.tickers[req_id] = symbol
        bar = self.tape.current(symbol, self.clock())
        if bar is None:
            return
        last = bar.close
        if sec_type == "IND":
            # Indices have no book: IB sends -1 for bid and ask.
            bid = ask = -1.0
        else:
            bid, ask = round(last - 0.01, 2), round(last + 0.01, 2)
        for tick_type, price, size in ((1, bid, 100), (2, ask, 100), (4, last, 1), (9, last, 0)):
            session.send(1, 6, req_id, tick_type, price, size, 0)

    def _send_update(self, session: _Session, req_id: int, bar: Bar) -> None:
        # historicalDataUpdate: 90, reqId, barCount, date, open, close, high, low, wap, volume
        session.send(
            90,
            req_id,
            int(bar.volume // 100),
            int(bar.start.timestamp()),
            bar.open,
            bar.close,
            bar.high,
            bar.low,
            round((bar.high + bar.low + bar.close) / 3, 4),
            bar.volume,
        )

    async def _stream_updates(self) -> None:
        """Send the bar in progress to every live subscription, as IB does every few seconds."""
        while True:
            await asyncio.sleep(self.update_interval_s)
            now = self.clock()
            current: dict[str, Bar | None] = {}
            for session in list(self._sessions):
                for req_id, symbol in list(session.subscriptions.items()):
                    if symbol not in current:
                        current[symbol] = self.tape.current(symbol, now)
                    bar = current[symbol]
                    if bar is not None:
                        self._send_update(session, req_id, bar)


def _format_date(start: datetime, format_date: int) -> str:
    if format_date == 2:
        return str(int(start.timestamp()))
    return start.astimezone(NY).strftime("%Y%m%d %H:%M:%S") + " US/Eastern"


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(size)
