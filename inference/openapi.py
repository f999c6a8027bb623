"""The OpenAPI 3.1 document of the HTTP API, with component schemas generated from the structs.

Request and prediction schemas come from the msgspec structs the server decodes and encodes
with (``inference.schema``), so they cannot drift from the code; the other response bodies are
described by the structs below. ``tests/inference/test_openapi.py`` fails when a route or a
response field exists in the app but not here.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .schema import BatchMetrics, BatchRequest, BatchResponse, Order, Prediction, RiskRewardRequest

if TYPE_CHECKING:
    from .config import Settings

_REF: Final = "#/components/schemas/{name}"


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Every error: a human-readable ``error`` and the details needed to fix the request."""

    error: str
    field: str | None = None
    """Path of the offending field, e.g. ``requests[3].premium``."""
    limit: int | None = None
    """The body size limit that was exceeded (413)."""
    max_batch_size: int | None = None
    """Orders a batch may hold (413): split the batch at this size."""
    received: int | None = None
    """Orders the refused batch held (413)."""
    retry_after: int | None = None
    """Seconds to wait before retrying (503; also the ``Retry-After`` header)."""
    symbol: str | None = None
    """The symbol that has no market data (404)."""
    serving: list[str] | None = None
    """Models still serving after a refused reload (409)."""


class RiskRewardResponse(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answer of ``POST /calculate_risk_reward``."""

    symbol: str
    strategy: str
    risk: float | None
    reward: float | None
    risk_reward_ratio: float | None
    breakevens: list[float]


class MarketView(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answer of ``GET /market/{symbol}``."""

    symbol: str
    price: float
    volatility: float | None
    source: str
    data_as_of: datetime
    stale: bool


class Liveness(msgspec.Struct, forbid_unknown_fields=True):
    """Answer of ``GET /v2/health/live``."""

    live: bool


class Readiness(msgspec.Struct, forbid_unknown_fields=True):
    """Answer of ``GET /v2/health/ready``: 200 with true, or 503 with false."""

    ready: bool


class Health(msgspec.Struct, kw_only=True):
    """Answer of ``GET /health``: a human summary whose details may grow."""

    status: str
    """``ready``, ``starting`` or ``draining``."""


class ModelListing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answer of ``GET /models``."""

    repository: str
    loaded_at: datetime
    models: list[dict[str, Any]]
    """Per model: name, version, kind, routing, features, thresholds, source, hashes, parity."""


class ReloadResult(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Answer of a successful ``POST /admin/reload``."""

    reloaded: bool
    models: list[str]


#: Every struct of the document; ``test_openapi`` checks each one's fields are described.
COMPONENTS: Final = (
    Order,
    BatchRequest,
    RiskRewardRequest,
    Prediction,
    BatchMetrics,
    BatchResponse,
    ErrorBody,
    RiskRewardResponse,
    MarketView,
    Liveness,
    Readiness,
    Health,
    ModelListing,
    ReloadResult,
)

_ERRORS: Final = {
    "400": "Malformed JSON or an empty body.",
    "401": "A valid bearer token is required.",
    "403": "The endpoint is disabled by configuration.",
    "404": "No such symbol or route.",
    "409": "The candidate models were refused; the previous set still serves.",
    "413": "The body exceeds performance.max_body_bytes, or the batch max_batch_size.",
    "422": "The body does not match the schema, or the order cannot be scored as given.",
    "503": "Not ready, overloaded, or past the request deadline: retry after Retry-After.",
}


def _ref(struct: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _json(struct: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}}


def _operation(
    summary: str,
    ok: type,
    errors: tuple[str, ...],
    body: type | None = None,
    ok_status: str = "200",
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok_status: _json(ok, "Success.")}
    for status in errors:
        response = _json(ErrorBody, _ERRORS[status])
        if status == "503":
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string"},
                }
            }
        responses[status] = response
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return operation


def openapi_document(settings: Settings) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of every route the app serves."""
    _, components = msgspec.json.schema_components(COMPONENTS, ref_template=_REF)
    max_batch = settings.performance.batch_predictions.max_batch_size
    scoring = ("400", "413", "422", "503")
    ready = _operation("Readiness: models loaded and warmed, not stopping.", Readiness, ("503",))
    ready["responses"]["503"] = _json(Readiness, "Not ready (starting or stopping).")
    health = _operation("Models, providers, caches and uptime.", Health, ())
    health["responses"]["503"] = _json(Health, "Starting or stopping.")
    market = _operation("Latest price and volatility of one symbol.", MarketView, ("404", "503"))
    market["parameters"] = [
        {"name": "symbol", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    metrics = {
        "summary": "Prometheus metrics (text format), summed over every worker.",
        "responses": {
            "200": {
                "description": "Prometheus text exposition format 0.0.4.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }
    document_op = {
        "summary": "This document.",
        "responses": {
            "200": {
                "description": "OpenAPI 3.1.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "magic8-accuracy-predictor",
            "version": "1",
            "description": "Win probabilities for Magic8 0DTE option orders.",
        },
        "paths": {
            "/predict": {"post": _operation("Score one order.", Prediction, scoring, body=Order)},
            "/predict/batch": {
                "post": _operation(
                    f"Score up to {max_batch} orders, answered by position (more: 413, split).",
                    BatchResponse,
                    scoring,
                    body=BatchRequest,
                )
            },
            "/calculate_risk_reward": {
                "post": _operation(
                    "Risk, reward, ratio and breakevens of a structure.",
                    RiskRewardResponse,
                    scoring,
                    body=RiskRewardRequest,
                )
            },
            "/market/{symbol}": {"get": market},
            "/health": {"get": health},
            "/v2/health/live": {"get": _operation("Liveness: the process answers.", Liveness, ())},
            "/v2/health/ready": {"get": ready},
            "/models": {"get": _operation("Every loaded model.", ModelListing, ("503",))},
            "/admin/reload": {
                "post": _operation(
                    "Reload the model repository with an atomic swap.",
                    ReloadResult,
                    ("401", "403", "409", "503"),
                )
            },
            "/metrics": {"get": metrics},
            "/openapi.json": {"get": document_op},
        },
        "components": {"schemas": components},
    }


def openapi_json(settings: Settings) -> bytes:
    """The document as JSON bytes."""
    return msgspec.json.encode(openapi_document(settings))
