"""``magic8 bench``: run the suite, print the table, write the report, keep the history, gate.

The command lives in ``inference/cli.py``; this module does the work. It is run from a source
checkout (``bench/`` is not an installed package: it carries the peer, the history and load
tests that make no sense in a wheel), so the CLI puts the checkout on ``sys.path`` first.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.config import Settings, load_settings

from . import calibration, inprocess, loadtest, report
from .harness import Sample
from .workload import body_ring, ring_size


@dataclass(frozen=True)
class Budget:
    """How long each part may run: ``quick`` for CI (< 3 min in all), ``full`` for people."""

    kernel_rounds: int
    pipeline_rounds: int
    peer_rounds: int
    inference_rounds: int
    http_c1_s: float
    http_load_s: float
    http_peer_s: float
    section_cap_s: float


QUICK = Budget(60, 400, 4, 600, 5.0, 4.0, 6.0, 8.0)
FULL = Budget(300, 3000, 15, 4000, 15.0, 10.0, 20.0, 40.0)


@dataclass(frozen=True)
class Options:
    """What ``magic8 bench`` was asked to do.

    Attributes:
        quick: The CI budget.
        json_path: Where to write the JSON report.
        models: Model repository (default: the configured one).
        http: Run the HTTP benchmarks (servers on 127.0.0.1).
        peer: Run the previous design beside ours.
        record: Append to the history; None records on branch ``main`` only.
        gate: Exit non-zero when the regression gate fails.
        history_path: The history file.
    """

    quick: bool = False
    json_path: Path | None = None
    models: Path | None = None
    http: bool = True
    peer: bool = True
    record: bool | None = None
    gate: bool = True
    history_path: Path = report.HISTORY_FILE


def _say(message: str) -> None:
    print(message, flush=True)


def _settings(models: Path | None) -> Settings:
    if models is None:
        return load_settings()
    return load_settings(prediction={"models_dir": str(models.resolve())})


class _Suite:
    """The sections of one run; each writes its part of the report and can run again."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.budget = QUICK if options.quick else FULL
        self.settings = _settings(options.models)
        self.models_dir = Path(self.settings.prediction.models_dir)
        self.bodies = body_ring(ring_size(self.settings.performance.cache.max_size))
        self.routed: list[Any] = []

    @property
    def peer_dir(self) -> Path | None:
        """Model folder the peer loads (the one the batch routes to), or None without peer."""
        return self.routed[0][0].path if self.options.peer and self.routed else None

    def kernels(self, result: dict[str, Any]) -> None:
        """Feature pass: Numba vs polars vs the Python reference."""
        _say("kernels: feature pass, Numba vs polars vs Python reference …")
        budget = self.budget
        record_kernels(result, inprocess.bench_kernels(budget.kernel_rounds, budget.section_cap_s))

    def in_process(self, result: dict[str, Any]) -> None:
        """The pipeline (and the peer) in process, then the two runtimes on the routed rows."""
        _say("pipeline in process: warm, cold, cached, bare onnxruntime, previous design …")
        pipeline_result, self.routed = asyncio.run(
            _in_process(self.settings, self.budget, self.options.peer)
        )
        _record_pipeline(result, pipeline_result)
        _say("inference: onnxruntime vs xgboost inplace_predict …")
        budget = self.budget
        inference = inprocess.bench_inference(
            self.routed, budget.inference_rounds, budget.section_cap_s
        )
        _record_inference(result, inference)

    def http_one_worker(self, result: dict[str, Any]) -> None:
        """``magic8 serve``: readiness, first request, concurrency 1."""
        result["load_generator"] = loadtest.generator_name()
        _say(f"HTTP: one uvicorn worker, concurrency 1 ({result['load_generator']}) …")
        port = loadtest.free_port()
        command = loadtest.our_server_command(port, self.models_dir)
        with loadtest.serve("magic8-serve", command, port, "/v2/health/ready") as server:
            result["ready_seconds"] = round(server.ready_seconds, 3)
            first = loadtest.first_request_ms(port, self.bodies[-1])
            result["first_request_ms"] = round(first, 3)
            c1 = loadtest.load(port, self.bodies, 1, self.budget.http_c1_s)
        result["http_batch32_c1_ms"] = c1.as_dict() | {"p50": c1.p50_ms, "p99": c1.p99_ms}
        _peer_ratio(result)

    def http_two_workers(self, result: dict[str, Any]) -> None:
        """``magic8 serve --workers 2`` at concurrency 8 and 64."""
        _say("HTTP: magic8 serve --workers 2, concurrency 8 and 64 …")
        port = loadtest.free_port()
        command = loadtest.our_server_command(port, self.models_dir, workers=2)
        with loadtest.serve("magic8-serve-workers2", command, port, "/v2/health/ready"):
            # Readiness answers as soon as one worker is up; a short untimed run lets the
            # other finish its start-up before anything is measured.
            loadtest.load(port, self.bodies, 8, 2.0)
            for connections in (8, 64):
                run = loadtest.load(port, self.bodies, connections, self.budget.http_load_s)
                result[f"http_batch32_c{connections}_workers2"] = run.as_dict() | {
                    "p50": run.p50_ms,
                    "p99": run.p99_ms,
                }
        # Throughput counts answered batches: a 503 (shed) is not a batch served.
        c8 = result["http_batch32_c8_workers2"]
        result["http_batch32_c8_workers2_rps"] = round(c8["ok_rps"], 1)

    def http_peer(self, result: dict[str, Any]) -> None:
        """The previous design at concurrency 1."""
        if self.peer_dir is None:
            return
        _say("HTTP: the previous design (FastAPI, uvicorn, one worker), concurrency 1 …")
        port = loadtest.free_port()
        command = loadtest.peer_server_command(port, self.peer_dir)
        with loadtest.serve("previous-design", command, port, "/health"):
            peer = loadtest.load(port, self.bodies, 1, self.budget.http_peer_s)
        result["http_peer_c1_ms"] = peer.as_dict() | {"p50": peer.p50_ms, "p99": peer.p99_ms}
        _peer_ratio(result)

    def sections(self) -> list[str]:
        """The sections this run measures, in order."""
        names = ["kernels", "in_process"]
        if self.options.http:
            names += ["http_one_worker", "http_two_workers", "http_peer"]
        return names


