"""The Falcon ASGI app: thin resources that parse, call the pipeline, and shape the answer."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import msgspec

from kernels.registry import STRATEGIES

from .config import Settings, load_settings
from .errors import (
    Forbidden,
    InvalidOrder,
    MalformedRequest,
    ModelLoadError,
    NotFound,
    PayloadTooLarge,
    PredictorError,
    Unauthorized,
    Unavailable,
)
from .logs import REQUEST_ID, configure_logging
from .metrics import CONTENT_TYPE, Recorder, exposition
from .middleware import DrainState, GatedApp, Limits
from .openapi import openapi_json
from .predictions_log import LoggedBatch, PredictionLog
from .schema import (
    BATCH_DECODER,
    ENCODER,
    ORDER_DECODER,
    RISK_REWARD_DECODER,
    MalformedJSON,
    Order,
    Prediction,
    SchemaError,
    decode,
)
from .service import Service, build_service

log = logging.getLogger(__name__)
JSON = falcon.MEDIA_JSON
#: Buffered metric observations moved per turn of the event loop (~5 µs each).
FLUSH_SLICE = 100


class ServiceHolder:
    """Where resources find the service once start-up has built it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: Service | None = None
        self.gate: GatedApp | None = None
        self.drain = DrainState()
        self.recorder = Recorder(settings.prediction.features.universe, STRATEGIES)
        prediction_log = settings.observability.prediction_log
        self.prediction_log = (
            PredictionLog(prediction_log.path, prediction_log.queue_size)
            if prediction_log.path is not None
            else None
        )

    def sample_metrics(self) -> None:
        """Flush this worker's metric buffers and sample caches, providers and models."""
        self.recorder.sample(self.service, self.gate.in_flight if self.gate else 0)

    def get(self) -> Service:
        """The running service, or 503 while it is still starting."""
        if self.service is None or not self.service.ready:
            raise Unavailable("the server is starting; models are not loaded yet", retry_after=1)
        return self.service


class Lifespan:
    """ASGI lifespan: build and warm everything before the first request, flip readiness."""

    def __init__(self, holder: ServiceHolder) -> None:
        self.holder = holder
        self._sampler: asyncio.Task[None] | None = None

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Load models, compile kernels and warm the pipeline; a failure aborts start-up."""
        service = await asyncio.to_thread(build_service, self.holder.settings)
        await service.start()
        # PERF: what start-up built (models, compiled kernels, polars, the simulator) lives as
        # long as the worker. Freezing it keeps the collector from walking ~170k objects on
        # every full collection: ~100 ms that would otherwise land on some request's latency.
        gc.collect()
        gc.freeze()
        self.holder.service = service
        if self.holder.prediction_log is not None:
            self.holder.prediction_log.start()
        self._sampler = asyncio.create_task(self._sample_metrics(), name="metrics-sampler")

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        """Turn not-ready, flush metrics and the prediction log, then release providers."""
        self.holder.drain.stopping = True
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.holder.sample_metrics()
        if self.holder.prediction_log is not None:
            await asyncio.to_thread(self.holder.prediction_log.stop)
        if self.holder.service is not None:
            await self.holder.service.stop()

    async def _sample_metrics(self) -> None:
        interval = self.holder.settings.observability.metrics_interval_s
        recorder = self.holder.recorder
        while True:
            await asyncio.sleep(interval)
            try:
                # PERF: in slices with a turn of the loop between them, so moving a second of
                # buffered observations never stalls a request by more than ~0.5 ms.
                while not recorder.flush(FLUSH_SLICE):
                    await asyncio.sleep(0)
                self.holder.sample_metrics()
            except Exception:
                # Metrics must never take the worker down; say so and keep sampling.
                log.exception("metrics sampling failed")


async def read_body(req: falcon.asgi.Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes without buffering the excess."""
    # APPSEC: a declared length over the limit is refused before reading anything, and an
    # undeclared (chunked) or understated body is cut off at limit + 1 bytes.
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes", limit=limit)
    body = await req.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes", limit=limit)
    return body


