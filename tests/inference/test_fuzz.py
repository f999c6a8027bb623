"""Fuzzing: schemathesis against a real server, and hostile orders against the app in process.

Neither may ever produce a 5xx: every answer is a success or a documented client error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures import batch_of_32, demo_settings, order, running_app
from tests.inference.servers import Server, serving

CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    # A token makes /admin/reload answer 401 instead of reloading thousands of times.
    with serving(env={"MAGIC8_PREDICTOR_ADMIN_TOKEN": "fuzz-secret"}) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.base}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.server
@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


# -- hostile orders in process ---------------------------------------------------------------

HUGE = [
    "1e309",
    "-1e309",
    "1" + "0" * 400,
    "9" * 5000,
    "1e-400",
    "-0",
    "123456789012345678901234567890",
]
NON_FINITE = ["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"]
FIELDS = [
    "strategy",
    "symbol",
    "premium",
    "predicted_price",
    "strikes",
    "action",
    "quantity",
    "timestamp",
    "risk",
    "price",
    "short_term",
    "bid1",
]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
).map(lambda value: json.dumps(value, ensure_ascii=False))

hostile_fragment = st.one_of(
    st.sampled_from(HUGE),
    st.sampled_from(NON_FINITE),
    st.integers(min_value=1, max_value=200_000).map(_nested),
    st.integers(min_value=1, max_value=200_000).map(lambda n: json.dumps("A" * n)),
    st.text(min_size=1, max_size=300).map(lambda text: json.dumps(text, ensure_ascii=False)),
    st.text(min_size=1, max_size=50).map(lambda text: '"' + text + '"'),  # unescaped: maybe invalid
    json_values,
)


@st.composite
def hostile_order(draw: st.DrawFn) -> bytes:
    base = order(
        draw(st.sampled_from(["SPX", "QQQ", "TSLA"])),
        draw(st.sampled_from(["Butterfly", "Vertical"])),
    )
    field = draw(st.sampled_from(FIELDS))
    fragment = draw(hostile_fragment)
    members = [
        f"{json.dumps(key)}:{json.dumps(value)}" for key, value in base.items() if key != field
    ]
    members.append(f"{json.dumps(field)}:{fragment}")
    if draw(st.booleans()):
        # Duplicate keys: the last one wins in strict decoders; either way, no 5xx.
        members.append(f"{json.dumps(field)}:{json.dumps(base.get(field, 1))}")
    return ("{" + ",".join(draw(st.permutations(members))) + "}").encode()


@st.composite
def hostile_body(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["batch", "single", "risk", "bytes"]))
    if kind == "bytes":
        return draw(st.sampled_from(["/predict", "/predict/batch"])), draw(st.binary(max_size=2000))
    item = draw(hostile_order())
    if kind == "single":
        return "/predict", item
    if kind == "risk":
        return "/calculate_risk_reward", item
    good = [json.dumps(o).encode() for o in batch_of_32()[: draw(st.integers(0, 5))]]
    good.insert(draw(st.integers(0, len(good))), item)
    return "/predict/batch", b'{"requests":[' + b",".join(good) + b"]}"


@pytest.fixture(scope="module")
def app_client() -> Iterator[tuple[asyncio.AbstractEventLoop, falcon.testing.ASGIConductor]]:
    loop = asyncio.new_event_loop()
    context = running_app(demo_settings())
    client = loop.run_until_complete(context.__aenter__())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))
        loop.close()


@given(request=hostile_body())
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
def test_hostile_orders_never_get_a_server_error(
    app_client: tuple[asyncio.AbstractEventLoop, falcon.testing.ASGIConductor],
    request: tuple[str, bytes],
) -> None:
    loop, client = app_client
    path, body = request
    result = loop.run_until_complete(
        client.simulate_post(path, body=body, headers={"Content-Type": "application/json"})
    )
    assert result.status_code < 500, (result.status_code, result.text[:300])
    answer = json.loads(result.text)
    if result.status_code >= 400:
        assert isinstance(answer["error"], str)
        assert result.status_code in {400, 413, 422}
    elif path == "/predict/batch":
        assert len(answer["predictions"]) == body.count(b'"strategy"') or answer["predictions"]
