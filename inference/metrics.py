"""Prometheus metrics of SPEC §7 (``magic8_`` prefix, seconds), correct under several workers.

Under gunicorn every worker writes its values to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client multiprocess mode; the CLI and
``gunicorn.conf.py`` create a fresh directory per server start), and the worker that answers
``GET /metrics`` reads every worker's files, so counts are summed across workers. Without the
variable (``magic8 serve`` with one process) the ordinary in-process registry is used.

The request path never waits on those files: it appends to plain Python buffers, and each
worker's :class:`Recorder` flushes them, and samples the caches, providers and models, once
per ``observability.metrics_interval_s`` and before answering a scrape.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from .pipeline import StageTimes
    from .schema import Prediction
    from .service import Service

#: The variable prometheus-client itself reads to turn multiprocess mode on.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

#: 50 µs to 1 s: a warm batch takes well under a millisecond, a cold provider fetch seconds.
LATENCY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 100, 250, 1000)
#: ``magic8_provider_circuit_state`` values.
CIRCUIT_VALUES: Final = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
#: Stages of ``magic8_stage_duration_seconds`` and the :class:`StageTimes` field of each.
PIPELINE_STAGES: Final = ("market_data", "features", "inference")

REQUEST_DURATION = Histogram(
    "magic8_request_duration_seconds",
    "Time from receiving a request to handing its response to the server, by route and status.",
    ["endpoint", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
STAGE_DURATION = Histogram(
    "magic8_stage_duration_seconds",
    "Time per batch spent in each stage: decode, market_data, features, inference, encode.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "magic8_predictions",
    "Orders answered, by symbol, strategy and result (WIN, LOSS, UNKNOWN).",
    ["symbol", "strategy", "result"],
)
CACHE_HITS = Counter("magic8_cache_hits", "Cache lookups answered, by cache.", ["cache"])
CACHE_MISSES = Counter("magic8_cache_misses", "Cache lookups not answered, by cache.", ["cache"])
PROVIDER_ERRORS = Counter(
    "magic8_provider_errors", "Failed market-data fetches, by provider.", ["provider"]
)
PROVIDER_DATA_AGE = Gauge(
    "magic8_provider_data_age_seconds",
    "Age of the newest bar a provider delivered (the oldest over live workers).",
    ["provider"],
    multiprocess_mode="livemax",
)
CIRCUIT_STATE = Gauge(
    "magic8_provider_circuit_state",
    "Circuit breaker of each provider: 0 closed, 1 half-open, 2 open (the worst worker).",
    ["provider"],
    multiprocess_mode="livemax",
)
BATCH_SIZE = Histogram(
    "magic8_batch_size",
    "Orders per prediction request (/predict counts as 1).",
    buckets=BATCH_BUCKETS,
)
IN_FLIGHT = Gauge(
    "magic8_in_flight_requests",
    "Requests being served (summed over live workers; sampled).",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "magic8_requests_shed",
    "Requests refused with 503 to protect latency: reason queue, concurrency or deadline.",
    ["reason"],
)
MODEL_INFO = Gauge(
    "magic8_model_info",
    "1 for every model being served (0 once reloaded away).",
    ["name", "version", "kind", "sha256"],
    multiprocess_mode="livemax",
)
PREDICTION_LOG_DROPPED = Counter(
    "magic8_prediction_log_dropped",
    "Prediction log entries dropped because the writer queue was full.",
)
PREDICTION_LOG_WRITTEN = Counter("magic8_prediction_log_written", "Prediction log lines written.")


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process, or None in single-process mode."""
    # prometheus-client reads this variable itself; the server only follows its choice.
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> bytes:
    """The Prometheus text of every worker (multiprocess) or of this process."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class Recorder:
    """One worker's metrics: cheap buffers on the request path, flushed by :meth:`sample`.

    Args:
        known_symbols: Symbols used as label values; any other symbol is counted as
            ``other``, so a client cannot create unbounded label sets.
        known_strategies: Canonical strategy names, likewise.
    """

    def __init__(self, known_symbols: Iterable[str], known_strategies: Iterable[str]) -> None:
        self.known_symbols = frozenset(known_symbols)
        self.known_strategies = frozenset(known_strategies)
        self._durations: list[tuple[Histogram, float]] = []
        self._predictions: Tally[tuple[str, str, str]] = Tally()
        self._shed: Tally[str] = Tally()
        self._request_children: dict[tuple[str, str, int], Histogram] = {}
        self._stage_children = {
            stage: STAGE_DURATION.labels(stage) for stage in ("decode", *PIPELINE_STAGES, "encode")
        }
        self._cache_seen: dict[str, tuple[int, int]] = {}
        self._errors_seen: dict[str, int] = {}
        self._models_seen: set[tuple[str, str, str, str]] = set()

    # -- request path: appends only ----------------------------------------------------------

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Buffer one request's duration."""
        key = (endpoint, method, status)
        child = self._request_children.get(key)
        if child is None:
            # APPSEC: endpoint is a route template or "unmatched" and method is checked by
            # the caller, so the label sets stay few whatever clients send.
            child = REQUEST_DURATION.labels(endpoint, method, str(status))
            self._request_children[key] = child
        self._durations.append((child, seconds))

    def shed(self, reason: str) -> None:
        """Count one request refused to protect latency."""
        self._shed[reason] += 1

    def batch(
        self, decode_s: float, stages: StageTimes, encode_s: float, predictions: list[Prediction]
    ) -> None:
        """Buffer one scored request (a batch, or ``/predict``): stage durations, size, results."""
        children = self._stage_children
        durations = self._durations
        durations.append((children["decode"], decode_s))
        durations.append((children["market_data"], stages.market_data))
        durations.append((children["features"], stages.features))
        durations.append((children["inference"], stages.inference))
        durations.append((children["encode"], encode_s))
        durations.append((BATCH_SIZE, float(len(predictions))))
        symbols, strategies, counts = self.known_symbols, self.known_strategies, self._predictions
        # PERF: one dict increment per order; the labelled counters (a locked write to a
        # memory-mapped file each under gunicorn) are touched once per key per flush.
        for answer in predictions:
            counts[
                (
                    answer.symbol if answer.symbol in symbols else "other",
                    answer.strategy if answer.strategy in strategies else "other",
                    answer.prediction,
                )
            ] += 1

    # -- once per interval ------------------------------------------------------------------

    def flush(self, limit: int | None = None) -> bool:
        """Move the buffered observations and counts into the Prometheus values.

        Args:
            limit: Most durations to move in this call; ``None`` moves them all. Each is a
                locked write to a memory-mapped file under gunicorn (~5 µs): a second of
                overload buffers thousands, too many to move without holding up requests.

        Returns:
            Whether everything buffered was moved.
        """
        durations = self._durations
        if limit is None or len(durations) <= limit:
            self._durations, moving = [], durations
        else:
            moving = durations[:limit]
            del durations[:limit]
        for metric, value in moving:
            metric.observe(value)
        if self._durations:
            return False
        predictions, self._predictions = self._predictions, Tally()
        for (symbol, strategy, result), count in predictions.items():
            PREDICTIONS.labels(symbol, strategy, result).inc(count)
        shed, self._shed = self._shed, Tally()
        for reason, count in shed.items():
            SHED.labels(reason).inc(count)
        return True

    def sample(self, service: Service | None, in_flight: int) -> None:
        """Flush the buffers and read the caches, providers and models of ``service``."""
        self.flush()
        IN_FLIGHT.set(in_flight)
        if service is None:
            return
        predictor = service.predictor
        for cache in (predictor.market.cache, predictor.features.cache, predictor.prediction_cache):
            hits, misses = self._cache_seen.get(cache.name, (0, 0))
            CACHE_HITS.labels(cache.name).inc(_growth(cache.hits, hits))
            CACHE_MISSES.labels(cache.name).inc(_growth(cache.misses, misses))
            self._cache_seen[cache.name] = (cache.hits, cache.misses)
        now = datetime.now(UTC)
        for slot in predictor.market.slots:
            name = slot.provider.name
            PROVIDER_ERRORS.labels(name).inc(_growth(slot.errors, self._errors_seen.get(name, 0)))
            self._errors_seen[name] = slot.errors
            if slot.last_as_of is not None:
                PROVIDER_DATA_AGE.labels(name).set((now - slot.last_as_of).total_seconds())
            CIRCUIT_STATE.labels(name).set(CIRCUIT_VALUES.get(slot.breaker.state, 2.0))
        self._sample_models(service)

    def _sample_models(self, service: Service) -> None:
        serving = {
            (
                model.manifest.name,
                model.manifest.version,
                model.manifest.kind,
                model.manifest.onnx_sha256[:12],
            )
            for model in service.predictor.models.models
        }
        for labels in self._models_seen - serving:
            MODEL_INFO.labels(*labels).set(0)
        for labels in serving - self._models_seen:
            MODEL_INFO.labels(*labels).set(1)
        self._models_seen = serving


def _growth(count: int, seen: int) -> int:
    """How much a monotonic count grew since ``seen``; a count that restarted (a cache
    replaced by a reload) grew by all of itself."""
    return count - seen if count >= seen else count