def parse(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Decode a body into its schema type, mapping failures to 400 / 422."""
    if not body:
        raise MalformedRequest("empty request body; send a JSON object")
    try:
        return decode(decoder, body)
    except MalformedJSON as ex:
        raise MalformedRequest(str(ex)) from None
    except SchemaError as ex:
        raise InvalidOrder(ex.message, field=ex.field) from None
    except RecursionError:
        # APPSEC: msgspec recurses into nested arrays even where it skips an unknown field;
        # a body of deeply nested brackets is refused rather than answered with a 500.
        raise MalformedRequest("JSON nested too deeply") from None


def send(resp: falcon.asgi.Response, payload: Any, status: int = 200) -> None:
    """Encode ``payload`` as the JSON response body."""
    resp.status = status
    resp.content_type = JSON
    resp.data = ENCODER.encode(payload)


class Resource:
    """Base of the resources: access to the service and the body limit."""

    def __init__(self, holder: ServiceHolder) -> None:
        self.holder = holder
        self.body_limit = holder.settings.performance.max_body_bytes

    def record(
        self,
        service: Service,
        decode_s: float,
        encode_s: float,
        orders: Sequence[Order],
        predictions: list[Prediction],
        started: float,
    ) -> None:
        """Hand one scored request to the metrics and the prediction log (both buffered)."""
        self.holder.recorder.batch(decode_s, service.predictor.last_stages, encode_s, predictions)
        if self.holder.prediction_log is not None:
            self.holder.prediction_log.submit(
                LoggedBatch(
                    orders, predictions, (time.perf_counter() - started) * 1e3, REQUEST_ID.get()
                )
            )


class PredictResource(Resource):
    """``POST /predict``: one order, one prediction."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Score one order."""
        service = self.holder.get()
        body = await read_body(req, self.body_limit)
        started = time.perf_counter()
        order = parse(ORDER_DECODER, body)
        decode_s = time.perf_counter() - started
        answer = await service.predictor.predict_one(order)
        mark = time.perf_counter()
        send(resp, answer)
        self.record(service, decode_s, time.perf_counter() - mark, [order], [answer], started)


class BatchResource(Resource):
    """``POST /predict/batch``: many orders, answered by position."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Score a batch; per-order failures are items, not request failures."""
        service = self.holder.get()
        body = await read_body(req, self.body_limit)
        started = time.perf_counter()
        request = parse(BATCH_DECODER, body)
        decode_s = time.perf_counter() - started
        answer = await service.predictor.predict_batch(request.requests, request.share_market_data)
        mark = time.perf_counter()
        send(resp, answer)
        encode_s = time.perf_counter() - mark
        self.record(service, decode_s, encode_s, request.requests, answer.predictions, started)


class RiskRewardResource(Resource):
    """``POST /calculate_risk_reward``."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Compute risk, reward, ratio and breakevens of a structure."""
        service = self.holder.get()
        request = parse(RISK_REWARD_DECODER, await read_body(req, self.body_limit))
        send(resp, service.predictor.risk_reward(request))


class MarketResource(Resource):
    """``GET /market/{symbol}``: the latest market view of one symbol."""

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, symbol: str
    ) -> None:
        """Latest price and volatility with their provenance."""
        service = self.holder.get()
        symbol = symbol.upper()
        predictor = service.predictor
        resolved = await predictor.market.resolve(symbol, datetime.now(UTC))
        if resolved is None:
            raise NotFound(f"no market data for {symbol}", symbol=symbol)
        closes = resolved.snapshot.bars["close"].to_numpy()
        returns = closes[-21:][1:] / closes[-21:][:-1] - 1.0
        volatility = float(returns.std(ddof=1)) if returns.size >= 2 else None
        send(
            resp,
            {
                "symbol": symbol,
                "price": resolved.snapshot.last_close,
                "volatility": volatility,
                "source": resolved.snapshot.source,
                "data_as_of": resolved.snapshot.as_of,
                "stale": resolved.stale,
            },
        )


class HealthResource(Resource):
    """``GET /health``: the human summary."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Models, providers, caches and uptime."""
        service = self.holder.service
        if service is None:
            send(resp, {"status": "starting"}, 503)
            return
        send(resp, service.health(), 200 if service.ready else 503)


class LiveResource(Resource):
    """``GET /v2/health/live``: the process can answer; never depends on providers."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Always 200 while the event loop runs."""
        send(resp, {"live": True})


class ReadyResource(Resource):
    """``GET /v2/health/ready``: models loaded and warmed, kernels compiled, not stopping."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """200 when ready, else 503."""
        service = self.holder.service
        # A worker told to stop says so first, while it still finishes what it accepted.
        ready = service is not None and service.ready and not self.holder.drain.stopping
        send(resp, {"ready": ready}, 200 if ready else 503)


class MetricsResource(Resource):
    """``GET /metrics``: Prometheus text, summed over every worker under gunicorn."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Flush this worker's buffers, then read every worker's values."""
        self.holder.sample_metrics()
        resp.content_type = CONTENT_TYPE
        # Reading each worker's files is blocking I/O: keep it off the event loop.
        resp.data = await asyncio.to_thread(exposition)


