"""Wire types of the HTTP API (msgspec structs) and the strict decoding that names bad fields."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec

# APPSEC: every string and list a client sends is bounded, so a hostile body cannot make the
# decoder allocate much more than the body itself.
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
ShortText = Annotated[str, msgspec.Meta(max_length=32)]
Strikes = Annotated[list[float], msgspec.Meta(max_length=8)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Quantity = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31)]

#: Optional numeric order fields in the column order the pipeline reads them (keep in sync with
#: ``Order``: they are its last fields, so ``astuple(order)[OPTIONAL_START:]`` yields them).
OPTIONAL_NUMBERS: Final = (
    "risk",
    "reward",
    "price",
    "short_term",
    "long_term",
    "expected_move",
    "low",
    "high",
    "target1",
    "target2",
    "bid1",
    "bid2",
    "bid3",
    "bid4",
    "ask1",
    "ask2",
    "ask3",
    "ask4",
)


class Order(msgspec.Struct, kw_only=True):
    """One Magic8 order to score (SPEC §3.1). Unknown fields are ignored."""

    strategy: ShortText
    symbol: Symbol
    premium: float
    predicted_price: float
    strikes: Strikes | None = None
    action: ShortText | None = None
    option_type: ShortText | None = None
    quantity: Quantity = 1
    timestamp: Timestamp | None = None
    risk: float | None = None
    reward: float | None = None
    price: float | None = None
    short_term: float | None = None
    long_term: float | None = None
    expected_move: float | None = None
    low: float | None = None
    high: float | None = None
    target1: float | None = None
    target2: float | None = None
    bid1: float | None = None
    bid2: float | None = None
    bid3: float | None = None
    bid4: float | None = None
    ask1: float | None = None
    ask2: float | None = None
    ask3: float | None = None
    ask4: float | None = None


OPTIONAL_START: Final = len(Order.__struct_fields__) - len(OPTIONAL_NUMBERS)
assert Order.__struct_fields__[OPTIONAL_START:] == OPTIONAL_NUMBERS


class BatchRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /predict/batch``."""

    # APPSEC: the list is bounded far above max_batch_size so an absurd batch fails in the
    # decoder; the configured limit is checked afterwards to give the 413 the spec asks for.
    requests: Annotated[list[Order], msgspec.Meta(max_length=100_000)]
    share_market_data: bool = True


class RiskRewardRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /calculate_risk_reward``."""

    symbol: Symbol
    strategy: ShortText
    strikes: Strikes
    premium: float
    action: ShortText | None = None
    quantity: Quantity = 1
    option_type: ShortText | None = None


class Prediction(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One answer (SPEC §3.2): legacy fields, the fields the bot reads, then diagnostics."""

    timestamp: datetime
    symbol: str
    strategy: str
    win_probability: float | None
    prediction: Literal["WIN", "LOSS", "UNKNOWN"]
    data_source: str | None
    n_features: int
    threshold: float | None
    model_type: str | None
    model_version: str | None
    loss_probability: float | None
    confidence: float | None
    risk: float | None
    reward: float | None
    risk_reward_ratio: float | None
    data_as_of: datetime | None
    stale: bool
    missing_features: int
    cached: bool
    error: str | None = None


class BatchMetrics(msgspec.Struct, kw_only=True):
    """Cache counts and time of one batch."""

    feature_hits: int = 0
    feature_misses: int = 0
    prediction_hits: int = 0
    prediction_misses: int = 0
    market_data_hits: int = 0
    market_data_misses: int = 0
    elapsed_ms: float = 0.0


class BatchResponse(msgspec.Struct, kw_only=True):
    """Body answered by ``POST /predict/batch``."""

    predictions: list[Prediction]
    batch_metrics: BatchMetrics


class SchemaError(Exception):
    """The body is valid JSON but does not match the schema (HTTP 422).

    Attributes:
        field: Path of the offending field, e.g. ``requests[3].premium``.
    """

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class MalformedJSON(Exception):
    """The body is not JSON (HTTP 400)."""


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NON_FINITE = (b"NaN", b"Infinity", b"-Infinity")
_BYTE = re.compile(r"\(byte (?P<at>\d+)\)")


def _field_path(raw_path: str) -> str:
    return raw_path[1:] if raw_path.startswith(".") else raw_path


def _nicer(message: str, field: str | None) -> str:
    if message.startswith("Number out of range"):
        return f"{field}: must be a finite number" if field else "numbers must be finite"
    return f"{field}: {message}" if field else message


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Decode ``body`` strictly, translating msgspec errors into API errors.

    Raises:
        MalformedJSON: not JSON at all.
        SchemaError: JSON that does not match the schema (including ``NaN``/``Infinity``
            literals and out-of-range numbers, reported at their field).
    """
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as ex:
        message = str(ex)
        match = _PATH.search(message)
        field = _field_path(match["path"]) if match else None
        detail = message[: match.start()] if match else message
        if detail.startswith("Object missing required field"):
            name = detail.split("`")[1]
            field = f"{field}.{name}" if field else name
            raise SchemaError(f"{field}: required field is missing", field) from None
        raise SchemaError(_nicer(detail, field), field) from None
    except msgspec.DecodeError as ex:
        located = _locate_non_finite(body, str(ex))
        if located is not None:
            raise SchemaError(f"{located}: must be a finite number", located) from None
        raise MalformedJSON(f"malformed JSON: {ex}") from None


def _locate_non_finite(body: bytes, message: str) -> str | None:
    """Find the field holding a ``NaN``/``Infinity`` literal, which strict JSON forbids.

    Python's ``json.dumps`` writes those literals by default, so a client that sends one
    deserves the name of the field rather than "malformed JSON". Runs on the error path only.
    """
    match = _BYTE.search(message)
    if match is None:
        return None
    at = int(match["at"])
    if not any(body.startswith(token, at) for token in _NON_FINITE):
        return None
    marker = object()
    try:
        document = json.loads(body, parse_constant=lambda _: marker)
    except (ValueError, RecursionError):
        return None
    return _path_of(document, marker, "")


def _path_of(node: Any, marker: object, path: str) -> str | None:
    if node is marker:
        return path or "<body>"
    if isinstance(node, dict):
        for key, value in node.items():
            found = _path_of(value, marker, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found = _path_of(value, marker, f"{path}[{index}]")
            if found:
                return found
    return None


ORDER_DECODER: Final = msgspec.json.Decoder(Order)
BATCH_DECODER: Final = msgspec.json.Decoder(BatchRequest)
RISK_REWARD_DECODER: Final = msgspec.json.Decoder(RiskRewardRequest)
ENCODER: Final = msgspec.json.Encoder()
