"""A real HTTP market-data service on 127.0.0.1 implementing the companion contract of SPEC §6.

``GET /api/market_data/{symbol}/bars?count=N&interval=5 mins`` → ``{"bars": [{time, open,
high, low, close, volume}]}`` (bars stamped at their start, ISO-8601 with offset, the open bar
included as a live service would), ``GET /api/market_data/{symbol}/quote`` and ``GET /health``.
Knobs let a test make it fail, slow, or send naive times.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from providers.synthetic import SyntheticProvider

_BAR = timedelta(minutes=5)


class CompanionService:
    """The fake companion: bars from the simulator up to its clock.

    Attributes:
        hits: Requests received per path.
        fail_next: Answer this many next requests with 503.
        delay_s: Sleep this long before answering each request.
        naive_times: Send bar times without a UTC offset (a contract violation).
    """

    def __init__(
        self,
        seed: int = 8,
        symbols: tuple[str, ...] = ("SPX", "SPY", "VIX", "NDX", "RUT"),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.simulator = SyntheticProvider(seed=seed, symbols=symbols)
        self.symbols = frozenset(symbols)
        self.clock = clock
        self.hits: Counter[str] = Counter()
        self.fail_next = 0
        self.delay_s = 0.0
        self.naive_times = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running service."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Serve on a free port in a background thread."""
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body = service.answer(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, raw_path: str) -> tuple[int, Any]:
        """Route one GET to its status and JSON body."""
        parts = urlsplit(raw_path)
        with self._lock:
            self.hits[parts.path] += 1
            failing = self.fail_next > 0
            self.fail_next -= failing
        if self.delay_s:
            time.sleep(self.delay_s)
        if failing:
            return 503, {"error": "IB not connected"}
        if parts.path == "/health":
            return 200, {"status": "ok", "ib_connected": True}
        segments = parts.path.strip("/").split("/")
        if len(segments) != 4 or segments[:2] != ["api", "market_data"]:
            return 404, {"error": f"no route {parts.path}"}
        symbol, what = segments[2].upper(), segments[3]
        if symbol not in self.symbols:
            return 404, {"error": f"unknown symbol {symbol}"}
        query = parse_qs(parts.query)
        if what == "bars":
            if query.get("interval", ["5 mins"])[0] != "5 mins":
                return 400, {"error": "only 5 mins bars"}
            return 200, {"bars": self.bars(symbol, int(query.get("count", ["100"])[0]))}
        if what == "quote":
            bars = self.bars(symbol, 1)
            last = bars[-1]["close"]
            return 200, {
                "symbol": symbol,
                "price": last,
                "bid": None,
                "ask": None,
                "last": last,
                "time": self.clock().isoformat(),
            }
        return 404, {"error": f"no route {parts.path}"}

    def bars(self, symbol: str, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` bars up to the open one, as the service sends them."""
        frame = self.simulator.snapshot_sync(symbol, self.clock() + _BAR, count).bars
        rows = []
        for row in frame.iter_rows(named=True):
            start: datetime = row["start"]
            stamp = (
                start.replace(tzinfo=None).isoformat() if self.naive_times else start.isoformat()
            )
            rows.append(
                {
                    "time": stamp,
                    "open": row["open"],
                    "high": row["high"],
                    "low": row["low"],
                    "close": row["close"],
                    "volume": row["volume"],
                }
            )
        return rows


class SilentServer:
    """A socket that accepts connections (in the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)

    @property
    def url(self) -> str:
        """Base URL pointing at the silent socket."""
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()
