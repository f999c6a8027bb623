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
        "calibration_version": 1,
        "pipeline_per_calibration": 1.6,
        "kernels_per_calibration": 1.3,
        "ort_per_calibration": 0.34,
    }
    result.update(metrics)
    return result


def _failed(failures: list[str]) -> list[str]:
    return [failure.split(" ")[0] for failure in failures]


def test_a_run_like_the_last_one_passes() -> None:
    history = [report.history_line(_run())]
    assert report.gate(_run(pipeline_per_calibration=2.3), history) == []


def test_a_slower_machine_is_not_a_regression() -> None:
    """In-process medians twice as slow, the same in yardstick units: the machine, not the code."""
    history = [report.history_line(_run())]
    slower_machine = _run(
        pipeline_batch32_us={"p50": 600.0, "p99": 1200.0, "cpu_p50": 580.0},
        kernels_us={"numba": {"p50": 200.0, "cpu_p50": 190.0}},
        inference_us={"routed": {"onnxruntime": {"p50": 160.0, "cpu_p50": 156.0}}},
    )
    assert report.gate(slower_machine, history) == []


def test_a_ratio_below_its_floor_fails_without_any_history() -> None:
    failures = report.gate(_run(ratio_kernels_vs_polars=3.0), [])
    assert len(failures) == 1
    assert "ratio_kernels_vs_polars" in failures[0]


def test_a_figure_more_than_half_worse_than_its_baseline_fails() -> None:
    history = [report.history_line(_run(pipeline_per_calibration=0.5)), report.history_line(_run())]
    failures = report.gate(_run(pipeline_per_calibration=2.5), history)
    assert _failed(failures) == ["pipeline_per_calibration"]
    assert "worse than 1.05, the median of abc, abc" in failures[0]  # of 0.5 and 1.6


def test_one_lucky_run_does_not_set_the_bar() -> None:
    """The baseline is the median of the last three runs, so one fast outlier cannot fail CI."""
    runs = [_run(commit=name) for name in ("a", "b")] + [
        _run(commit="c", kernels_per_calibration=0.6)
    ]
    history = [report.history_line(run) for run in runs]
    assert report.gate(_run(kernels_per_calibration=1.5), history) == []
    # … while a real regression against the same history still fails.
    assert _failed(report.gate(_run(kernels_per_calibration=2.1), history)) == [
        "kernels_per_calibration"
    ]


def test_only_the_last_three_runs_make_the_baseline() -> None:
    old = [_run(commit=f"old{k}", ort_per_calibration=0.1) for k in range(5)]
    new = [_run(commit=f"new{k}") for k in range(3)]
    history = [report.history_line(run) for run in old + new]
    assert report.baselines(report.history_line(_run()), history)["ort_per_calibration"] == (
        0.34,
        ["new0", "new1", "new2"],
    )


def test_lower_throughput_is_a_regression() -> None:
    history = [report.history_line(_run())]
    failures = report.gate(_run(http_batch32_c8_workers2_rps=1000.0), history)
    assert _failed(failures) == ["http_batch32_c8_workers2_rps"]


def test_http_is_tracked_on_the_wall_clock() -> None:
    history = [report.history_line(_run())]
    failures = report.gate(_run(http_batch32_c1_ms={"p50": 1.5, "p99": 3.0}), history)
    assert _failed(failures) == ["http_batch32_c1_ms_p50"]


def test_only_runs_of_the_same_machine_class_are_compared() -> None:
    history = [report.history_line(_run(kernels_per_calibration=0.2))]
    history.append(report.history_line(_run(machine_class="arm-other-8cpu")))
    assert report.gate(_run(machine_class="arm-other-8cpu"), history) == []
    assert _failed(report.gate(_run(), history)) == ["kernels_per_calibration"]


def test_runs_of_another_yardstick_are_not_compared() -> None:
    """Editing the yardstick changes every ratio; earlier versions are not a baseline for them."""
    history = [report.history_line(_run(calibration_version=0, kernels_per_calibration=0.2))]
    assert report.gate(_run(), history) == []
    kept = report.baselines(report.history_line(_run()), history)
    assert sorted(kept) == ["http_batch32_c1_ms_p50", "http_batch32_c8_workers2_rps"]


def test_runs_recorded_before_the_yardstick_are_ignored() -> None:
    line = report.history_line(_run(kernels_us={"numba": {"p50": 10.0, "cpu_p50": 10.0}}))
    for key in report.TRACKED:
        if key.endswith("_per_calibration"):
            del line[key]
    del line["calibration_version"]
    assert report.gate(_run(), [line]) == []


def test_the_table_shows_every_tracked_figure_beside_its_baseline() -> None:
    history = [report.history_line(_run())]
    run = _run(http_batch32_c8_workers2_rps=1900.0)
    run["machine"] |= {"cpu": "Test CPU", "cores": 2}
    baselines = report.baselines(report.history_line(run), history)
    run["gate"] = {
        "failures": report.gate(run, history),
        "retried": None,
        "baselines": {key: {"value": v, "commits": c} for key, (v, c) in baselines.items()},
    }
    table = report.render_table(run)
    for key, expected in (
        ("pipeline_per_calibration", "1.6 / 1.6"),
        ("http_batch32_c1_ms_p50", "0.9 / 0.9"),
        ("http_batch32_c8_workers2_rps", "1900 / 2000"),
    ):
        row = next(text for text in table.splitlines() if text.strip().startswith(key))
        assert row.split(key)[1].split() == expected.split(), row
    assert "regression gate: pass" in table


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
    because the gate tracks in-process figures in CPU time, in units of the yardstick timed
    in the same rounds (which the slowdown must not touch).
    """
    healthy = runner.base_report("quick")
    runner.record_kernels(healthy, inprocess.bench_kernels(rounds=3, budget_s=5.0))
    history = [report.history_line(healthy)]

    from kernels.market import market_block as real_market_block

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
    assert any(failure.startswith("kernels_per_calibration") for failure in failures)
