"""The request gate: request ids, load shedding, deadlines, drain, request metrics and logs.

It wraps Falcon at the ASGI level (a subclass of ``falcon.asgi.App``) so that a request refused
for overload never builds Falcon's request objects: under 4× the capacity the CPU goes to the
requests that were admitted, and their latency holds.

Two rules shed load, both answered at once with 503 and ``Retry-After``:

* **queueing delay**: a worker scores one batch at a time on its event loop, so requests read
  together wait in the loop's ready queue while the one before them is scored. A request that
  reaches the gate more than ``max_queue_s`` after it was read (``inference.protocol`` stamps
  the read time), with another request served in the meantime, is refused: admitting it would
  add the wait to its answer, and the next request read would wait longer still. Requests
  arriving one at a time never wait behind another and are never refused, however busy the
  worker is between them; nor is a request delayed only by a pause of the whole process.
* **concurrency**: at most ``max_in_flight`` admitted requests at once, which only matters when
  they suspend (a market-data provider doing I/O).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Any, Final

import falcon.asgi
import msgspec

from .logs import REQUEST_ID
from .metrics import Recorder
from .protocol import received_at, uncount

log = logging.getLogger("inference.access")

#: Paths that are never shed and have no deadline: probes and scrapes must answer under load.
EXEMPT_PATHS: Final = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/metrics"})
#: Never shed, but held to the deadline: an operator must be able to swap models during an
#: overload (the reload goes on past the deadline; the answer does not wait for it).
UNSHED_PATHS: Final = frozenset({"/admin/reload"})
#: APPSEC: a client's ``X-Request-ID`` is echoed and logged only if it is short and plain.
_REQUEST_ID_SHAPE: Final = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
_REQUEST_ID_HEADER: Final = b"x-request-id"
_CONNECTION_CLOSE: Final = (b"connection", b"close")
_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_PATH_LOGGED: Final = 200
_SHED_WARNING_EVERY_S: Final = 10.0
#: Refusals logged as a periodic summary, not a line each.
_SUMMARISED: Final = frozenset({"queue", "concurrency"})


@dataclass(eq=False)
class DrainState:
    """What a worker that is going away tells its clients.

    Attributes:
        closing: Every response carries ``Connection: close``, so keep-alive clients move
            to another worker before this one stops accepting (no request is sent down a
            connection the server is about to close).
        stopping: Readiness answers 503 (SIGTERM; not when gunicorn merely recycles the worker).
    """

    closing: bool = False
    stopping: bool = False


_DRAIN_STATES: weakref.WeakSet[DrainState] = weakref.WeakSet()


def begin_draining(stopping: bool) -> None:
    """Start draining every app of this process (called from the worker's signal handler)."""
    for state in list(_DRAIN_STATES):
        state.closing = True
        state.stopping = state.stopping or stopping


@dataclass(frozen=True, slots=True)
class Limits:
    """The gate's settings.

    Attributes:
        max_in_flight: Requests served at once; more are refused with 503 at once.
        max_queue_s: Longest a request may wait on the worker's event loop between being read
            and reaching the gate; longer is refused with 503 at once.
        deadline_s: Longest a request may take from being read; past it the answer is 503.
        retry_after_s: ``Retry-After`` of those 503s.
        slow_s: Requests slower than this are logged at WARNING.
    """

    max_in_flight: int
    max_queue_s: float
    deadline_s: float
    retry_after_s: int
    slow_s: float


class _Exchange:
    """The response side of one request as the gate sees it."""

    __slots__ = ("deadline", "refused", "request_id", "started", "status", "timeout", "withheld")

    def __init__(self, request_id: bytes, deadline: float) -> None:
        self.request_id = request_id
        self.deadline = deadline
        self.status = 0
        self.started = False
        self.withheld = False
        self.refused: str | None = None
        self.timeout: asyncio.Timeout | None = None


class GatedApp(falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]):
    """Falcon's ASGI app behind the gate.

    Args:
        limits: Concurrency, deadline and logging thresholds.
        recorder: Where request durations go.
        drain: Shared with readiness; see :class:`DrainState`.
        **options: Passed to ``falcon.asgi.App``.
    """

    def __init__(
        self, *, limits: Limits, recorder: Recorder, drain: DrainState, **options: Any
    ) -> None:
        super().__init__(**options)
        self.limits = limits
        self.recorder = recorder
        self.drain = drain
        self.in_flight = 0
        # When the last admitted request finished: a request read before that waited behind
        # work, not behind a pause of the whole process (which no refusal would shorten).
        self._done_at = 0.0
        self._endpoints: dict[str, str] = {}
        self._shed_since_warning = 0
        self._last_shed_warning = 0.0
        _DRAIN_STATES.add(drain)
        self._overloaded = _encoded_error(
            503,
            {
                "error": f"server overloaded: more than {limits.max_in_flight} requests in "
                f"flight on this worker; retry after {limits.retry_after_s} s",
                "retry_after": limits.retry_after_s,
            },
            limits.retry_after_s,
        )
        self._queued = _encoded_error(
            503,
            {
                "error": f"server overloaded: the request waited more than "
                f"{limits.max_queue_s * 1e3:g} ms for this worker; retry after "
                f"{limits.retry_after_s} s",
                "retry_after": limits.retry_after_s,
            },
            limits.retry_after_s,
        )
        self._late = _encoded_error(
            503,
            {
                "error": f"request deadline of {limits.deadline_s * 1e3:.0f} ms exceeded; "
                f"retry after {limits.retry_after_s} s",
                "retry_after": limits.retry_after_s,
            },
            limits.retry_after_s,
        )

    async def __call__(  # type: ignore[override]
        self, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        """Serve one ASGI connection event: HTTP requests pass the gate, lifespan does not."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        received = received_at(scope, started)
        # ASGI allows any iterable of iterable pairs (falcon's test client passes one-shot
        # iterators): make them a list of pairs before reading, so the app sees every header.
        scope["headers"] = headers = [(name, value) for name, value in scope["headers"]]
        exchange = _Exchange(_request_id(headers), received + self.limits.deadline_s)
        token = REQUEST_ID.set(exchange.request_id.decode("ascii"))
        path: str = scope["path"]
        route = path.rstrip("/") or "/"
        try:
            if route in EXEMPT_PATHS:
                await super().__call__(scope, receive, self._sender(send, exchange))
            elif route in UNSHED_PATHS:
                await self._admit(scope, receive, send, exchange)
            elif started - received > self.limits.max_queue_s and self._done_at > received:
                self._note_shed(scope, "queue")
                await self._refuse(send, exchange, self._queued, "queue")
            elif self.in_flight >= self.limits.max_in_flight:
                self._note_shed(scope, "concurrency")
                await self._refuse(send, exchange, self._overloaded, "concurrency")
            else:
                await self._admit(scope, receive, send, exchange)
        finally:
            self._finish(scope, exchange, time.perf_counter() - received)
            REQUEST_ID.reset(token)

    async def _admit(self, scope: dict[str, Any], receive: Any, send: Any, ex: _Exchange) -> None:
        self.in_flight += 1
        try:
            # PERF: no yield before scoring. A warm batch never suspends, so the requests read
            # with this one wait behind it; the queueing-delay rule refuses them when they
            # reach the gate, instead of a yield here making this one wait behind them.
            async with asyncio.timeout(ex.deadline - time.perf_counter()) as timeout:
                ex.timeout = timeout
                await super().__call__(scope, receive, self._sender(send, ex))
        except TimeoutError:
            if ex.started:
                raise
            await self._refuse(send, ex, self._late, "deadline")
        finally:
            self.in_flight -= 1
            self._done_at = time.perf_counter()
        if ex.withheld:
            # CPU-bound work ran past the deadline without an await to interrupt it.
            await self._refuse(send, ex, self._late, "deadline")

    def _sender(self, send: Any, ex: _Exchange) -> Any:
        """Wrap ``send`` to add the request id (and drain headers) and note the status."""
        drain = self.drain

        async def gated_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if ex.timeout is not None:
                    # Never cancel a response half-sent.
                    ex.timeout.reschedule(None)
                    if time.perf_counter() > ex.deadline and message["status"] < 400:
                        ex.withheld = True
                        return
                headers = list(message.get("headers", ()))
                headers.append((_REQUEST_ID_HEADER, ex.request_id))
                if drain.closing:
                    headers.append(_CONNECTION_CLOSE)
                message["headers"] = headers
                ex.status = message["status"]
                ex.started = True
            elif ex.withheld:
                return
            await send(message)

        return gated_send

    async def _refuse(
        self,
        send: Any,
        ex: _Exchange,
        response: tuple[list[tuple[bytes, bytes]], bytes],
        reason: str,
    ) -> None:
        """Answer with a prepared 503 without reading the body (it stays unread)."""
        ex.refused = reason
        if reason == "deadline":
            self.recorder.shed(reason)
        headers, body = response
        headers = [*headers, (_REQUEST_ID_HEADER, ex.request_id)]
        if self.drain.closing:
            headers.append(_CONNECTION_CLOSE)
        ex.status, ex.started, ex.withheld = 503, True, False
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _note_shed(self, scope: dict[str, Any], reason: str) -> None:
        # Refused at the door, it did no work: it must not bring the worker's recycling closer.
        uncount(scope)
        self.recorder.shed(reason)
        self._shed_since_warning += 1
        now = time.monotonic()
        # A log line per refused request would spend the CPU the refusal saves: summarise.
        if now - self._last_shed_warning >= _SHED_WARNING_EVERY_S:
            log.warning(
                "shedding load",
                extra={
                    "refused": self._shed_since_warning,
                    "max_in_flight": self.limits.max_in_flight,
                    "max_queue_ms": self.limits.max_queue_s * 1e3,
                },
            )
            self._shed_since_warning = 0
            self._last_shed_warning = now

    def _finish(self, scope: dict[str, Any], ex: _Exchange, seconds: float) -> None:
        """Record the request's duration and write its log line if it deserves one."""
        method: str = scope["method"]
        method = method if method in _METHODS else "OTHER"
        path: str = scope["path"]
        endpoint = self._endpoint(path)
        self.recorder.request(endpoint, method, ex.status, seconds)
        status = ex.status
        if ex.refused in _SUMMARISED:
            level = logging.DEBUG  # summarised by _note_shed
        elif status >= 500 or seconds > self.limits.slow_s:
            level = logging.WARNING
        elif status >= 400:
            level = logging.INFO
        else:
            level = logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "method": method,
                    "path": path[:_PATH_LOGGED],
                    "endpoint": endpoint,
                    "status": status,
                    "duration_ms": round(seconds * 1e3, 3),
                    **({"refused": ex.refused} if ex.refused else {}),
                },
            )

    def _endpoint(self, path: str) -> str:
        """The route template serving ``path`` (a bounded label), or ``unmatched``."""
        endpoint = self._endpoints.get(path)
        if endpoint is not None:
            return endpoint
        found = self._router.find(path.rstrip("/") or "/")
        endpoint = found[3] if found else "unmatched"
        if endpoint == path:
            # Only literal routes are memoised, so the table stays as small as the route list.
            self._endpoints[path] = endpoint
        return str(endpoint)


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's ``X-Request-ID`` when it is well formed, else a fresh random one."""
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            if _REQUEST_ID_SHAPE.fullmatch(value):
                return value
            break
    return secrets.token_hex(8).encode("ascii")


def _encoded_error(
    status: int, body: dict[str, Any], retry_after: int
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of an error answered by the gate itself."""
    encoded = msgspec.json.encode(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(encoded)).encode("ascii")),
        (b"retry-after", str(retry_after).encode("ascii")),
    ]
    return headers, encoded
