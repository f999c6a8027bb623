"""The workload every benchmark shares: the bot's 32-order batch and the reference booster.

The batch is what DiscordTrading sends every five minutes (SPEC §1): 8 symbols × 4 strategies,
strikes laid around each symbol's simulated price at one decision time, so every order is
scored. Variants differ only in their premiums, so a ring of them misses the prediction cache
the way consecutive five-minute batches do, while market data and feature blocks stay warm.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from kernels.registry import DEFAULT_UNIVERSE, STRATEGIES
from providers.synthetic import SyntheticProvider

#: A Tuesday 11:07:30 New York: the market is open and three sessions of history exist.
DECISION_TIME = datetime(2025, 3, 4, 16, 7, 30, tzinfo=UTC)
SYMBOLS: tuple[str, ...] = DEFAULT_UNIVERSE
#: The simulator seed of the default configuration (``data_source.synthetic.seed``).
SEED = 8
HISTORY_BARS = 100

#: Reference booster of SPEC §8's inference benchmark.
REFERENCE_TREES = 300
REFERENCE_DEPTH = 6
REFERENCE_FEATURES = 85


@lru_cache(maxsize=4)
def prices(seed: int = SEED) -> dict[str, float]:
    """Latest simulated close of every symbol at :data:`DECISION_TIME`."""
    provider = SyntheticProvider(seed=seed, symbols=(*SYMBOLS, "VIX"))
    return {
        symbol: provider.snapshot_sync(symbol, DECISION_TIME, 1).last_close for symbol in SYMBOLS
    }


def _strikes(strategy: str, price: float) -> list[float]:
    step = max(round(price / 1000, 2), 0.01)
    centre = round(price / step) * step
    offsets = {
        "Butterfly": (-10, 0, 10),
        "Iron Condor": (-30, -15, 15, 30),
        "Sonar": (-20, -8, 8, 20),
        "Vertical": (-20, -10),
    }[strategy]
    # Unsorted on purpose, as the seed's example sends them: the server sorts.
    return [round(centre + k * step, 2) for k in reversed(offsets)]


def batch_orders(variant: int = 0, seed: int = SEED) -> list[dict[str, Any]]:
    """The 32-order batch (8 symbols × 4 strategies); ``variant`` shifts every premium."""
    levels = prices(seed)
    orders = []
    for symbol in SYMBOLS:
        price = levels[symbol]
        step = price / 1000
        for strategy in STRATEGIES:
            base = {"Butterfly": 3.0, "Vertical": 1.1}.get(strategy, 2.0) * step
            orders.append(
                {
                    "symbol": symbol,
                    "strategy": strategy,
                    "premium": round(base + 0.01 * (variant + 1), 2),
                    "predicted_price": round(price * 1.002, 2),
                    "strikes": _strikes(strategy, price),
                    "action": "BUY" if strategy == "Butterfly" else "SELL",
                    "quantity": 1,
                    "timestamp": DECISION_TIME.isoformat(),
                }
            )
    return orders


def batch_body(variant: int = 0) -> bytes:
    """``POST /predict/batch`` body of one variant, as the bot sends it."""
    return msgspec.json.encode({"requests": batch_orders(variant), "share_market_data": True})


def body_ring(count: int) -> list[bytes]:
    """``count`` distinct batch bodies; cycling through them misses the prediction cache.

    Args:
        count: Ring length; choose it so ``32 × count`` exceeds the prediction cache size.
    """
    return [batch_body(variant) for variant in range(count)]


def ring_size(prediction_cache_size: int, batch: int = 32) -> int:
    """Smallest ring whose orders overflow an LRU cache of ``prediction_cache_size``, plus slack."""
    return prediction_cache_size // batch + 8


def cache_dir() -> Path:
    """Where built benchmark artefacts (the reference booster) are kept between runs."""
    root = Path(os.environ.get("MAGIC8_BENCH_CACHE", Path(tempfile.gettempdir()) / "magic8-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class ReferenceBooster:
    """The reference booster of SPEC §8 (300 trees, depth 6, 85 features) and its ONNX graph.

    Attributes:
        booster_path: XGBoost JSON model.
        onnx_bytes: The converted graph, as the converter writes it for serving.
        rows: Sample rows (float32, 10 % missing) to score at any batch size.
    """

    booster_path: Path
    onnx_bytes: bytes
    rows: np.ndarray


def reference_booster() -> ReferenceBooster:
    """Train (once, then load from :func:`cache_dir`) the reference booster and convert it."""
    import xgboost

    from convert.onnx_export import booster_to_onnx

    rng = np.random.default_rng(85)
    rows = rng.normal(size=(4_000, REFERENCE_FEATURES)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.1] = np.nan
    recipe = f"{xgboost.__version__}-{REFERENCE_TREES}-{REFERENCE_DEPTH}-{REFERENCE_FEATURES}-4k-32"
    tag = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    booster_path = cache_dir() / f"reference-{tag}.json"
    onnx_path = booster_path.with_suffix(".onnx")
    if not (booster_path.is_file() and onnx_path.is_file()):
        signal = np.nan_to_num(rows[:, :8]).sum(axis=1) + rng.normal(scale=2.0, size=len(rows))
        matrix = xgboost.DMatrix(rows, label=(signal > 0).astype(np.int8), missing=np.nan)
        booster = xgboost.train(
            {
                "objective": "binary:logistic",
                "max_depth": REFERENCE_DEPTH,
                "eta": 0.05,
                "tree_method": "hist",
                "seed": 85,
                "min_child_weight": 0,
                # 32 bins train in ~4 s instead of ~20 s and still grow ~110 of 127 nodes
                # per tree: the shape, not the accuracy, is what the benchmark needs.
                "max_bin": 32,
                "nthread": os.cpu_count() or 1,
            },
            matrix,
            num_boost_round=REFERENCE_TREES,
        )
        scratch = booster_path.with_suffix(".tmp.json")
        booster.save_model(scratch)
        onnx_path.with_suffix(".tmp").write_bytes(
            booster_to_onnx(booster, REFERENCE_FEATURES).SerializeToString()
        )
        onnx_path.with_suffix(".tmp").replace(onnx_path)
        scratch.replace(booster_path)
    return ReferenceBooster(booster_path, onnx_path.read_bytes(), rows[:1000].copy())
