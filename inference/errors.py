"""One domain error hierarchy; each error carries its HTTP status and renders ``{"error": ...}``."""

from __future__ import annotations

from typing import Any


class PredictorError(Exception):
    """Base of every error the server reports to a client.

    Attributes:
        status: HTTP status code the error maps to.
        message: Human-readable description, safe to show a client.
        details: Extra JSON-serialisable fields merged into the error body.
    """

    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        """Render the JSON error body."""
        return {"error": self.message, **self.details}


class MalformedRequest(PredictorError):
    """The body is not valid JSON."""

    status = 400


class Unauthorized(PredictorError):
    """A bearer token is required and was missing or wrong."""

    status = 401


class Forbidden(PredictorError):
    """The endpoint is disabled by configuration."""

    status = 403


class NotFound(PredictorError):
    """The resource (symbol, route) does not exist."""

    status = 404


class PayloadTooLarge(PredictorError):
    """The body or the batch is larger than the configured limit."""

    status = 413


class InvalidOrder(PredictorError):
    """The request does not match the schema, or one order cannot be scored as given.

    Attributes:
        field: Path of the offending field, e.g. ``requests[3].premium``.
    """

    status = 422

    def __init__(self, message: str, field: str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, **details)
        self.field = field


class Unavailable(PredictorError):
    """The server cannot answer now (not ready, overloaded, deadline, only stale data)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class ModelLoadError(Exception):
    """A model repository entry cannot be served (hash mismatch, unknown feature, bad file)."""