#: Which section measures each gated figure, so a regression can be measured again.
_SECTION_OF = {
    "ratio_kernels_vs_polars": ("kernels",),
    "kernels_per_calibration": ("kernels",),
    "pipeline_per_calibration": ("in_process",),
    "ratio_ort_vs_xgboost_routed": ("in_process",),
    "ort_per_calibration": ("in_process",),
    "http_batch32_c1_ms_p50": ("http_one_worker",),
    "http_batch32_c8_workers2_rps": ("http_two_workers",),
    "ratio_vs_previous_design": ("http_one_worker", "http_peer"),
}


def _record_yardstick(result: dict[str, Any], section: str, yardstick: Sample) -> None:
    result.setdefault("calibration_us", {})[section] = yardstick.summary()
    result["calibration_version"] = calibration.VERSION


def _peer_ratio(result: dict[str, Any]) -> None:
    ours, peer = result.get("http_batch32_c1_ms"), result.get("http_peer_c1_ms")
    if ours and peer:
        result["ratio_vs_previous_design"] = round(peer["p50"] / ours["p50"], 1)


def confirm(
    suite: Any, result: dict[str, Any], failures: list[str], history: list[dict[str, Any]]
) -> tuple[list[str], dict[str, Any]]:
    """Measure every section behind a failure again; keep the failures that recur.

    A shared machine has slow minutes; a real regression survives a second measurement.
    """
    keys = {failure.split(" ")[0] for failure in failures}
    again = [name for name in suite.sections() if any(name in _SECTION_OF[k] for k in keys)]
    _say(f"gate: {len(failures)} regression(s); measuring {', '.join(again)} again …")
    second = dict(result)
    for name in again:
        getattr(suite, name)(second)
    recurring = [
        failure for failure in report.gate(second, history) if failure.split(" ")[0] in keys
    ]
    retried = {
        "first_failures": failures,
        "sections": again,
        "second": report.history_line(second),
    }
    return recurring, retried


def run(options: Options) -> tuple[dict[str, Any], list[str]]:
    """Run the suite and return the report and the gate's failures (empty: pass)."""
    suite = _Suite(options)
    began = time.perf_counter()
    result = base_report("quick" if options.quick else "full")
    result["models"] = str(suite.models_dir)
    for name in suite.sections():
        getattr(suite, name)(result)
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["targets"] = [target.as_dict() for target in report.targets(result)]

    history = report.read_history(options.history_path)
    failures = report.gate(result, history)
    retried = None
    if failures:
        failures, retried = confirm(suite, result, failures, history)
    baselines = report.baselines(report.history_line(result), history)
    result["gate"] = {
        "failures": failures,
        "retried": retried,
        "baselines": {
            key: {"value": value, "commits": commits} for key, (value, commits) in baselines.items()
        },
        "baseline_runs": report.BASELINE_RUNS,
        "ratio_floors": report.RATIO_FLOORS,
        "regression_tolerance": report.REGRESSION_TOLERANCE,
    }
    result["seconds"] = round(time.perf_counter() - began, 1)
    record = options.record if options.record is not None else result["branch"] == "main"
    if record:
        report.append_history(result, options.history_path)
    result["recorded"] = record
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result, failures


def base_report(mode: str) -> dict[str, Any]:
    """Provenance of a run: mode, time, commit, machine (the history's and gate's keys)."""
    return {
        "schema": 1,
        "mode": mode,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **report.commit_info(),
        "machine": report.machine_info(),
    }


