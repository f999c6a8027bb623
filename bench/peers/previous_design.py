"""The previous design's batch server, reproduced to be timed beside ours (SPEC §1, §8).

What it reproduces, from ``shared/seeds/batch-endpoint-integration.md`` and
``shared/seeds/realtime-integration-plan.md``:

* A FastAPI app with pydantic models (``PredictionRequest``, ``BatchPredictionRequest``,
  ``PredictionResponse``, ``BatchPredictionResponse``); FastAPI validates the body and encodes
  the response model as JSON. ``POST /predict/batch`` is an ``async def`` endpoint.
* The batch endpoint loops over the orders in Python and calls ``Magic8Predictor.predict_order``
  for each one, which awaits ``RealTimeFeatureGenerator.generate_features(symbol, order)``:
  temporal features from a pandas ``Timestamp``, price features from a pandas DataFrame of
  bars (``rolling(20).mean()``, ``pct_change().rolling(20).std()``, Wilder RSI through
  ``ewm``, the 20-bar high/low range), VIX features, trade features as a dict;
  ``_align_with_training_features`` orders the dict as the booster expects; the model is an
  ``XGBClassifier`` called with ``predict_proba([features])``, one row per order.
* ``share_market_data``: bars are fetched once per symbol per batch ("1-8 market data fetches
  (shared by symbol)") and kept as DataFrames in the market-data cache (300 s TTL).

What it deliberately leaves out, so that it scores the same orders with the same booster and
its answers can be checked against ours: the defects the SPEC preamble lists (31-column
truncation, the 10-order cut, the strategy-blind feature cache, the server-local clock, fake
fallback prices, the old RSI/momentum/volatility variants). Features follow SPEC §4. The
booster reads every universe symbol, so each order computes each symbol the booster names,
the same way. Market data comes from the embedded simulator in process, where the old design
fetched it over HTTP from Magic8-Companion — an advantage for the peer. xgboost runs one
thread, as onnxruntime does on our side.

Run it: ``python -m bench.peers.previous_design --model models/demo/v1 --port 8100``.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import xgboost
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from convert.manifest import Manifest
from kernels.registry import DEFAULT_UNIVERSE, MARKET_INDICATORS
from providers.calendar import last_completed_bar_start
from providers.synthetic import SyntheticProvider

NEW_YORK = "America/New_York"
BAR = pd.Timedelta(minutes=5)
MARKET_DATA_TTL_S = 300.0
_STRATEGIES = {"butterfly": "Butterfly", "ironcondor": "Iron Condor", "sonar": "Sonar"}
_STRATEGIES["vertical"] = "Vertical"
_STRIKE_COUNTS = {"Butterfly": 3, "Iron Condor": 4, "Sonar": 4, "Vertical": 2}
_BAR_COLUMNS = ("start", "open", "high", "low", "close", "volume")


class PredictionRequest(BaseModel):
    """One order, as the previous API accepted it."""

    model_config = ConfigDict(extra="ignore")

    strategy: str
    symbol: str
    premium: float
    predicted_price: float
    strikes: list[float] | None = None
    action: str | None = None
    option_type: str | None = None
    quantity: int = 1
    timestamp: datetime | None = None
    risk: float | None = None
    reward: float | None = None
    price: float | None = None
    short_term: float | None = None
    long_term: float | None = None
    expected_move: float | None = None
    low: float | None = None
    high: float | None = None
    target1: float | None = None
    target2: float | None = None
    bid1: float | None = None
    bid2: float | None = None
    bid3: float | None = None
    bid4: float | None = None
    ask1: float | None = None
    ask2: float | None = None
    ask3: float | None = None
    ask4: float | None = None


class BatchPredictionRequest(BaseModel):
    """``{"requests": [...], "share_market_data": true}``."""

    requests: list[PredictionRequest]
    share_market_data: bool = True


class PredictionResponse(BaseModel):
    """The seven legacy fields plus the probabilities the real-time plan returned."""

    timestamp: datetime
    symbol: str
    strategy: str
    win_probability: float
    prediction: str
    data_source: str
    n_features: int
    loss_probability: float
    confidence: float


class BatchPredictionResponse(BaseModel):
    """Predictions and the batch's cache counts."""

    predictions: list[PredictionResponse]
    batch_metrics: dict[str, float]


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


