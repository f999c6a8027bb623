"""Routing (SPEC §5.2), verified loading and /models — up to a real retraining directory served.

The last test is the issue's acceptance test: a retraining directory like the real one is
converted with one command, a real server process is started on the result, and every symbol
is answered by its model, with its per-strategy threshold and ``Booster.predict``'s probability.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
import xgboost
from click.testing import CliRunner

from convert.manifest import read_manifest, write_manifest
from convert.onnx_export import export_model
from inference.cli import main
from inference.config import load_settings
from inference.errors import ModelLoadError
from inference.repository import ModelSet, load_repository
from kernels.registry import STRATEGIES, FeatureRegistry
from tests.convert.retraining_dir import (
    GROUP,
    STRATEGY_MODEL,
    SYMBOLS,
    TRADES_SHEET_FEATURES,
    UNIVERSE,
    RetrainingDirectory,
    build_retraining_directory,
    model_rows,
    predict,
    sample_orders,
    threshold_of,
)
from tests.fixtures import running_app
from tests.inference.servers import serving

FEATURES = ["premium", "strategy_Iron Condor", "hour", "strike_width"]
REGISTRY = FeatureRegistry(UNIVERSE)

#: name -> (kind, symbols, strategies, created) of the small routing repository.
ROUTING_MODELS: dict[str, tuple[str, list[str], list[str], str]] = {
    "spx_condor_old": ("symbol_strategy", ["SPX"], ["Iron Condor"], "2025-01-01T00:00:00+00:00"),
    "spx_condor_new": ("symbol_strategy", ["SPX"], ["Iron Condor"], "2025-02-01T00:00:00+00:00"),
    "spx": ("symbol", ["SPX"], [], "2025-01-01T00:00:00+00:00"),
    "ndx_sonar": ("symbol", ["NDX"], ["Sonar"], "2025-01-01T00:00:00+00:00"),
    "indices": ("group", ["SPX", "NDX", "RUT"], [], "2025-01-01T00:00:00+00:00"),
    "everything": ("default", [], [], "2025-01-01T00:00:00+00:00"),
    "verticals": ("default", [], ["Vertical"], "2025-03-01T00:00:00+00:00"),
}


def _tiny_booster(seed: int) -> xgboost.Booster:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(200, len(FEATURES))).astype(np.float32)
    labels = (values[:, 0] + rng.normal(size=200) > 0).astype(np.int64)
    return xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
        xgboost.DMatrix(values, label=labels, feature_names=FEATURES),
        num_boost_round=3,
    )


def _write_model(repo: Path, scratch: Path, name: str, seed: int, **manifest: Any) -> Path:
    """Convert a tiny booster into ``repo/name``; manifest fields may be overridden after."""
    kind, symbols, strategies, created = ROUTING_MODELS.get(name, ("default", [], [], ""))
    source = scratch / f"{name}.json"
    _tiny_booster(seed).save_model(source)
    version_dir, written = export_model(
        xgboost.Booster(model_file=str(source)),
        feature_names=FEATURES,
        out_repo=repo,
        name=name,
        kind=kind,
        symbols=symbols,
        strategies=strategies,
        thresholds={"default": 0.5, "Iron Condor": 0.61},
        missing="nan",
        source_path=source,
    )
    changes = {"created": created, **manifest} if created else manifest
    if changes:
        write_manifest(version_dir / "manifest.json", msgspec.structs.replace(written, **changes))
    return version_dir


@pytest.fixture(scope="module")
def routing_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding every routing kind, two of them twice."""
    repo = tmp_path_factory.mktemp("routing") / "models"
    scratch = tmp_path_factory.mktemp("sources")
    for seed, name in enumerate(ROUTING_MODELS):
        _write_model(repo, scratch, name, seed)
    return repo


@pytest.fixture(scope="module")
def model_set(routing_repo: Path) -> ModelSet:
    return load_repository(routing_repo, REGISTRY, warm=False)


@pytest.mark.parametrize(
    ("symbol", "strategy", "expected"),
    [
        ("SPX", "Iron Condor", "spx_condor_new"),  # symbol x strategy, the newest of two
        ("SPX", "Butterfly", "spx"),  # symbol model
        ("NDX", "Sonar", "ndx_sonar"),  # symbol model limited to one strategy
        ("NDX", "Butterfly", "indices"),  # ... so other strategies fall to the group
        ("RUT", "Iron Condor", "indices"),  # group lists the symbol
        ("QQQ", "Butterfly", "everything"),  # nothing names QQQ: the default
        ("QQQ", "Vertical", "verticals"),  # the newest default serving Vertical
        ("SPX", "Vertical", "spx"),  # a symbol model beats any default
        ("ZZZZ", "Sonar", "everything"),  # symbols no manifest names reach only defaults
    ],
)
def test_each_order_goes_to_the_most_specific_newest_model(
    model_set: ModelSet, symbol: str, strategy: str, expected: str
) -> None:
    model = model_set.route(symbol, strategy)

    assert model is not None
    assert model.manifest.name == expected
    assert model.label == f"{expected}@v1"


