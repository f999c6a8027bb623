"""The yardstick: a fixed piece of Python work timed beside every in-process benchmark.

On a shared VM the same code measures 950 µs one hour and 1,900 µs the next; the CPU's
speed moves, not the code's. So the regression gate does not compare in-process medians
between runs; it compares *ratios* — each tracked thread-CPU median divided by this
workload's, timed in the same interleaved rounds of the same thread, so a slow or busy
machine moves both alike. Over 17 runs (idle, a busy neighbour core, a memory-bandwidth hog)
the pipeline's ratio stayed within 1.60–1.78 while its median moved 1,730–2,260 µs
(``bench/README.md``, which also says why HTTP is not measured against it).

The workload looks like the request path's interpreter work — validate a batch of order
dicts, sort strikes, build cache keys, look them up, format labels, a little float math —
but is none of our code, so it only changes when this file does. Never edit :func:`work`
without bumping :data:`VERSION`: the gate only compares runs of the same version.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .harness import Sample

#: Bumped whenever :func:`work` changes; ratios of different versions are not comparable.
VERSION = 1

_SYMBOLS = ("SPX", "SPY", "XSP", "NDX", "QQQ", "RUT", "AAPL", "TSLA")
_STRATEGIES = ("Butterfly", "Iron Condor", "Sonar", "Vertical")
_ORDERS: tuple[dict[str, Any], ...] = tuple(
    {
        "symbol": symbol,
        "strategy": strategy,
        "strikes": [100.0 + 5 * leg + index for leg in range(4)],
        "premium": 1.25 + index / 7,
        "price": 5000.0 + index,
        "minute": 600 + index,
    }
    for index, (symbol, strategy) in enumerate(
        (symbol, strategy) for symbol in _SYMBOLS for strategy in _STRATEGIES
    )
)


class _Row:
    __slots__ = ("key", "label", "ratio", "width")

    def __init__(self, key: tuple[Any, ...], width: float, ratio: float, label: str) -> None:
        self.key, self.width, self.ratio, self.label = key, width, ratio, label


def work(rounds: int = 6) -> float:
    """About a millisecond of interpreter-bound work on this machine class; returns a checksum."""
    cache: dict[tuple[Any, ...], _Row] = {}
    total = 0.0
    for step in range(rounds):
        rows = []
        for order in _ORDERS:
            strikes = sorted(order["strikes"], reverse=True)
            if not all(isinstance(strike, float) and math.isfinite(strike) for strike in strikes):
                raise ValueError("calibration orders are finite floats")
            premium = float(order["premium"]) + step * 0.01
            width = strikes[0] - strikes[-1]
            key = (order["symbol"], order["strategy"], tuple(strikes), round(premium, 2))
            row = cache.get(key)
            if row is None:
                label = f"{order['symbol']}:{order['strategy']}"
                row = cache[key] = _Row(key, width, premium / width, label)
            rows.append(row)
            total += math.log1p(row.ratio) * math.sqrt(order["price"])
        rows.sort(key=lambda row: (row.label, row.ratio))
        total += sum(len(row.label) for row in rows)
    return total


def per_unit(sample: Sample, yardstick: Sample) -> float:
    """``sample``'s median CPU time in units of the yardstick's (wall time when no CPU time)."""
    numerator = statistics.median(sample.cpu_us) if sample.cpu_us else sample.p50
    denominator = statistics.median(yardstick.cpu_us) if yardstick.cpu_us else yardstick.p50
    return numerator / denominator if denominator > 0 else math.inf