class RealTimeFeatureGenerator:
    """Per-order features from pandas bars, as the previous generator computed them."""

    def __init__(self, universe: tuple[str, ...], vix_bounds: tuple[float, float, float]) -> None:
        self.universe = universe
        self.vix_bounds = vix_bounds

    async def generate_features(
        self, order: PredictionRequest, when: datetime, bars: dict[str, pd.DataFrame]
    ) -> dict[str, float]:
        """Compute every feature of one order from the batch's bars."""
        features = self._temporal_features(when)
        cutoff = pd.Timestamp(when) - BAR
        for symbol in self.universe:
            frame = bars.get(symbol)
            if frame is not None:
                features.update(self._price_features(symbol, frame[frame["start"] <= cutoff]))
        vix = bars.get("VIX")
        if vix is not None:
            features.update(self._vix_features(vix[vix["start"] <= cutoff]))
        own = features.get(f"{order.symbol.upper()}_close", math.nan)
        features.update(self._trade_features(order, own))
        return features

    @staticmethod
    def _temporal_features(when: datetime) -> dict[str, float]:
        local = pd.Timestamp(when).tz_convert(NEW_YORK)
        minutes = local.hour * 60 + local.minute
        is_open = local.day_of_week < 5 and 570 <= minutes < 960
        return {
            "hour": float(local.hour),
            "minute": float(local.minute),
            "day_of_week": float(local.day_of_week),
            "hour_sin": math.sin(2 * math.pi * local.hour / 24),
            "hour_cos": math.cos(2 * math.pi * local.hour / 24),
            "is_market_open": float(is_open),
            "is_open_30min": float(is_open and minutes < 600),
            "is_close_30min": float(is_open and minutes >= 930),
            "minutes_to_close": float(960 - minutes) if is_open else 0.0,
        }

    @staticmethod
    def _price_features(symbol: str, frame: pd.DataFrame) -> dict[str, float]:
        close = frame["close"]
        count = len(close)
        values = dict.fromkeys(MARKET_INDICATORS, math.nan)
        if count:
            values["close"] = float(close.iloc[-1])
        if count >= 20:
            values["sma_20"] = float(close.rolling(20).mean().iloc[-1])
            window = frame.iloc[-20:]
            lowest, highest = window["low"].min(), window["high"].max()
            values["price_position"] = _ratio(values["close"] - lowest, highest - lowest)
        if count > 5:
            values["momentum_5"] = _ratio(float(close.iloc[-1]), float(close.iloc[-6])) - 1
        if count > 20:
            values["volatility_20"] = float(close.pct_change().rolling(20).std().iloc[-1])
        if count >= 15:
            delta = close.iloc[-100:].diff().iloc[1:]
            gain = delta.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
            loss = (-delta).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean().iloc[-1]
            values["rsi"] = 100.0 if loss == 0 else float(100 - 100 / (1 + gain / loss))
        return {
            f"{symbol}_{name}": value if math.isfinite(value) else math.nan
            for name, value in values.items()
        }

    def _vix_features(self, frame: pd.DataFrame) -> dict[str, float]:
        close = frame["close"]
        values = {"vix": math.nan, "vix_sma_20": math.nan, "vix_change": math.nan}
        if len(close):
            vix = float(close.iloc[-1])
            low, normal, elevated = self.vix_bounds
            values.update(
                vix=vix,
                vix_regime_low=float(vix < low),
                vix_regime_normal=float(low <= vix < normal),
                vix_regime_elevated=float(normal <= vix < elevated),
                vix_regime_high=float(vix >= elevated),
            )
        if len(close) >= 20:
            values["vix_sma_20"] = float(close.rolling(20).mean().iloc[-1])
        if len(close) >= 2:
            values["vix_change"] = _ratio(float(close.iloc[-1]), float(close.iloc[-2])) - 1
        return values

    @staticmethod
    def _trade_features(order: PredictionRequest, last_close: float) -> dict[str, float]:
        strategy = _STRATEGIES[order.strategy.replace("_", "").replace(" ", "").lower()]
        strikes = sorted(order.strikes or [])
        premium, quantity = order.premium, order.quantity
        action = (order.action or ("BUY" if strategy == "Butterfly" else "SELL")).upper()
        price = order.price if order.price is not None else last_close
        fits = len(strikes) == _STRIKE_COUNTS[strategy]
        legs, width, risk, reward = [math.nan] * 4, math.nan, math.nan, math.nan
        if fits:
            if strategy == "Butterfly":
                legs = [strikes[0], strikes[1], strikes[1], strikes[2]]
                loss_width, width = strikes[1] - strikes[0], strikes[2] - strikes[0]
            elif strategy == "Vertical":
                legs = [strikes[0], strikes[1], math.nan, math.nan]
                loss_width = width = strikes[1] - strikes[0]
            else:
                legs = list(strikes)
                loss_width = max(strikes[1] - strikes[0], strikes[3] - strikes[2])
                width = strikes[3] - strikes[0]
            credit = premium * 100 * quantity
            spread = (loss_width - premium) * 100 * quantity
            max_loss, reward = (credit, spread) if action == "BUY" else (spread, credit)
            risk = -abs(max_loss)
        if order.risk is not None:
            risk = -abs(order.risk)
        if order.reward is not None:
            reward = order.reward
        short, long_ = _nan_if_none(order.short_term), _nan_if_none(order.long_term)
        aligned = math.nan
        if not (math.isnan(short) or math.isnan(long_) or math.isnan(price)):
            same_side = (short > price and long_ > price) or (short < price and long_ < price)
            aligned = float(same_side)
        features = {
            **{f"strategy_{name}": float(name == strategy) for name in _STRIKE_COUNTS},
            "premium": premium,
            "risk": risk,
            "reward": reward,
            "risk_reward_ratio": _ratio(reward, abs(risk)),
            "price": price,
            "premium_normalized": _ratio(premium, price),
            "predicted": order.predicted_price,
            "pred_difference": order.predicted_price - price,
            **{f"strike{k + 1}": legs[k] for k in range(4)},
            "strike_width": width,
            "strike_width_normalized": _ratio(width, price),
            "short_term": short,
            "long_term": long_,
            "has_delta_data": 0.0 if math.isnan(short) and math.isnan(long_) else 1.0,
            "short_long_spread": short - long_,
            "predicted_vs_short": order.predicted_price - short,
            "predicted_vs_long": order.predicted_price - long_,
            "price_vs_short": _ratio(price - short, price) * 100,
            "price_vs_long": _ratio(price - long_, price) * 100,
            "delta_convergence": abs(short - long_),
            "predictions_aligned": aligned,
        }
        for name in ("expected_move", "low", "high", "target1", "target2"):
            features[name] = _nan_if_none(getattr(order, name))
        for leg in range(1, 5):
            features[f"bid{leg}"] = _nan_if_none(getattr(order, f"bid{leg}"))
            features[f"ask{leg}"] = _nan_if_none(getattr(order, f"ask{leg}"))
        return {
            name: float(value) if math.isfinite(value) else math.nan
            for name, value in features.items()
        }


