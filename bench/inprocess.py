"""In-process benchmarks: the feature pass, inference, the pipeline bytes to bytes, the peer.

Every function here returns plain results (samples, ratios, checks) and prints nothing; the
runner turns them into the table and the JSON report, and the pytest-benchmark suites reuse
the same set-ups.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inference.config import Settings
from inference.repository import LoadedModel, session_options
from inference.schema import BATCH_DECODER, ENCODER, decode
from inference.service import Service, build_service

from . import calibration, feature_passes
from .harness import Sample, interleave, interleave_async, ratio
from .workload import body_ring, ring_size


@dataclass
class KernelResult:
    """The full feature pass three ways, and how closely they agree."""

    samples: dict[str, Sample]
    max_rel_diff_polars: float
    max_rel_diff_reference: float

    @property
    def ratio_vs_polars(self) -> float:
        """polars median ÷ Numba median."""
        return ratio(self.samples["polars"], self.samples["numba"])

    @property
    def ratio_vs_reference(self) -> float:
        """Python reference median ÷ Numba median."""
        return ratio(self.samples["reference"], self.samples["numba"])

    @property
    def per_calibration(self) -> float:
        """Numba's median CPU time in units of the yardstick timed in the same rounds."""
        return calibration.per_unit(self.samples["numba"], self.samples["calibration"])


def bench_kernels(rounds: int, budget_s: float) -> KernelResult:
    """Time the feature pass: Numba kernels vs polars expressions vs the Python reference."""
    inputs = feature_passes.feature_inputs()
    numba = feature_passes.numba_pass(inputs)
    polars_diff = feature_passes.max_difference(numba, feature_passes.polars_pass(inputs))
    reference_diff = feature_passes.max_difference(numba, feature_passes.reference_pass(inputs))
    samples = interleave(
        {
            "numba": lambda: feature_passes.numba_pass(inputs),
            "polars": lambda: feature_passes.polars_pass(inputs),
            "reference": lambda: feature_passes.reference_pass(inputs),
            "calibration": calibration.work,
        },
        rounds,
        repeat={"numba": 10, "calibration": 10},
        budget_s=budget_s,
    )
    return KernelResult(samples, polars_diff, reference_diff)


