"""The optional prediction log: one JSON line per answered order, written off the request path.

A request hands its batch to a bounded queue and returns; a writer thread encodes and appends
the lines. When the queue is full the batch is dropped and counted
(``magic8_prediction_log_dropped_total``): the log never slows or blocks a request.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Final

import msgspec

from .metrics import PREDICTION_LOG_DROPPED, PREDICTION_LOG_WRITTEN
from .schema import Order, Prediction

log = logging.getLogger(__name__)

_STOP: Final = object()
_ENCODER: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class LoggedBatch:
    """What a request hands the writer: its orders, their answers and its latency."""

    orders: Sequence[Order]
    predictions: Sequence[Prediction]
    latency_ms: float
    request_id: str | None


class PredictionLine(msgspec.Struct, kw_only=True):
    """One line of the prediction log."""

    time: datetime
    request_id: str | None
    order: Order
    features_hash: str | None
    win_probability: float | None
    threshold: float | None
    prediction: str
    model_version: str | None
    data_source: str | None
    data_as_of: datetime | None
    cached: bool
    latency_ms: float
    error: str | None = None


def features_hash(order: Order, model_version: str, source: str | None, as_of: datetime) -> str:
    """Identify the feature row an order was scored on.

    The row is a pure function of the order's fields, the market data (provider and as-of
    time) and the model version, so equal hashes mean equal features, without the request
    path having to keep the row.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(_ENCODER.encode(order))
    digest.update(f"|{model_version}|{source}|{as_of.isoformat()}".encode())
    return digest.hexdigest()


def lines(batch: LoggedBatch) -> list[PredictionLine]:
    """The log lines of one batch, paired with its orders by position."""
    out = []
    for order, answer in zip(batch.orders, batch.predictions, strict=True):
        scored = answer.model_version is not None and answer.data_as_of is not None
        out.append(
            PredictionLine(
                time=answer.timestamp,
                request_id=batch.request_id,
                order=order,
                features_hash=features_hash(
                    order,
                    answer.model_version,  # type: ignore[arg-type]
                    answer.data_source,
                    answer.data_as_of,  # type: ignore[arg-type]
                )
                if scored
                else None,
                win_probability=answer.win_probability,
                threshold=answer.threshold,
                prediction=answer.prediction,
                model_version=answer.model_version,
                data_source=answer.data_source,
                data_as_of=answer.data_as_of,
                cached=answer.cached,
                latency_ms=batch.latency_ms,
                error=answer.error,
            )
        )
    return out


class PredictionLog:
    """A bounded queue and the thread that drains it into a JSON-lines file.

    Args:
        path: File the lines are appended to (created with its folder).
        queue_size: Batches waiting at most; beyond, new batches are dropped and counted.
    """

    def __init__(self, path: Path, queue_size: int) -> None:
        self.path = path
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[LoggedBatch | object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the file and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = self.path.open("ab")
        self._thread = threading.Thread(
            target=self._run, args=(stream,), name="prediction-log", daemon=True
        )
        self._thread.start()

    def submit(self, batch: LoggedBatch) -> bool:
        """Queue a batch for writing; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped += 1
            PREDICTION_LOG_DROPPED.inc()
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer (waiting at most ``timeout`` seconds)."""
        if self._thread is None:
            return
        # The stop marker must get in even when the queue is full: wait for room briefly.
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("prediction log: writer did not keep up; stopping without draining")
        self._thread.join(timeout)
        self._thread = None

    def _run(self, stream: IO[bytes]) -> None:
        with stream:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                assert isinstance(item, LoggedBatch)
                try:
                    encoded = [_ENCODER.encode(line) for line in lines(item)]
                    stream.write(b"\n".join(encoded) + b"\n")
                    if self._queue.empty():
                        stream.flush()
                except Exception:
                    # A write failure (disk full) must not kill the thread and make the queue
                    # fill for good: log it and carry on with the next batch.
                    log.exception("prediction log: cannot write", extra={"path": str(self.path)})
                    continue
                self.written += len(encoded)
                PREDICTION_LOG_WRITTEN.inc(len(encoded))
