"""The regression gate ``.ci/run`` relies on: ratio floors of the same run, history medians."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import feature_passes, inprocess, report, runner


def _run(machine_class: str = "x86-test-2cpu", **metrics: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "commit": "abc",
        "dirty": False,
        "created": "2026-01-01T00:00:00+00:00",
        "mode": "quick",
        "machine": {"class": machine_class},
        "pipeline_batch32_us": {"p50": 300.0, "p99": 600.0, "cpu_p50": 290.0},
        "http_batch32_c1_ms": {"p50": 0.9, "p99": 2.0},
        "http_batch32_c8_workers2_rps": 2000.0,
        "kernels_us": {"numba": {"p50": 100.0, "cpu_p50": 95.0}},
        "inference_us": {"routed": {"onnxruntime": {"p50": 80.0, "cpu_p50": 78.0}}},
        "ratio_vs_previous_design": 200.0,
        "ratio_kernels_vs_polars": 20.0,
        "ratio_ort_vs_xgboost_routed": 3.0,
    }
    result.update(metrics)
    return result


def test_a_run_like_the_last_one_passes() -> None:
    history = [report.history_line(_run())]
    slower = {"p50": 420.0, "p99": 700.0, "cpu_p50": 400.0}
    assert report.gate(_run(pipeline_batch32_us=slower), history) == []


def test_a_ratio_below_its_floor_fails_without_any_history() -> None:
    failures = report.gate(_run(ratio_kernels_vs_polars=3.0), [])
    assert len(failures) == 1
    assert "ratio_kernels_vs_polars" in failures[0]


def test_a_median_more_than_half_worse_than_the_last_run_fails() -> None:
    fast = {"p50": 100.0, "p99": 1.0, "cpu_p50": 100.0}
    history = [report.history_line(_run(pipeline_batch32_us=fast)), report.history_line(_run())]
    slow = {"p50": 451.0, "p99": 900.0, "cpu_p50": 440.0}
    failures = report.gate(_run(pipeline_batch32_us=slow), history)
    assert [failure.split(" ")[0] for failure in failures] == ["pipeline_batch32_cpu_us_p50"]


def test_lower_throughput_is_a_regression() -> None:
    history = [report.history_line(_run())]
    failures = report.gate(_run(http_batch32_c8_workers2_rps=1000.0), history)
    assert [failure.split(" ")[0] for failure in failures] == ["http_batch32_c8_workers2_rps"]


def test_only_runs_of_the_same_machine_class_are_compared() -> None:
    history = [report.history_line(_run(kernels_us={"numba": {"p50": 10.0, "cpu_p50": 10.0}}))]
    history.append(report.history_line(_run(machine_class="arm-other-8cpu")))
    assert report.gate(_run(machine_class="arm-other-8cpu"), history) == []
    assert report.gate(_run(), history) != []


class _Remeasured:
    """A suite whose second measurement of the kernels is healthy again."""

    def sections(self) -> list[str]:
        return ["kernels", "in_process"]

    def kernels(self, result: dict[str, Any]) -> None:
        result["ratio_kernels_vs_polars"] = 20.0

    def in_process(self, result: dict[str, Any]) -> None:
        raise AssertionError("only the section behind the failure is measured again")


def test_a_regression_that_does_not_recur_when_measured_again_passes() -> None:
    first = _run(ratio_kernels_vs_polars=3.0)
    failures = report.gate(first, [])
    recurring, retried = runner.confirm(_Remeasured(), first, failures, [])
    assert recurring == []
    assert retried["sections"] == ["kernels"]
    assert first["ratio_kernels_vs_polars"] == 3.0  # the first measurement is reported as is


def test_a_regression_that_recurs_when_measured_again_fails() -> None:
    first = _run(ratio_kernels_vs_polars=3.0)
    suite = _Remeasured()
    suite.kernels = lambda result: result.update(ratio_kernels_vs_polars=2.5)  # type: ignore[method-assign]
    recurring, _ = runner.confirm(suite, first, report.gate(first, []), [])
    assert [failure.split(" ")[0] for failure in recurring] == ["ratio_kernels_vs_polars"]


def test_history_round_trips_one_line_per_run(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    report.append_history(_run(), path)
    report.append_history(_run(commit="def"), path)
    runs = report.read_history(path)
    assert [run["commit"] for run in runs] == ["abc", "def"]
    assert len(path.read_text().splitlines()) == 2


@pytest.mark.slow
def test_a_deliberately_slowed_kernel_fails_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measure the feature pass, record it, slow the market kernel, measure again: both checks trip.

    The slowdown (20 ms of busy CPU per call, against a pass of a few milliseconds) dwarfs
    any noise, so this tests the gate, not the machine. It burns CPU rather than sleeping
    because the gate tracks in-process medians in CPU time.
    """
    healthy = runner.base_report("quick")
    runner.record_kernels(healthy, inprocess.bench_kernels(rounds=3, budget_s=5.0))
    history = [report.history_line(healthy)]

    real_market_block = feature_passes.market_block

    def slowed_market_block(*args: Any) -> np.ndarray:
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:
            pass
        result: np.ndarray = real_market_block(*args)
        return result

    monkeypatch.setattr(feature_passes, "market_block", slowed_market_block)
    slowed = runner.base_report("quick")
    runner.record_kernels(slowed, inprocess.bench_kernels(rounds=3, budget_s=5.0))
    failures = report.gate(slowed, history)
    assert any(failure.startswith("ratio_kernels_vs_polars") for failure in failures)
    assert any(failure.startswith("kernels_numba_cpu_us_p50") for failure in failures)
