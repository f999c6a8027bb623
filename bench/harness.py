"""Timing primitives: interleaved rounds, medians and percentiles, same-run ratios.

This machine class is shared and noisy: absolute times drift ±30 % between runs. Cases that
are compared are therefore timed in interleaved rounds (A, B, A, B …) in one process, so drift
hits both sides alike, and every comparison is reported as a ratio of medians of that run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """Durations of one case, in microseconds.

    Attributes:
        name: What was timed.
        times_us: Every timed call, in order (wall clock).
        cpu_us: The same calls in thread CPU time, when recorded: on a shared machine wall
            time includes waits for a core, CPU time does not.
    """

    name: str
    times_us: tuple[float, ...]
    cpu_us: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        """Number of timed calls."""
        return len(self.times_us)

    @property
    def p50(self) -> float:
        """Median."""
        return statistics.median(self.times_us)

    @property
    def p99(self) -> float:
        """99th percentile (nearest rank)."""
        return percentile(self.times_us, 99.0)

    @property
    def mean(self) -> float:
        """Arithmetic mean."""
        return statistics.fmean(self.times_us)

    def summary(self) -> dict[str, float]:
        """``{p50, p99, mean, n}`` (and ``cpu_p50`` when recorded) in microseconds."""
        result = {
            "p50": round(self.p50, 3),
            "p99": round(self.p99, 3),
            "mean": round(self.mean, 3),
            "n": self.n,
        }
        if self.cpu_us:
            result["cpu_p50"] = round(statistics.median(self.cpu_us), 3)
        return result


def percentile(values: tuple[float, ...] | list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(slow: Sample, fast: Sample) -> float:
    """How many times faster ``fast`` is than ``slow``: median over median."""
    return slow.p50 / fast.p50 if fast.p50 > 0 else math.inf


def interleave(
    cases: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    repeat: Mapping[str, int] | None = None,
    warmup: int = 3,
    budget_s: float | None = None,
) -> dict[str, Sample]:
    """Time several synchronous cases in interleaved rounds.

    Args:
        cases: Name → zero-argument callable.
        rounds: Rounds; each round calls every case ``repeat[name]`` times (default once).
        repeat: Calls per round for cheap cases, so a slow case does not starve them.
        warmup: Untimed rounds first (caches, branch predictors, lazy imports).
        budget_s: Stop early, after at least 3 rounds, once this much wall time has passed.

    Returns:
        Name → its :class:`Sample`.
    """
    repeat = repeat or {}
    for _ in range(warmup):
        for call in cases.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    started = time.perf_counter()
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    # The garbage collector stays on: a server pays for it too, and p99 should show it.
    for done in range(rounds):
        for name, call in cases.items():
            bucket, cpu_bucket = times[name], cpu[name]
            for _ in range(repeat.get(name, 1)):
                cpu_mark = cpu_clock()
                mark = clock()
                call()
                bucket.append((clock() - mark) / 1e3)
                cpu_bucket.append((cpu_clock() - cpu_mark) / 1e3)
        if budget_s is not None and done >= 2 and time.perf_counter() - started > budget_s:
            break
    return {name: Sample(name, tuple(times[name]), tuple(cpu[name])) for name in cases}


async def interleave_async(
    cases: Mapping[str, Callable[[], Awaitable[Any]]],
    rounds: int,
    *,
    repeat: Mapping[str, int] | None = None,
    warmup: int = 3,
    budget_s: float | None = None,
    after_each: Mapping[str, Callable[[], None]] | None = None,
) -> dict[str, Sample]:
    """Time coroutine cases in interleaved rounds inside the running event loop.

    Timing inside one coroutine keeps the event-loop start-up out of every sample; what a
    case awaits (tasks, gathers) is timed, as a server would pay it.

    Args:
        cases: Name → zero-argument coroutine function.
        rounds: Rounds, as in :func:`interleave`.
        repeat: Calls per round per case.
        warmup: Untimed rounds first.
        budget_s: Stop early, after at least 3 rounds, past this wall time.
        after_each: Name → untimed hook run after each call (e.g. to read stage times).

    Returns:
        Name → its :class:`Sample`.
    """
    repeat = repeat or {}
    after_each = after_each or {}
    for _ in range(warmup):
        for call in cases.values():
            await call()
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    started = time.perf_counter()
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for done in range(rounds):
        for name, call in cases.items():
            bucket, cpu_bucket = times[name], cpu[name]
            hook = after_each.get(name)
            for _ in range(repeat.get(name, 1)):
                cpu_mark = cpu_clock()
                mark = clock()
                await call()
                bucket.append((clock() - mark) / 1e3)
                cpu_bucket.append((cpu_clock() - cpu_mark) / 1e3)
                if hook is not None:
                    hook()
        if budget_s is not None and done >= 2 and time.perf_counter() - started > budget_s:
            break
    return {name: Sample(name, tuple(times[name]), tuple(cpu[name])) for name in cases}