def test_without_a_default_an_unserved_order_has_no_route(
    tmp_path: Path, routing_repo: Path
) -> None:
    repo = tmp_path / "models"
    for name in ("spx", "indices"):
        (repo / name).mkdir(parents=True)
        (repo / name / "v1").symlink_to(routing_repo / name / "v1")

    partial = load_repository(repo, REGISTRY, warm=False)

    assert partial.route("QQQ", "Butterfly") is None
    assert partial.route("RUT", "Sonar") is not None


def test_thresholds_are_per_strategy_with_the_default_for_the_rest(model_set: ModelSet) -> None:
    model = model_set.route("SPX", "Butterfly")

    assert model is not None
    assert model.threshold("Iron Condor") == 0.61
    assert model.threshold("Butterfly") == 0.5


def test_client_chosen_symbols_do_not_grow_the_route_cache(model_set: ModelSet) -> None:
    for index in range(2000):
        model_set.route(f"X{index}", STRATEGIES[index % 4])

    # Every symbol no manifest names shares one entry per strategy.
    unnamed = [key for key in model_set._routes if key[0] not in {"SPX", "NDX", "RUT"}]
    assert len(unnamed) <= len(STRATEGIES)


def test_a_model_whose_onnx_does_not_match_its_sha256_is_refused_at_load(
    tmp_path: Path, routing_repo: Path
) -> None:
    repo = Path(shutil.copytree(routing_repo, tmp_path / "models"))
    onnx_path = repo / "spx" / "v1" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-1] ^= 0xFF
    onnx_path.write_bytes(bytes(data))

    with pytest.raises(ModelLoadError, match=r"spx/v1/model.onnx: sha256 .* does not match"):
        load_repository(repo, REGISTRY)


def test_a_manifest_naming_unknown_features_is_refused_at_load(
    tmp_path: Path, routing_repo: Path
) -> None:
    repo = Path(shutil.copytree(routing_repo, tmp_path / "models"))
    manifest_path = repo / "spx" / "v1" / "manifest.json"
    manifest = read_manifest(manifest_path)
    unknown = ["moon_phase", "strategy_Iron Condor", "SPX_gamma", "strike_width"]
    write_manifest(manifest_path, msgspec.structs.replace(manifest, features=unknown))

    with pytest.raises(ModelLoadError, match="unknown feature\\(s\\): 'moon_phase', 'SPX_gamma'"):
        load_repository(repo, REGISTRY)


async def test_models_lists_every_model_with_routing_thresholds_and_parity(
    routing_repo: Path,
) -> None:
    settings = load_settings(None, prediction={"models_dir": str(routing_repo)})

    async with running_app(settings) as client:
        listing = (await client.simulate_get("/models")).json

    models = {model["name"]: model for model in listing["models"]}
    assert set(models) == set(ROUTING_MODELS)
    condor = models["spx_condor_new"]
    assert condor["kind"] == "symbol_strategy"
    assert condor["routing"] == {"symbols": ["SPX"], "strategies": ["Iron Condor"]}
    assert condor["features"] == FEATURES
    assert condor["thresholds"] == {"default": 0.5, "Iron Condor": 0.61}
    assert condor["parity"]["rows"] >= 10_000
    assert condor["parity"]["max_abs_diff"] <= 1e-5
    assert len(condor["onnx_sha256"]) == 64
    assert condor["source"]["file"] == "spx_condor_new.json"


async def test_magic8_models_prints_what_models_shows(routing_repo: Path) -> None:
    settings = load_settings(None, prediction={"models_dir": str(routing_repo)})
    async with running_app(settings) as client:
        served = (await client.simulate_get("/models")).json["models"]

    table = CliRunner().invoke(main, ["models", str(routing_repo)])
    listed = CliRunner().invoke(main, ["models", str(routing_repo), "--json"])

    assert table.exit_code == 0, table.output
    rows = table.stdout.splitlines()
    assert rows[0].split()[:3] == ["name", "version", "kind"]
    assert sorted(row.split()[0] for row in rows[1:]) == sorted(ROUTING_MODELS)
    assert listed.exit_code == 0, listed.output
    printed = json.loads(listed.stdout)["models"]
    for model in (*served, *printed):
        model.pop("path")
    assert printed == served


