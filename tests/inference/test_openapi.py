"""The OpenAPI document matches the app: every route, every struct field, every response field."""

from __future__ import annotations

import copy
from typing import Any

import falcon.inspect
import jsonschema
import msgspec
import pytest

from inference import schema
from inference.app import create_app
from inference.openapi import COMPONENTS, openapi_document
from tests.fixtures import SEED_CURL_BODY, demo_settings, order, running_app


def _document() -> dict[str, Any]:
    return openapi_document(demo_settings())


def test_every_route_and_method_of_the_app_is_documented() -> None:
    app = create_app(demo_settings())
    document = _document()
    routed = {
        (route.path, method.method.lower())
        for route in falcon.inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert routed == documented


def test_every_struct_of_the_api_is_a_component_with_all_its_fields() -> None:
    components = _document()["components"]["schemas"]
    structs = {
        value
        for value in vars(schema).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == schema.__name__
    }
    assert structs <= set(COMPONENTS), "a struct of inference.schema is missing from the document"
    for struct in COMPONENTS:
        properties = components[struct.__name__]["properties"]
        assert set(properties) == set(struct.__struct_encode_fields__), struct.__name__


def _strict(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every described object closed: an undocumented field fails."""
    closed = copy.deepcopy(document)
    for name, component in closed["components"]["schemas"].items():
        if component.get("type") == "object" and name not in {"Health", "ModelListing"}:
            component["additionalProperties"] = False
    return closed


def _validate(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    response = document["paths"][path][method]["responses"][str(status)]
    body_schema = response["content"]["application/json"]["schema"]
    resolver_root = {"components": document["components"], **body_schema}
    jsonschema.validate(body, resolver_root)


@pytest.mark.parametrize(
    ("method", "path", "route", "payload"),
    [
        ("post", "/predict/batch", "/predict/batch", SEED_CURL_BODY),
        (
            "post",
            "/predict/batch",
            "/predict/batch",
            {"requests": [order("SPX", "Vertical", premium=0)]},
        ),
        ("post", "/predict", "/predict", order("SPX", "Butterfly")),
        ("post", "/predict", "/predict", {"symbol": "SPX"}),
        ("post", "/predict/batch", "/predict/batch", {"requests": "nope"}),
        (
            "post",
            "/calculate_risk_reward",
            "/calculate_risk_reward",
            {"symbol": "SPX", "strategy": "Butterfly", "strikes": [1, 2, 3], "premium": 1.5},
        ),
        ("get", "/market/SPX", "/market/{symbol}", None),
        ("get", "/market/NOPE", "/market/{symbol}", None),
        ("get", "/v2/health/live", "/v2/health/live", None),
        ("get", "/v2/health/ready", "/v2/health/ready", None),
        ("get", "/health", "/health", None),
        ("get", "/models", "/models", None),
    ],
)
async def test_real_responses_conform_to_the_closed_document(
    method: str, path: str, route: str, payload: Any
) -> None:
    document = _strict(_document())
    async with running_app() as client:
        if method == "post":
            result = await client.simulate_post(path, json=payload)
        else:
            result = await client.simulate_get(path)
    assert str(result.status_code) in document["paths"][route][method]["responses"]
    _validate(document, route, method, result.status_code, result.json)


async def test_the_served_document_is_openapi_3_1() -> None:
    async with running_app() as client:
        result = await client.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.json["openapi"] == "3.1.0"
    assert result.json == msgspec.json.decode(msgspec.json.encode(_document()))