class OpenAPIResource(Resource):
    """``GET /openapi.json``: the OpenAPI 3.1 document of every route."""

    def __init__(self, holder: ServiceHolder) -> None:
        super().__init__(holder)
        self.document = openapi_json(holder.settings)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The document (built with the app)."""
        resp.content_type = JSON
        resp.data = self.document


class ModelsResource(Resource):
    """``GET /models``: every loaded model with routing, features and parity."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the serving set."""
        models = self.holder.get().predictor.models
        send(
            resp,
            {
                "repository": str(models.repository),
                "loaded_at": models.loaded_at,
                "models": [model.describe() for model in models.models],
            },
        )


class ReloadResource(Resource):
    """``POST /admin/reload``: swap in the repository's newest models atomically."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Reload; a bad candidate leaves the serving set unchanged and says why."""
        admin = self.holder.settings.admin
        if not admin.enabled:
            raise Forbidden("admin endpoints are disabled (admin.enabled: false)")
        if admin.token is not None:
            given = (req.get_header("Authorization") or "").encode()
            # APPSEC: constant-time comparison, so the token cannot be guessed byte by byte.
            if not hmac.compare_digest(given, f"Bearer {admin.token}".encode()):
                raise Unauthorized("a valid bearer token is required")
        service = self.holder.get()
        # A reload that has begun runs to its end even if this request is cancelled (its
        # deadline): the swap stays atomic and the outcome is logged either way.
        reload = asyncio.ensure_future(service.reload())
        reload.add_done_callback(_outcome_logged)
        try:
            model_set = await asyncio.shield(reload)
        except ModelLoadError as ex:
            # Service.reload has logged it; the previous set is still the one serving.
            send(
                resp,
                {
                    "error": f"reload refused, still serving the previous models: {ex}",
                    "serving": [model.label for model in service.predictor.models.models],
                },
                409,
            )
            return
        send(resp, {"reloaded": True, "models": [model.label for model in model_set.models]})


def _outcome_logged(task: asyncio.Future[Any]) -> None:
    """Mark a reload's failure as seen: `Service.reload` has logged it already."""
    if not task.cancelled():
        task.exception()


async def handle_domain_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: PredictorError, params: Any
) -> None:
    """Render a domain error as ``{"error": ...}`` with its status."""
    if isinstance(ex, Unavailable):
        resp.set_header("Retry-After", str(ex.retry_after))
    send(resp, ex.to_body(), ex.status)


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any
) -> None:
    """Log an unknown exception and answer a generic 500 that leaks nothing."""
    if isinstance(ex, falcon.HTTPError):
        send(resp, {"error": _http_error_text(ex)}, ex.status_code)
        return
    log.exception("unhandled error", extra={"path": req.path})
    send(resp, {"error": "internal error"}, 500)


def _http_error_text(ex: falcon.HTTPError) -> str:
    return f"{ex.title}: {ex.description}" if ex.description else str(ex.title)


def serialize_http_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError
) -> None:
    """Falcon's own errors (404 route, 405 method) use the same ``{"error": ...}`` body."""
    resp.content_type = JSON
    resp.data = ENCODER.encode({"error": _http_error_text(ex)})


def create_app(
    settings: Settings | None = None, config_path: str | Path | None = None
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    """Build the ASGI app (uvicorn/gunicorn factory); models load at lifespan start-up."""
    settings = settings or load_settings(config_path)
    configure_logging(settings.system.log_level)
    holder = ServiceHolder(settings)
    performance = settings.performance
    limits = Limits(
        max_in_flight=performance.max_in_flight,
        max_queue_s=performance.max_queue_ms / 1e3,
        deadline_s=performance.batch_predictions.timeout_ms / 1e3,
        retry_after_s=performance.retry_after_s,
        slow_s=settings.observability.slow_request_ms / 1e3,
    )
    app = GatedApp(
        limits=limits,
        recorder=holder.recorder,
        drain=holder.drain,
        middleware=[Lifespan(holder)],
        cors_enable=False,
    )
    holder.gate = app
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/predict", PredictResource(holder))
    app.add_route("/predict/batch", BatchResource(holder))
    app.add_route("/calculate_risk_reward", RiskRewardResource(holder))
    app.add_route("/market/{symbol}", MarketResource(holder))
    app.add_route("/health", HealthResource(holder))
    app.add_route("/v2/health/live", LiveResource(holder))
    app.add_route("/v2/health/ready", ReadyResource(holder))
    app.add_route("/models", ModelsResource(holder))
    app.add_route("/admin/reload", ReloadResource(holder))
    app.add_route("/metrics", MetricsResource(holder))
    app.add_route("/openapi.json", OpenAPIResource(holder))
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(PredictorError, handle_domain_error)
    app.set_error_serializer(serialize_http_error)
    return app