def test_magic8_models_refuses_a_tampered_repository(tmp_path: Path, routing_repo: Path) -> None:
    repo = Path(shutil.copytree(routing_repo, tmp_path / "models"))
    (repo / "indices" / "v1" / "model.onnx").write_bytes(b"not onnx")

    result = CliRunner().invoke(main, ["models", str(repo)])

    assert result.exit_code == 1
    assert "does not match the manifest" in result.output


# -- a real server on a converted retraining directory ----------------------------------------


def served_env(repository: Path, **extra: str) -> dict[str, str]:
    """Environment of a server on ``repository`` whose universe includes the group's IWM."""
    return {
        "MAGIC8_PREDICTOR_MODEL_PATH": str(repository),
        "MAGIC8_PREDICTOR_PREDICTION__FEATURES__UNIVERSE": json.dumps(list(UNIVERSE)),
        **extra,
    }


@pytest.fixture(scope="module")
def real_output(tmp_path_factory: pytest.TempPathFactory) -> RetrainingDirectory:
    """A retraining directory shaped like the real one: 200 trees of depth 4, 31 features."""
    return build_retraining_directory(tmp_path_factory.mktemp("retraining") / "2025-03-01")


def _expected_model(symbol: str, strategy: str) -> tuple[str, str]:
    if (symbol, strategy) == STRATEGY_MODEL:
        return f"{symbol}_{strategy}", "symbol_strategy"
    if symbol in SYMBOLS:
        return f"{symbol}_trades", "symbol"
    return "_".join(GROUP) + "_combined", "group"


@pytest.mark.server
@pytest.mark.slow
def test_a_converted_retraining_directory_is_served_model_by_model(
    tmp_path: Path, real_output: RetrainingDirectory
) -> None:
    repository = tmp_path / "models"
    converted = CliRunner().invoke(
        main, ["convert", str(real_output.path), "--out", str(repository), "--allow-pickle"]
    )
    assert converted.exit_code == 0, converted.output
    assert converted.stdout.splitlines()[-1].startswith("10 new version(s)")
    rng = np.random.default_rng(2025)
    orders = [
        order
        for symbol in UNIVERSE
        for strategy in STRATEGIES
        for order in sample_orders(rng, symbol, 2, strategy)
    ]

    with serving(env=served_env(repository)) as server:
        answer = httpx.post(f"{server.base}/predict/batch", json={"requests": orders}, timeout=30)
        single = httpx.post(f"{server.base}/predict", json=orders[-1], timeout=30)
        listing = httpx.get(f"{server.base}/models", timeout=30).json()

    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == len(orders) == 72
    for order, prediction in zip(orders, predictions, strict=True):
        symbol, strategy = order["symbol"], order["strategy"]
        name, kind = _expected_model(symbol, strategy)
        row = model_rows([order], TRADES_SHEET_FEATURES, zero_missing=True)
        expected = float(predict(real_output.boosters[name], row)[0])
        threshold = threshold_of(symbol, strategy)
        assert prediction["model_version"] == f"{name}@v1", (symbol, strategy)
        assert prediction["model_type"] == kind
        assert prediction["threshold"] == threshold
        assert prediction["win_probability"] == pytest.approx(expected, abs=1e-5, rel=0)
        assert prediction["prediction"] == (
            "WIN" if prediction["win_probability"] >= threshold else "LOSS"
        )
        assert prediction["n_features"] == 31
        unfilled = model_rows([order], TRADES_SHEET_FEATURES, zero_missing=False)
        assert prediction["missing_features"] == int(np.isnan(unfilled).sum())
    assert {p["model_version"] for p in predictions} == {
        f"{name}@v1" for name in real_output.boosters
    }
    assert single.status_code == 200
    assert single.json()["win_probability"] == predictions[-1]["win_probability"]
    listed = {model["name"]: model for model in listing["models"]}
    assert set(listed) == set(real_output.boosters)
    for name, model in listed.items():
        assert model["missing"] == "zero"
        assert model["parity"]["rows"] >= 10_000
        assert model["parity"]["max_abs_diff"] <= 1e-5
        assert model["source"]["n_trees"] == 200
        assert model["source"]["max_depth"] == 4
        assert model["features"] == TRADES_SHEET_FEATURES, name