class Pipeline:
    """Our data plane, as one worker builds it, driven bytes in → bytes out.

    Attributes:
        service: The service (providers, models, caches), started and warmed.
        bodies: A ring of distinct batch bodies that always misses the prediction cache.
        stages: Per-stage seconds of each instrumented call (``decode`` … ``encode``).
    """

    def __init__(self, settings: Settings) -> None:
        self.service: Service = build_service(settings)
        cache_size = settings.performance.cache.max_size
        self.bodies = body_ring(ring_size(cache_size))
        self._next = 0
        self.stages: dict[str, list[float]] = {}

    @property
    def predictor(self) -> Any:
        """The data plane."""
        return self.service.predictor

    async def start(self) -> None:
        """Start providers, compile kernels and warm the pipeline, as the server does."""
        await self.service.start()

    async def handle(self, body: bytes) -> bytes:
        """Decode, predict, encode: what the HTTP resource does around the pipeline."""
        request = decode(BATCH_DECODER, body)
        response = await self.predictor.predict_batch(request.requests, request.share_market_data)
        return ENCODER.encode(response)

    async def handle_next(self) -> bytes:
        """Handle the next body of the ring, recording the time of every stage."""
        body = self.bodies[self._next]
        self._next = (self._next + 1) % len(self.bodies)
        clock = time.perf_counter
        mark = clock()
        request = decode(BATCH_DECODER, body)
        decoded = clock()
        response = await self.predictor.predict_batch(request.requests, request.share_market_data)
        predicted = clock()
        encoded = ENCODER.encode(response)
        done = clock()
        stages = self.predictor.last_stages
        record = self.stages
        for name, seconds in (
            ("decode", decoded - mark),
            ("validate+route", stages.validate),
            ("market snapshot", stages.market_data),
            ("features", stages.features),
            ("score (onnxruntime)", stages.inference),
            ("decide", stages.decide),
            ("encode", done - predicted),
        ):
            record.setdefault(name, []).append(seconds)
        attributed = stages.validate + stages.market_data + stages.features
        attributed += stages.inference + stages.decide
        record.setdefault("other (cache keys, prices)", []).append(predicted - decoded - attributed)
        return encoded

    def clear_caches(self) -> None:
        """Forget market data, feature blocks and predictions (not the simulator's sessions)."""
        predictor = self.predictor
        predictor.market.cache.clear()
        predictor.features.cache.clear()
        predictor.prediction_cache.clear()

    async def routed_rows(self) -> list[tuple[LoadedModel, np.ndarray]]:
        """The float32 matrices the router hands onnxruntime for one batch, per model."""
        captured: list[tuple[LoadedModel, np.ndarray]] = []
        models = self.predictor.models.models
        originals = {id(model): model.score for model in models}

        def recorder(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
            def score(rows: np.ndarray) -> np.ndarray:
                captured.append((model, rows.copy()))
                result: np.ndarray = originals[id(model)](rows)
                return result

            return score

        for model in models:
            model.score = recorder(model)
        try:
            self.clear_caches()
            await self.handle(self.bodies[0])
        finally:
            for model in models:
                del model.score
        return captured

    def stage_medians_us(self) -> dict[str, float]:
        """Median microseconds per stage over the instrumented calls."""
        return {
            name: round(statistics.median(values) * 1e6, 2) for name, values in self.stages.items()
        }


@dataclass
class PipelineResult:
    """In-process pipeline timings: warm, cold, prediction-cache hits, and bare onnxruntime."""

    warm: Sample
    cold: Sample
    cached: Sample
    ort_routed: Sample
    yardstick: Sample
    stages_us: dict[str, float]
    routed_models: list[str]
    routed_rows: int
    peer: Sample | None = None
    peer_max_abs_diff: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def overhead_vs_ort(self) -> float:
        """(pipeline − bare onnxruntime) ÷ bare onnxruntime, medians of this run."""
        return (self.warm.p50 - self.ort_routed.p50) / self.ort_routed.p50

    @property
    def per_calibration(self) -> float:
        """The warm pipeline's median CPU time in units of the yardstick of the same rounds."""
        return calibration.per_unit(self.warm, self.yardstick)

    @property
    def ort_per_calibration(self) -> float:
        """Bare onnxruntime's median CPU time in units of the same yardstick."""
        return calibration.per_unit(self.ort_routed, self.yardstick)


async def bench_pipeline(
    pipeline: Pipeline,
    routed: list[tuple[LoadedModel, np.ndarray]],
    rounds: int,
    budget_s: float,
    peer_model: Path | None,
    peer_rounds: int,
) -> PipelineResult:
    """Time the pipeline warm, cold and cached, beside bare onnxruntime and optionally the peer.

    Args:
        pipeline: Our data plane, started.
        routed: What :meth:`Pipeline.routed_rows` captured (bare onnxruntime runs on it).
        rounds: Rounds of the warm/onnxruntime interleave.
        budget_s: Wall-time cap of that interleave.
        peer_model: Model folder for the previous design's peer; None skips the peer.
        peer_rounds: Rounds of the peer/ours interleave.
    """
    model, matrix = routed[0]
    session, feed, output = model.session, {model.input_name: matrix}, [model.output_name]

    async def ort() -> None:
        session.run(output, feed)

    cached_body = pipeline.bodies[0]
    await pipeline.handle(cached_body)

    async def cached() -> bytes:
        return await pipeline.handle(cached_body)

    async def yardstick() -> None:
        calibration.work()

    # Warm, bare onnxruntime and the yardstick alternate, so their ratios are immune to drift.
    samples = await interleave_async(
        {"warm": pipeline.handle_next, "ort_routed": ort, "calibration": yardstick},
        rounds,
        warmup=len(pipeline.bodies),
        budget_s=budget_s,
    )
    pipeline.stages.clear()
    stage_run = await interleave_async({"warm": pipeline.handle_next}, max(rounds // 4, 20))
    cached_sample = (await interleave_async({"cached": cached}, max(rounds // 4, 20)))["cached"]
    cold_sample = await _cold(pipeline, max(rounds // 10, 10))
    result = PipelineResult(
        warm=samples["warm"],
        cold=cold_sample,
        cached=cached_sample,
        ort_routed=samples["ort_routed"],
        yardstick=samples["calibration"],
        stages_us=pipeline.stage_medians_us(),
        routed_models=sorted({model.label for model, _ in routed}),
        routed_rows=sum(rows.shape[0] for _, rows in routed),
    )
    result.extra["warm_stage_run_p50_us"] = round(stage_run["warm"].p50, 2)
    if peer_model is not None:
        await _bench_peer(pipeline, result, peer_model, peer_rounds)
    return result


async def _cold(pipeline: Pipeline, count: int) -> Sample:
    times = []
    for index in range(count):
        pipeline.clear_caches()
        body = pipeline.bodies[index % len(pipeline.bodies)]
        mark = time.perf_counter_ns()
        await pipeline.handle(body)
        times.append((time.perf_counter_ns() - mark) / 1e3)
    return Sample("cold", tuple(times))


async def _bench_peer(
    pipeline: Pipeline, result: PipelineResult, peer_model: Path, rounds: int
) -> None:
    """Time the previous design on the same bodies, interleaved with ours, and compare answers."""
    import msgspec

    from .peers.previous_design import Magic8Predictor

    peer = Magic8Predictor(peer_model)
    body = pipeline.bodies[0]
    ours = msgspec.json.decode(await pipeline.handle(body))["predictions"]
    theirs = msgspec.json.decode(await peer.predict_batch_bytes(body))["predictions"]
    result.peer_max_abs_diff = max(
        abs(mine["win_probability"] - other["win_probability"])
        for mine, other in zip(ours, theirs, strict=True)
    )
    bodies = pipeline.bodies
    position = {"peer": 0, "ours": 0}

    async def peer_call() -> bytes:
        position["peer"] = (position["peer"] + 1) % len(bodies)
        return await peer.predict_batch_bytes(bodies[position["peer"]])

    async def ours_call() -> bytes:
        position["ours"] = (position["ours"] + 1) % len(bodies)
        return await pipeline.handle(bodies[position["ours"]])

    samples = await interleave_async(
        {"peer": peer_call, "ours": ours_call}, rounds, repeat={"ours": 10}, warmup=1
    )
    result.peer = samples["peer"]
    result.extra["ours_beside_peer_p50_us"] = round(samples["ours"].p50, 2)
    result.extra["ratio_vs_previous_design_in_process"] = round(
        ratio(samples["peer"], samples["ours"]), 1
    )


@dataclass
class InferenceResult:
    """onnxruntime vs XGBoost ``inplace_predict``, one thread each."""

    routed: dict[str, Sample]
    routed_rows: int
    routed_max_abs_diff: float
    reference: dict[int, dict[str, Sample]]
    reference_max_abs_diff: float

    @property
    def ratio_routed(self) -> float:
        """XGBoost median ÷ onnxruntime median on the routed rows."""
        return ratio(self.routed["xgboost"], self.routed["onnxruntime"])

    def ratio_at(self, batch: int) -> float:
        """XGBoost median ÷ onnxruntime median on the reference booster at ``batch`` rows."""
        return ratio(self.reference[batch]["xgboost"], self.reference[batch]["onnxruntime"])


def _xgboost(path: Path) -> Any:
    import xgboost

    booster = xgboost.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})
    return booster


def bench_inference(
    routed: list[tuple[LoadedModel, np.ndarray]],
    rounds: int,
    budget_s: float,
    batches: tuple[int, ...] = (1, 32, 1000),
) -> InferenceResult:
    """Time both runtimes on the routed rows, then on the reference booster at each batch size."""
    import onnxruntime

    from .peers.previous_design import _booster_file
    from .workload import reference_booster

    model, matrix = routed[0]
    booster = _xgboost(_booster_file(model.path, model.manifest))
    session, feed, output = model.session, {model.input_name: matrix}, [model.output_name]
    routed_diff = float(
        np.max(np.abs(session.run(output, feed)[0] - booster.inplace_predict(matrix)))
    )
    routed_samples = interleave(
        {
            "onnxruntime": lambda: session.run(output, feed),
            "xgboost": lambda: booster.inplace_predict(matrix),
        },
        rounds,
        budget_s=budget_s / 2,
    )
    artefact = reference_booster()
    reference_session = onnxruntime.InferenceSession(
        artefact.onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    reference = _xgboost(artefact.booster_path)
    input_name = reference_session.get_inputs()[0].name
    worst = 0.0
    by_batch: dict[int, dict[str, Sample]] = {}
    for batch in batches:
        rows = np.ascontiguousarray(artefact.rows[:batch])
        ort_out = reference_session.run(None, {input_name: rows})[0]
        worst = max(worst, float(np.max(np.abs(ort_out - reference.inplace_predict(rows)))))
        by_batch[batch] = interleave(
            {
                "onnxruntime": partial(reference_session.run, None, {input_name: rows}),
                "xgboost": partial(reference.inplace_predict, rows),
            },
            max(rounds // (1 + batch // 100), 10),
            budget_s=budget_s / (2 * len(batches)),
        )
    return InferenceResult(routed_samples, matrix.shape[0], routed_diff, by_batch, worst)