def record_kernels(result: dict[str, Any], kernels: inprocess.KernelResult) -> None:
    """Put the feature-pass timings, their agreement and ratios into the report."""
    result["kernels_us"] = {
        name: sample.summary() for name, sample in kernels.samples.items() if name != "calibration"
    }
    result["kernels_max_rel_diff"] = {
        "polars": kernels.max_rel_diff_polars,
        "reference": kernels.max_rel_diff_reference,
    }
    result["ratio_kernels_vs_polars"] = round(kernels.ratio_vs_polars, 2)
    result["ratio_kernels_vs_reference"] = round(kernels.ratio_vs_reference, 2)
    _record_yardstick(result, "kernels", kernels.samples["calibration"])
    result["kernels_per_calibration"] = round(kernels.per_calibration, 3)


async def _in_process(
    settings: Settings, budget: Budget, with_peer: bool
) -> tuple[inprocess.PipelineResult, list[Any]]:
    pipeline = inprocess.Pipeline(settings)
    await pipeline.start()
    routed = await pipeline.routed_rows()
    if not routed:
        raise RuntimeError("the benchmark batch reached no model: check the model repository")
    if len({model.label for model, _ in routed}) > 1 and with_peer:
        raise RuntimeError(
            "the batch routes to several models; the peer reproduces a one-model server: "
            "run with --no-peer or a repository with one model for these orders"
        )
    peer_model = routed[0][0].path if with_peer else None
    result = await inprocess.bench_pipeline(
        pipeline,
        routed,
        budget.pipeline_rounds,
        budget.section_cap_s,
        peer_model,
        budget.peer_rounds,
    )
    await pipeline.service.stop()
    return result, routed


def _record_pipeline(result: dict[str, Any], pipeline: inprocess.PipelineResult) -> None:
    result["routed_models"] = pipeline.routed_models
    result["routed_rows"] = pipeline.routed_rows
    result["pipeline_batch32_us"] = pipeline.warm.summary()
    result["pipeline_batch32_cold_us"] = pipeline.cold.summary()
    result["pipeline_batch32_cached_us"] = pipeline.cached.summary()
    result["pipeline_stages_us"] = pipeline.stages_us
    result["ort_beside_pipeline_us"] = pipeline.ort_routed.summary()
    result["pipeline_overhead_vs_ort"] = round(pipeline.overhead_vs_ort, 3)
    _record_yardstick(result, "in_process", pipeline.yardstick)
    result["pipeline_per_calibration"] = round(pipeline.per_calibration, 3)
    result["ort_per_calibration"] = round(pipeline.ort_per_calibration, 3)
    if pipeline.peer is not None:
        result["peer"] = {
            "in_process_us": pipeline.peer.summary(),
            "max_abs_diff_win_probability": pipeline.peer_max_abs_diff,
        }
        result["ratio_vs_previous_design_in_process"] = pipeline.extra[
            "ratio_vs_previous_design_in_process"
        ]
    result["pipeline_extra"] = {
        key: value for key, value in pipeline.extra.items() if not key.startswith("ratio_")
    }


def _record_inference(result: dict[str, Any], inference: inprocess.InferenceResult) -> None:
    result["inference_us"] = {
        "routed": {name: sample.summary() for name, sample in inference.routed.items()},
        "routed_rows": inference.routed_rows,
        "routed_max_abs_diff": inference.routed_max_abs_diff,
        "reference": {
            str(batch): {
                **{name: sample.summary() for name, sample in pair.items()},
                "ratio": round(inference.ratio_at(batch), 2),
            }
            for batch, pair in inference.reference.items()
        },
        "reference_max_abs_diff": inference.reference_max_abs_diff,
    }
    result["ratio_ort_vs_xgboost_routed"] = round(inference.ratio_routed, 2)


def chart(path: Path, history_path: Path = report.HISTORY_FILE) -> int:
    """Draw the history; returns how many runs were drawn."""
    return report.draw_chart(report.read_history(history_path), path)


def main(options: Options, chart_path: Path | None = None) -> int:
    """What ``magic8 bench`` does; returns the exit status.

    ``--chart`` alone draws the history and exits; with ``--quick`` or ``--json`` the suite
    runs first and the chart includes this run when it was recorded.
    """
    if chart_path is not None and not options.quick and options.json_path is None:
        count = chart(chart_path, options.history_path)
        _say(f"wrote {chart_path}: {count} runs")
        return 0
    result, failures = run(options)
    _say("")
    _say(report.render_table(result))
    if options.json_path is not None:
        _say(f"\nwrote {options.json_path}")
    if chart_path is not None:
        count = chart(chart_path, options.history_path)
        _say(f"wrote {chart_path}: {count} runs")
    return 1 if failures and options.gate else 0
