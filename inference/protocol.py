"""uvicorn's httptools protocol, telling the app when each request was read.

A worker runs one batch at a time on its event loop, so requests read together wait in the
loop's ready queue while the first is scored. The gate (``inference.middleware``) refuses a
request that has already waited longer than ``performance.max_queue_ms`` there; for that it
needs the moment the request's first bytes were parsed, which only the protocol knows. It is
passed as the ASGI scope extension ``magic8.received`` (a ``time.perf_counter()`` value).

The extension ``magic8.uncount`` takes a refused request out of uvicorn's request count, the
one gunicorn's ``max_requests`` recycles a worker on: a refusal leaves nothing behind to
recycle for, and recycling in the middle of an overload would take the worker away exactly
when it is needed, and spend seconds of CPU on starting its replacement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The scope extension carrying the read time (absent when the app runs under another server).
RECEIVED: Final = "magic8.received"
#: The scope extension leaving a request out of the worker's request count.
UNCOUNT: Final = "magic8.uncount"


class StampingProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that stamps each request's scope with its read time."""

    def on_message_begin(self) -> None:
        """Start the request's scope as uvicorn does, then stamp it."""
        super().on_message_begin()
        # ASGI types extensions as dicts of dicts; ours are values, read with received_at().
        extensions: dict[str, Any] = {RECEIVED: time.perf_counter(), UNCOUNT: self._uncount}
        self.scope["extensions"] = extensions

    def _uncount(self) -> None:
        # uvicorn counts the request when its response completes; the count is only compared
        # with the limit between requests, so taking one off first is never seen early.
        self.server_state.total_requests -= 1


def received_at(scope: dict[str, object], default: float) -> float:
    """When the request of ``scope`` was read, or ``default`` when the server did not say."""
    extensions = scope.get("extensions")
    if isinstance(extensions, dict):
        stamp = extensions.get(RECEIVED)
        if isinstance(stamp, float):
            return stamp
    return default


def uncount(scope: dict[str, object]) -> None:
    """Leave the request of ``scope`` out of the worker's request count (if the server can)."""
    extensions = scope.get("extensions")
    if isinstance(extensions, dict):
        hook: Callable[[], None] | None = extensions.get(UNCOUNT)
        if hook is not None:
            hook()
