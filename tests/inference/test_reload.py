"""Hot reload (SPEC §5.4): POST /admin/reload and SIGHUP swap whole model sets, safely.

Each model version is converted into its own staging repository first; "publishing" it is a
rename of its version directory into the served repository, as ``magic8 convert`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import xgboost

import inference.service as service_module
from convert.onnx_export import export_model
from inference.config import load_settings
from tests.convert.retraining_dir import (
    SYMBOLS,
    TRADES_SHEET_FEATURES,
    model_rows,
    predict,
    sample_orders,
)
from tests.fixtures import running_app
from tests.inference.servers import Server, serving
from tests.inference.test_routing import served_env

NAME = "magic8"
TOKEN = "s3cret-token"
UNIVERSE = SYMBOLS
STRATEGIES = ("Butterfly", "Iron Condor", "Sonar", "Vertical")


@dataclass(frozen=True)
class Versions:
    """Model versions ready to publish, and what each answers for the order pool.

    Attributes:
        staged: Version label -> its version directory in a staging repository.
        orders: The order pool clients draw batches from.
        expected: Version label -> win probability of every order of the pool.
    """

    staged: dict[str, Path]
    orders: list[dict[str, Any]]
    expected: dict[str, np.ndarray]


def _stage(root: Path, count: int) -> Versions:
    """Train ``count`` different boosters and convert each to ``NAME/v<k>`` in its own staging."""
    rng = np.random.default_rng(11)
    orders = [
        order
        for symbol in UNIVERSE
        for strategy in STRATEGIES
        for order in sample_orders(rng, symbol, 8, strategy)
    ]
    rows = model_rows(orders, TRADES_SHEET_FEATURES, zero_missing=False)
    staged: dict[str, Path] = {}
    expected: dict[str, np.ndarray] = {}
    for k in range(1, count + 1):
        training = model_rows(
            [o for s in UNIVERSE for o in sample_orders(rng, s, 40)],
            TRADES_SHEET_FEATURES,
            zero_missing=False,
        )
        spread = np.nan_to_num(training[:, 8] / np.nanmax(training[:, 8]))
        labels = (spread + rng.normal(scale=0.3, size=len(training)) > 0.3 + 0.05 * k).astype(int)
        booster = xgboost.train(
            {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": k},
            xgboost.DMatrix(training, label=labels, feature_names=TRADES_SHEET_FEATURES),
            num_boost_round=25,
        )
        source = root / f"v{k}.ubj"
        booster.save_model(source)
        version_dir, _ = export_model(
            booster,
            feature_names=TRADES_SHEET_FEATURES,
            out_repo=root / f"staging-{k}",
            name=NAME,
            kind="default",
            symbols=[],
            strategies=[],
            thresholds={"default": 0.5, "Sonar": 0.55},
            missing="nan",
            source_path=source,
            version=f"v{k}",
        )
        staged[f"v{k}"] = version_dir
        expected[f"v{k}"] = predict(booster, rows)
    return Versions(staged=staged, orders=orders, expected=expected)


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    return _stage(tmp_path_factory.mktemp("versions"), 5)


def _spoil(version_dir: Path) -> None:
    """Change one byte of the ONNX file, so its sha256 no longer matches the manifest."""
    onnx_path = version_dir / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))


def _settings(repository: Path, **admin: Any) -> Any:
    return load_settings(
        None,
        prediction={"models_dir": str(repository), "features": {"universe": list(UNIVERSE)}},
        admin=admin or {"enabled": True},
    )


@pytest.fixture
def repository(tmp_path: Path, versions: Versions) -> Path:
    """A served repository holding v1, with v2..v5 left staged (copied, so tests stay apart)."""
    repo = tmp_path / "models"
    (repo / NAME).mkdir(parents=True)
    shutil.copytree(versions.staged["v1"], repo / NAME / "v1")
    return repo


def _copy_publish(versions: Versions, label: str, repository: Path) -> Path:
    return Path(shutil.copytree(versions.staged[label], repository / NAME / label))


# -- in process -----------------------------------------------------------------------------


async def test_reload_swaps_in_the_newest_version(repository: Path, versions: Versions) -> None:
    async with running_app(_settings(repository)) as client:
        before = await client.simulate_post("/predict", json=versions.orders[0])
        _copy_publish(versions, "v2", repository)
        reloaded = await client.simulate_post("/admin/reload")
        after = await client.simulate_post("/predict", json=versions.orders[0])
        listing = (await client.simulate_get("/models")).json

    assert before.json["model_version"] == f"{NAME}@v1"
    assert reloaded.status_code == 200
    assert reloaded.json == {"reloaded": True, "models": [f"{NAME}@v2"]}
    assert after.json["model_version"] == f"{NAME}@v2"
    assert after.json["win_probability"] == pytest.approx(versions.expected["v2"][0], abs=1e-5)
    assert [model["label"] for model in listing["models"]] == [f"{NAME}@v2"]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_spoil, "sha256 .* does not match the manifest"),
        (lambda d: (d / "model.onnx").unlink(), "needs model.onnx and manifest.json"),
        (
            lambda d: (d / "manifest.json").write_text(
                (d / "manifest.json").read_text().replace('"premium"', '"moon_phase"')
            ),
            "unknown feature\\(s\\): 'moon_phase'",
        ),
    ],
    ids=["sha256", "missing-file", "unknown-feature"],
)
async def test_a_bad_candidate_leaves_the_serving_set_unchanged(
    repository: Path,
    versions: Versions,
    capsys: pytest.CaptureFixture[str],
    spoil: Callable[[Path], Any],
    reason: str,
) -> None:
    async with running_app(_settings(repository)) as client:
        spoil(_copy_publish(versions, "v2", repository))
        refused = await client.simulate_post("/admin/reload")
        after = await client.simulate_post("/predict", json=versions.orders[3])

    assert refused.status_code == 409
    assert refused.json["error"].startswith("reload refused, still serving the previous models")
    assert refused.json["serving"] == [f"{NAME}@v1"]
    assert re.search(reason, refused.json["error"])
    assert after.status_code == 200
    assert after.json["model_version"] == f"{NAME}@v1"
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    refusals = [entry for entry in logged if entry["message"] == "reload refused"]
    assert len(refusals) == 1
    assert re.search(reason, refusals[0]["reason"])
    assert refusals[0]["serving"] == [f"{NAME}@v1"]


async def test_a_reload_past_the_request_deadline_still_completes(
    repository: Path, versions: Versions, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_load = service_module.load_repository

    def slow_load(*args: Any) -> Any:
        time.sleep(0.6)
        return real_load(*args)

    settings = load_settings(
        None,
        prediction={"models_dir": str(repository), "features": {"universe": list(UNIVERSE)}},
        performance={"batch_predictions": {"timeout_ms": 200}},
    )
    async with running_app(settings) as client:
        _copy_publish(versions, "v2", repository)
        monkeypatch.setattr(service_module, "load_repository", slow_load)
        late = await client.simulate_post("/admin/reload")
        await asyncio.sleep(1.0)
        listing = (await client.simulate_get("/models")).json

    assert late.status_code == 503
    assert "deadline" in late.json["error"]
    assert [model["label"] for model in listing["models"]] == [f"{NAME}@v2"]


async def test_reload_needs_the_bearer_token_when_one_is_set(repository: Path) -> None:
    # The right token is exercised on the real server (test_reload_under_load_...).
    async with running_app(_settings(repository, token="s3cret")) as client:
        missing = await client.simulate_post("/admin/reload")

    assert missing.status_code == 401
    assert missing.json == {"error": "a valid bearer token is required"}


async def test_reload_is_forbidden_when_admin_is_disabled(repository: Path) -> None:
    async with running_app(_settings(repository, enabled=False)) as client:
        result = await client.simulate_post("/admin/reload")

    assert result.status_code == 403


# -- a real server under load ---------------------------------------------------------------


@dataclass
class Load:
    """Clients sending batches continuously, and every answer they got.

    Attributes:
        base: The server's URL.
        orders: The pool batches are drawn from.
        batches: ``(client, positions, response status, body)`` per batch, in send order.
        stop: Set to end the clients.
    """

    base: str
    orders: list[dict[str, Any]]
    batches: list[tuple[int, list[int], int, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, number: int) -> None:
        """Send 32-order batches until stopped; record each answer (failures included)."""
        rng = np.random.default_rng(number)
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.is_set():
                positions = [int(p) for p in rng.choice(len(self.orders), 32, replace=False)]
                body = {"requests": [self.orders[p] for p in positions]}
                try:
                    response = http.post("/predict/batch", json=body)
                    answer = (response.status_code, response.json())
                except (httpx.HTTPError, ValueError) as ex:
                    answer = (0, repr(ex))
                with self.lock:
                    self.batches.append((number, positions, *answer))

    def versions_after(self, mark: int) -> set[str]:
        """Model versions that answered the batches recorded after ``mark``."""
        with self.lock:
            recent = self.batches[mark:]
        return {
            prediction["model_version"]
            for *_, status, body in recent
            if status == 200
            for prediction in body["predictions"]
        }

    def wait_for(self, label: str, timeout: float = 20.0) -> None:
        """Wait until a batch sent from now on is answered by ``label``, then a few more."""
        mark = len(self.batches)
        deadline = time.monotonic() + timeout
        while f"{NAME}@{label}" not in self.versions_after(mark):
            assert time.monotonic() < deadline, f"no batch answered by {label}"
            time.sleep(0.02)
        mark = len(self.batches)
        while len(self.batches) < mark + 8:
            assert time.monotonic() < deadline, "the clients stalled"
            time.sleep(0.02)


@pytest.mark.server
@pytest.mark.slow
def test_reload_under_load_fails_no_request_and_never_mixes_versions(
    repository: Path, versions: Versions
) -> None:
    environment = served_env(
        repository,
        # Every batch is scored, not answered from the prediction cache.
        MAGIC8_PREDICTOR_PERFORMANCE__CACHE__PREDICTION_TTL="0",
        # Room for the 4 clients and the admin: this test is about reloads, not load shedding.
        MAGIC8_PREDICTOR_PERFORMANCE__MAX_IN_FLIGHT="8",
        MAGIC8_PREDICTOR_PERFORMANCE__MAX_QUEUE_MS="60000",
        MAGIC8_PREDICTOR_ADMIN_TOKEN=TOKEN,
    )
    with serving(env=environment) as server:
        load = Load(base=server.base, orders=versions.orders)
        clients = [threading.Thread(target=load.client, args=(n,)) for n in range(4)]
        for client in clients:
            client.start()
        try:
            load.wait_for("v1")
            outcomes = _swap_several_times(server, load, versions, repository)
        finally:
            load.stop.set()
            for client in clients:
                client.join(timeout=30)
        logged = server.log.read_text()

    failed = [batch for batch in load.batches if batch[2] != 200]
    assert failed == []
    seen: Counter[str] = Counter()
    for number, positions, _, body in load.batches:
        predictions = body["predictions"]
        labels = {prediction["model_version"] for prediction in predictions}
        assert len(labels) == 1, f"client {number} got a batch mixing {labels}"
        [label] = labels
        seen[label] += 1
        expected = versions.expected[label.split("@")[1]][positions]
        actual = np.array([prediction["win_probability"] for prediction in predictions])
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
        assert not any(prediction["cached"] for prediction in predictions)
    assert set(seen) == {f"{NAME}@v{k}" for k in range(1, 6)}
    assert outcomes == ["200", "SIGHUP", "409", "200", "SIGHUP"]
    assert '"message":"reload refused"' in logged
    # Each client saw the versions in publishing order: never an older one after a newer.
    for number in range(4):
        order = [
            int(body["predictions"][0]["model_version"].rsplit("@v", 1)[1])
            for client, _, _, body in load.batches
            if client == number
        ]
        assert order == sorted(order)
    print(f"\nreload under load: {len(load.batches)} batches, {len(failed)} failed, {dict(seen)}")


def _swap_several_times(
    server: Server, load: Load, versions: Versions, repository: Path
) -> list[str]:
    """Publish v2..v5 while the clients run, by POST and by SIGHUP, with a bad candidate."""
    outcomes = []
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base, timeout=30, headers=bearer) as admin:
        _copy_publish(versions, "v2", repository)
        wrong = {"Authorization": f"Bearer {TOKEN}x"}
        assert admin.post("/admin/reload", headers=wrong).status_code == 401
        assert httpx.post(f"{server.base}/admin/reload", timeout=30).status_code == 401
        outcomes.append(str(admin.post("/admin/reload").status_code))
        load.wait_for("v2")

        _copy_publish(versions, "v3", repository)
        server.process.send_signal(signal.SIGHUP)
        outcomes.append("SIGHUP")
        load.wait_for("v3")

        bad = _copy_publish(versions, "v4", repository)
        _spoil(bad)
        outcomes.append(str(admin.post("/admin/reload").status_code))
        mark = len(load.batches)
        load.wait_for("v3")
        assert load.versions_after(mark) == {f"{NAME}@v3"}

        (bad / "model.onnx").write_bytes((versions.staged["v4"] / "model.onnx").read_bytes())
        outcomes.append(str(admin.post("/admin/reload").status_code))
        load.wait_for("v4")

        _copy_publish(versions, "v5", repository)
        server.process.send_signal(signal.SIGHUP)
        outcomes.append("SIGHUP")
        load.wait_for("v5")
    return outcomes


@pytest.mark.server
@pytest.mark.slow
def test_sighup_reloads_each_gunicorn_worker_in_place(repository: Path, versions: Versions) -> None:
    # SIGHUP to gunicorn's master instead starts fresh workers, which load the repository at
    # start-up (README, "Models"); that is gunicorn's own behaviour, not tested here.
    def labels_served(base: str) -> set[str]:
        answers = [
            httpx.post(f"{base}/predict", json=versions.orders[1], timeout=30) for _ in range(16)
        ]
        assert all(answer.status_code == 200 for answer in answers)
        return {answer.json()["model_version"] for answer in answers}

    with serving("--workers", "2", env=served_env(repository)) as server:
        workers = server.worker_pids()
        if len(workers) != 2:
            pytest.skip("needs /proc to find gunicorn's workers")
        assert labels_served(server.base) == {f"{NAME}@v1"}
        _copy_publish(versions, "v2", repository)

        for worker in workers:
            os.kill(worker, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while server.log.read_text().count('"message":"models reloaded"') < 2:
            assert time.monotonic() < deadline, "the workers did not reload"
            time.sleep(0.1)

        assert labels_served(server.base) == {f"{NAME}@v2"}
        assert sorted(server.worker_pids()) == sorted(workers)
        # Stop at once: the workers currently outwait gunicorn's graceful timeout on any
        # shutdown signal, and this test is not about shutting down.
        server.process.send_signal(signal.SIGINT)
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        server.process.wait(timeout=30)