class Magic8Predictor:
    """One booster, its feature list and thresholds; features and a prediction per order."""

    def __init__(self, model_dir: Path, seed: int = 8) -> None:
        manifest = msgspec.json.decode((model_dir / "manifest.json").read_bytes(), type=Manifest)
        self.feature_names = list(manifest.features)
        self.thresholds = dict(manifest.thresholds)
        self.model = xgboost.XGBClassifier(n_jobs=1)
        self.model.load_model(_booster_file(model_dir, manifest))
        self.model.get_booster().set_param({"nthread": 1})
        universe = tuple(
            symbol
            for symbol in DEFAULT_UNIVERSE
            if any(name.startswith(f"{symbol}_") for name in self.feature_names)
        )
        self.feature_generator = RealTimeFeatureGenerator(universe, (15.0, 20.0, 25.0))
        self.data_provider = SyntheticProvider(seed=seed, symbols=(*DEFAULT_UNIVERSE, "VIX"))
        self.market_cache: dict[tuple[str, datetime], tuple[float, pd.DataFrame]] = {}
        self.hits = 0
        self.misses = 0

    def get_price_data(self, symbol: str, as_of: datetime, bars: int = 100) -> pd.DataFrame:
        """Bars of ``symbol`` as a DataFrame, from the market-data cache when fresh."""
        key = (symbol, last_completed_bar_start(as_of))
        cached = self.market_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self.hits += 1
            return cached[1]
        self.misses += 1
        snapshot = self.data_provider.snapshot_sync(symbol, as_of, bars).bars
        # The old provider handed over rows of {time, open, high, low, close, volume}; a
        # frame of columns is the cheaper equivalent (and needs no pyarrow).
        frame = pd.DataFrame({name: snapshot.get_column(name).to_numpy() for name in _BAR_COLUMNS})
        frame["start"] = frame["start"].dt.tz_localize("UTC")
        self.market_cache[key] = (time.monotonic() + MARKET_DATA_TTL_S, frame)
        return frame

    async def predict_order(
        self, order: PredictionRequest, when: datetime, bars: dict[str, pd.DataFrame]
    ) -> PredictionResponse:
        """Predict win/loss probability for one Magic8 order."""
        features = await self.feature_generator.generate_features(order, when, bars)
        aligned = [features.get(name, math.nan) for name in self.feature_names]
        probability = float(self.model.predict_proba(np.array([aligned]))[0][1])
        strategy = _STRATEGIES[order.strategy.replace("_", "").replace(" ", "").lower()]
        threshold = self.thresholds.get(strategy, self.thresholds["default"])
        return PredictionResponse(
            timestamp=datetime.now(UTC),
            symbol=order.symbol.upper(),
            strategy=strategy,
            win_probability=probability,
            prediction="WIN" if probability >= threshold else "LOSS",
            data_source=self.data_provider.name,
            n_features=len(self.feature_names),
            loss_probability=1.0 - probability,
            confidence=abs(probability - 0.5) * 2,
        )

    async def predict_batch(self, request: BatchPredictionRequest) -> BatchPredictionResponse:
        """Share market data per symbol across the batch, then predict order by order."""
        started = time.perf_counter()
        hits, misses = self.hits, self.misses
        now = datetime.now(UTC)
        times = [_decision_time(order, now) for order in request.requests]
        as_of = min(times, default=now)
        symbols = [*self.feature_generator.universe, "VIX"]
        shared = {symbol: self.get_price_data(symbol, as_of) for symbol in symbols}
        predictions = []
        for order, when in zip(request.requests, times, strict=True):
            bars = (
                shared
                if request.share_market_data
                else {symbol: self.get_price_data(symbol, when) for symbol in symbols}
            )
            predictions.append(await self.predict_order(order, when, bars))
        return BatchPredictionResponse(
            predictions=predictions,
            batch_metrics={
                "market_data_hits": self.hits - hits,
                "market_data_misses": self.misses - misses,
                "elapsed_ms": (time.perf_counter() - started) * 1e3,
            },
        )

    async def predict_batch_bytes(self, body: bytes) -> bytes:
        """Bytes in, bytes out, without the web framework (the in-process benchmark)."""
        request = BatchPredictionRequest.model_validate_json(body)
        response = await self.predict_batch(request)
        return response.model_dump_json().encode()


def _decision_time(order: PredictionRequest, now: datetime) -> datetime:
    return order.timestamp.astimezone(UTC) if order.timestamp is not None else now


def _booster_file(model_dir: Path, manifest: Manifest) -> Path:
    for candidate in (model_dir / manifest.source.file, model_dir / "booster.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{model_dir}: no booster file ({manifest.source.file} or booster.json) to load"
    )


def create_app(model_dir: Path, seed: int = 8) -> FastAPI:
    """The previous API: FastAPI, pydantic models, one async batch endpoint."""
    predictor = Magic8Predictor(model_dir, seed)
    app = FastAPI(title="magic8-accuracy-predictor (previous design, benchmark peer)")

    @app.post("/predict/batch", response_model=BatchPredictionResponse)
    async def predict_batch(request: BatchPredictionRequest) -> BatchPredictionResponse:
        return await predictor.predict_batch(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "model_loaded": True}

    return app


def main() -> None:
    """Serve the peer with uvicorn, one worker, on loopback."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model version folder")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--seed", type=int, default=8)
    arguments = parser.parse_args()
    uvicorn.run(
        create_app(arguments.model, arguments.seed),
        host="127.0.0.1",
        port=arguments.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
