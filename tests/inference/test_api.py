"""The HTTP API of SPEC §3 against the committed demo model, in process."""

from __future__ import annotations

import pytest

from tests.fixtures import (
    PREDICTION_FIELDS,
    SEED_CURL_BODY,
    TUESDAY_MORNING,
    batch_of_32,
    demo_settings,
    order,
    running_app,
)


async def test_seed_curl_example_answers_two_predictions_with_every_field() -> None:
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json=SEED_CURL_BODY)
    assert result.status_code == 200
    predictions = result.json["predictions"]
    assert [p["strategy"] for p in predictions] == ["Butterfly", "Iron Condor"]
    for prediction in predictions:
        assert set(PREDICTION_FIELDS) <= set(prediction)
        assert "error" not in prediction
        assert 0.0 <= prediction["win_probability"] <= 1.0
        assert prediction["loss_probability"] == pytest.approx(1 - prediction["win_probability"])
        assert prediction["confidence"] == pytest.approx(
            abs(prediction["win_probability"] - 0.5) * 2
        )
        expected = "WIN" if prediction["win_probability"] >= prediction["threshold"] else "LOSS"
        assert prediction["prediction"] == expected
        assert prediction["data_source"] == "synthetic"
        assert prediction["model_type"] == "default"
        assert prediction["model_version"].startswith("demo@")
        assert prediction["n_features"] > 31
        assert prediction["timestamp"].endswith(("Z", "+00:00"))
        assert prediction["data_as_of"].endswith(("Z", "+00:00"))
        assert prediction["stale"] is False
    metrics = result.json["batch_metrics"]
    assert set(metrics) == {
        "feature_hits",
        "feature_misses",
        "prediction_hits",
        "prediction_misses",
        "market_data_hits",
        "market_data_misses",
        "elapsed_ms",
    }


async def test_batch_of_32_is_answered_in_order_with_distinct_probabilities() -> None:
    orders = batch_of_32()
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json={"requests": orders})
    predictions = result.json["predictions"]
    assert len(predictions) == 32
    assert [(p["symbol"], p["strategy"]) for p in predictions] == [
        (o["symbol"], o["strategy"]) for o in orders
    ]
    probabilities = [p["win_probability"] for p in predictions]
    assert len({round(p, 6) for p in probabilities}) >= 24
    assert max(probabilities) - min(probabilities) > 0.2
    # Risk and reward are computed from the strikes when the order does not give them.
    assert all(p["risk"] < 0 and p["reward"] > 0 for p in predictions)


async def test_predict_returns_the_probability_the_batch_gave() -> None:
    orders = batch_of_32()
    async with running_app() as client:
        batch = await client.simulate_post("/predict/batch", json={"requests": orders})
        for index in (0, 13, 31):
            single = await client.simulate_post("/predict", json=orders[index])
            assert single.status_code == 200
            assert single.json["win_probability"] == pytest.approx(
                batch.json["predictions"][index]["win_probability"], abs=1e-12
            )


async def test_same_order_and_timestamp_same_answer_after_a_restart() -> None:
    body = {"requests": batch_of_32()}
    async with running_app() as client:
        first = (await client.simulate_post("/predict/batch", json=body)).json
    async with running_app() as client:
        second = (await client.simulate_post("/predict/batch", json=body)).json
    assert [p["win_probability"] for p in first["predictions"]] == [
        p["win_probability"] for p in second["predictions"]
    ]
    assert [p["data_as_of"] for p in first["predictions"]] == [
        p["data_as_of"] for p in second["predictions"]
    ]


async def test_timestamp_replay_does_not_see_later_bars() -> None:
    when = TUESDAY_MORNING
    body = {"requests": [order("SPX", "Iron Condor", when)]}
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json=body)
    as_of = result.json["predictions"][0]["data_as_of"]
    # 11:07:30 New York: the newest completed bar started at 11:00 (16:00 UTC).
    assert as_of.startswith("2025-03-04T16:00:00")


async def test_101_orders_get_413_telling_the_client_to_split() -> None:
    body = {"requests": [order("SPX", "Butterfly")] * 101}
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json=body)
    assert result.status_code == 413
    assert "split" in result.json["error"]
    assert result.json["max_batch_size"] == 100


async def test_empty_batch_is_an_empty_answer() -> None:
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json={"requests": []})
    assert result.status_code == 200
    assert result.json["predictions"] == []


