"""An async, typed client of the prediction server, for the DiscordTrading bot.

``predict_batch`` splits the orders at the server's ``max_batch_size`` (learnt from a 413 when
the server's is smaller than assumed), pairs every answer with its order by position, retries
503s after their ``Retry-After`` (bounded), and applies an explicit failure policy: with
``FailurePolicy.OPEN`` an order the server could not score is executed anyway (the bot's
historical behaviour), with ``FailurePolicy.CLOSED`` it is skipped.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import msgspec

from .schema import BatchResponse, Order, Prediction

log = logging.getLogger(__name__)

#: The server's default ``performance.batch_predictions.max_batch_size``.
DEFAULT_MAX_BATCH_SIZE: Final = 100


class FailurePolicy(enum.Enum):
    """What to do with an order the server could not score."""

    OPEN = "open"
    """Execute it anyway: a server outage never stops trading."""
    CLOSED = "closed"
    """Skip it: no trade without a prediction."""


@dataclass(frozen=True, slots=True)
class OrderResult:
    """The verdict on one order, at the order's position.

    Attributes:
        should_execute: Whether the bot should place the order.
        prediction: The server's answer when it scored the order, else None.
        error: Why the order was not scored (a per-order error from the server naming the
            field, or the request failure), else None.
        threshold: The decision threshold that was applied, when scored.
    """

    should_execute: bool
    prediction: Prediction | None
    error: str | None
    threshold: float | None = None


class PredictorClient:
    """Client of ``POST /predict/batch``.

    Args:
        base_url: Server address, e.g. ``http://127.0.0.1:8000``.
        failure_policy: What an unscored order becomes; there is deliberately no default.
        max_batch_size: Orders per request; lowered automatically when the server says so.
        timeout: Seconds for one HTTP exchange.
        max_retries: Retries of a 503 or a transport error, per chunk.
        max_retry_wait_s: Longest wait between retries, whatever ``Retry-After`` says.
        use_dynamic_thresholds: Use the server's per-strategy threshold (else 0.5).
        transport: An httpx transport (tests); default: a pooled HTTP connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        failure_policy: FailurePolicy,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        timeout: float = 15.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 5.0,
        use_dynamic_thresholds: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not isinstance(failure_policy, FailurePolicy):
            raise TypeError("failure_policy must be FailurePolicy.OPEN or FailurePolicy.CLOSED")
        self.failure_policy = failure_policy
        self.max_batch_size = max(1, max_batch_size)
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.use_dynamic_thresholds = use_dynamic_thresholds
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        self._decoder = msgspec.json.Decoder(BatchResponse)

    async def __aenter__(self) -> PredictorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def predict_batch(
        self, orders: Sequence[Mapping[str, Any] | Order], share_market_data: bool = True
    ) -> list[OrderResult]:
        """Score ``orders``; ``result[i]`` answers ``orders[i]``, always the same length."""
        results: list[OrderResult] = []
        start = 0
        while start < len(orders):
            size = self.max_batch_size
            chunk = orders[start : start + size]
            answered = await self._chunk(chunk, share_market_data)
            if answered is None:
                # The server's limit is smaller than ours: it told us, so resend from here.
                continue
            results.extend(answered)
            start += len(chunk)
        return results

    async def _chunk(
        self, chunk: Sequence[Mapping[str, Any] | Order], share_market_data: bool
    ) -> list[OrderResult] | None:
        """One request for ``chunk``; None when it must be split smaller."""
        body = msgspec.json.encode({"requests": chunk, "share_market_data": share_market_data})
        attempt = 0
        while True:
            try:
                response = await self._http.post(
                    "/predict/batch",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
            except httpx.TransportError as ex:
                if attempt < self.max_retries:
                    attempt += 1
                    await asyncio.sleep(min(0.1 * 2**attempt, self.max_retry_wait_s))
                    continue
                return self._failed(len(chunk), f"request failed: {type(ex).__name__}: {ex}")
            if response.status_code == 503 and attempt < self.max_retries:
                attempt += 1
                await asyncio.sleep(self._retry_after(response))
                continue
            if response.status_code == 413 and len(chunk) > 1:
                self._learn_limit(response, len(chunk))
                return None
            if response.status_code != 200:
                return self._failed(
                    len(chunk), f"server answered {response.status_code}: {_error_text(response)}"
                )
            return self._pair(chunk, response.content)

    def _pair(
        self, chunk: Sequence[Mapping[str, Any] | Order], content: bytes
    ) -> list[OrderResult]:
        try:
            answer = self._decoder.decode(content)
        except msgspec.DecodeError as ex:
            return self._failed(len(chunk), f"unreadable answer: {ex}")
        if len(answer.predictions) != len(chunk):
            # Pairing by position is only sound if the server answered every order.
            return self._failed(
                len(chunk),
                f"server answered {len(answer.predictions)} predictions for {len(chunk)} orders",
            )
        return [self._verdict(prediction) for prediction in answer.predictions]

    def _verdict(self, prediction: Prediction) -> OrderResult:
        if prediction.error is not None or prediction.win_probability is None:
            return OrderResult(
                should_execute=self.failure_policy is FailurePolicy.OPEN,
                prediction=prediction,
                error=prediction.error or "no probability",
            )
        threshold = (
            prediction.threshold
            if self.use_dynamic_thresholds and prediction.threshold is not None
            else 0.5
        )
        return OrderResult(
            should_execute=prediction.win_probability >= threshold,
            prediction=prediction,
            error=None,
            threshold=threshold,
        )

    def _failed(self, count: int, error: str) -> list[OrderResult]:
        log.error("batch prediction failed", extra={"error": error, "orders": count})
        execute = self.failure_policy is FailurePolicy.OPEN
        return [OrderResult(should_execute=execute, prediction=None, error=error)] * count

    def _learn_limit(self, response: httpx.Response, sent: int) -> None:
        try:
            limit = int(response.json()["max_batch_size"])
        except (ValueError, KeyError, TypeError):
            # A body-size 413 names no batch size: halve and try again.
            limit = sent // 2
        self.max_batch_size = max(1, min(limit, sent - 1))

    def _retry_after(self, response: httpx.Response) -> float:
        try:
            wait = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        return min(max(wait, 0.0), self.max_retry_wait_s)


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text[:200]))
    except ValueError:
        return response.text[:200]