@pytest.mark.parametrize(
    ("raw_order", "field"),
    [
        (b'"premium": "abc"', "premium"),
        (b'"premium": 1e999', "premium"),
        (b'"premium": NaN', "premium"),
        (b'"premium": -Infinity', "premium"),
        (b'"premium": null', "premium"),
    ],
)
async def test_non_numeric_or_non_finite_premium_is_422_naming_the_field(
    raw_order: bytes, field: str
) -> None:
    item = (
        b'{"symbol": "SPX", "strategy": "Butterfly", "predicted_price": 5855, ' + raw_order + b"}"
    )
    async with running_app() as client:
        single = await client.simulate_post("/predict", body=item)
        batch = await client.simulate_post(
            "/predict/batch",
            body=b'{"requests": [{"symbol": "SPX", "strategy": "Sonar", '
            b'"premium": 1, "predicted_price": 2}, ' + item + b"]}",
        )
    assert single.status_code == 422
    assert single.json["field"] == field
    assert field in single.json["error"]
    assert batch.status_code == 422
    assert batch.json["field"] == f"requests[1].{field}"


async def test_unknown_strategy_lists_valid_names() -> None:
    async with running_app() as client:
        result = await client.simulate_post(
            "/predict", json=order("SPX", "Butterfly") | {"strategy": "Condor"}
        )
    assert result.status_code == 422
    assert result.json["field"] == "strategy"
    for name in ("Butterfly", "Iron Condor", "Vertical", "Sonar"):
        assert name in result.json["error"]


async def test_three_strike_iron_condor_is_422_naming_strikes() -> None:
    bad = order("SPX", "Iron Condor") | {"strikes": [5800, 5810, 5820]}
    async with running_app() as client:
        result = await client.simulate_post("/predict", json=bad)
    assert result.status_code == 422
    assert result.json["field"] == "strikes"
    assert "4" in result.json["error"]


async def test_one_bad_order_does_not_blind_the_bot_to_the_others() -> None:
    orders = batch_of_32()
    orders[3] = orders[3] | {"premium": 0}  # the bot's limit_price default
    orders[7] = orders[7] | {"strikes": [1, 2, 3]}
    orders[9] = orders[9] | {"strategy": "Strangle"}
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json={"requests": orders})
    assert result.status_code == 200
    predictions = result.json["predictions"]
    assert len(predictions) == 32
    for index, field in ((3, "premium"), (7, "strikes"), (9, "strategy")):
        assert predictions[index]["win_probability"] is None
        assert predictions[index]["prediction"] == "UNKNOWN"
        assert predictions[index]["error"].startswith(f"requests[{index}].{field}")
    answered = [p for i, p in enumerate(predictions) if i not in (3, 7, 9)]
    assert all(p["win_probability"] is not None for p in answered)


async def test_strategy_aliases_and_symbol_case_are_canonicalised() -> None:
    orders = [
        order("SPX", "Iron Condor") | {"strategy": "Iron_Condor", "symbol": "spx"},
        order("SPX", "Iron Condor") | {"strategy": "IronCondor"},
        order("SPX", "Iron Condor") | {"strategy": "iron condor", "trade_type": "IC"},
    ]
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json={"requests": orders})
    predictions = result.json["predictions"]
    assert [p["strategy"] for p in predictions] == ["Iron Condor"] * 3
    assert [p["symbol"] for p in predictions] == ["SPX"] * 3
    assert len({p["win_probability"] for p in predictions}) == 1


@pytest.mark.parametrize("body", [b"{", b"not json", b"", b'{"requests": [', b"\xff\xfe"])
async def test_malformed_json_is_400(body: bytes) -> None:
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", body=body)
    assert result.status_code == 400
    assert "error" in result.json


async def test_schema_mismatch_is_422_naming_the_path() -> None:
    async with running_app() as client:
        missing = await client.simulate_post(
            "/predict/batch", json={"requests": [{"symbol": "SPX"}]}
        )
        wrong = await client.simulate_post("/predict/batch", json={"requests": "SPX"})
        naive = await client.simulate_post(
            "/predict", json=order("SPX", "Butterfly") | {"timestamp": "2025-03-04T11:00:00"}
        )
    assert missing.status_code == 422
    assert missing.json["field"] == "requests[0].strategy"
    assert wrong.status_code == 422
    assert wrong.json["field"] == "requests"
    assert naive.status_code == 422
    assert naive.json["field"] == "timestamp"


async def test_repeated_batch_is_served_from_the_prediction_cache() -> None:
    body = {"requests": batch_of_32()}
    async with running_app() as client:
        first = (await client.simulate_post("/predict/batch", json=body)).json
        second = (await client.simulate_post("/predict/batch", json=body)).json
    assert first["batch_metrics"]["prediction_misses"] == 32
    assert second["batch_metrics"]["prediction_hits"] == 32
    assert all(p["cached"] for p in second["predictions"])
    assert [p["win_probability"] for p in first["predictions"]] == [
        p["win_probability"] for p in second["predictions"]
    ]


async def test_cache_key_includes_the_strategy() -> None:
    # The old server cached features under a key that ignored the strategy.
    same_everything = [
        order("SPX", "Iron Condor"),
        order("SPX", "Iron Condor") | {"strategy": "Sonar"},
    ]
    async with running_app() as client:
        result = await client.simulate_post("/predict/batch", json={"requests": same_everything})
    first, second = result.json["predictions"]
    assert first["strategy"] != second["strategy"]
    assert first["win_probability"] != second["win_probability"]


async def test_calculate_risk_reward() -> None:
    async with running_app() as client:
        butterfly = await client.simulate_post(
            "/calculate_risk_reward",
            json={
                "symbol": "spx",
                "strategy": "Butterfly",
                "strikes": [5905, 5855, 5805],
                "premium": 24.82,
                "action": "BUY",
            },
        )
        condor = await client.simulate_post(
            "/calculate_risk_reward",
            json={
                "symbol": "SPX",
                "strategy": "Iron_Condor",
                "strikes": [5880, 5875, 5835, 5830],
                "premium": 0.65,
                "action": "SELL",
                "quantity": 2,
            },
        )
        wrong = await client.simulate_post(
            "/calculate_risk_reward",
            json={"symbol": "SPX", "strategy": "Vertical", "strikes": [1, 2, 3], "premium": 1},
        )
    assert butterfly.json == {
        "symbol": "SPX",
        "strategy": "Butterfly",
        "risk": -2482.0,
        "reward": pytest.approx(2518.0),
        "risk_reward_ratio": pytest.approx(2518.0 / 2482.0),
        "breakevens": [pytest.approx(5829.82), pytest.approx(5880.18)],
    }
    assert condor.json["risk"] == pytest.approx(-(5 - 0.65) * 100 * 2)
    assert condor.json["reward"] == pytest.approx(0.65 * 100 * 2)
    assert condor.json["breakevens"] == [pytest.approx(5834.35), pytest.approx(5875.65)]
    assert wrong.status_code == 422
    assert wrong.json["field"] == "strikes"


async def test_health_endpoints_and_models() -> None:
    async with running_app() as client:
        live = await client.simulate_get("/v2/health/live")
        ready = await client.simulate_get("/v2/health/ready")
        health = await client.simulate_get("/health")
        models = await client.simulate_get("/models")
        market = await client.simulate_get("/market/spx")
        unknown = await client.simulate_get("/market/NOPE")
        missing_route = await client.simulate_get("/nope")
    assert live.status_code == 200
    assert ready.status_code == 200
    assert health.json["status"] == "ready"
    assert health.json["models"][0]["name"] == "demo"
    assert health.json["providers"][0]["circuit"] == "closed"
    model = models.json["models"][0]
    assert model["kind"] == "default"
    assert model["parity"]["rows"] >= 10_000
    assert model["parity"]["max_abs_diff"] <= 1e-5
    assert "auc_holdout" in model["metrics"]
    assert market.json["symbol"] == "SPX"
    assert market.json["source"] == "synthetic"
    assert market.json["price"] > 0
    assert unknown.status_code == 404
    assert missing_route.status_code == 404
    assert "error" in missing_route.json


async def test_headers_reach_the_app_in_process() -> None:
    # The ASGI scope may carry headers as one-shot iterables; the request gate must not eat them.
    async with running_app(demo_settings(admin={"token": "sekrit"})) as client:
        allowed = await client.simulate_post(
            "/admin/reload", headers={"Authorization": "Bearer sekrit", "X-Request-ID": "abc123"}
        )
        refused = await client.simulate_post("/admin/reload", headers={"Authorization": "Bearer x"})
    assert allowed.status_code == 200
    assert allowed.headers["x-request-id"] == "abc123"
    assert refused.status_code == 401
