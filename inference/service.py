"""Build the serving stack from settings: providers, models, caches, warm-up and readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernels.registry import STRATEGIES, FeatureRegistry
from kernels.warmup import compile_all
from providers.base import MarketDataProvider
from providers.synthetic import SyntheticProvider

from .cache import TTLCache
from .config import ConfigError, Settings
from .market import CircuitBreaker, MarketData, ProviderSlot
from .pipeline import Predictor
from .repository import ModelSet, load_repository
from .schema import Order

log = logging.getLogger(__name__)


def make_provider(name: str, settings: Settings) -> tuple[MarketDataProvider, float]:
    """Create the provider called ``name`` and return it with its staleness limit.

    Raises:
        ConfigError: the provider is unknown or not available in this build.
    """
    source = settings.data_source
    if name == "synthetic":
        symbols = (*settings.prediction.features.universe, "VIX")
        provider = SyntheticProvider(seed=source.synthetic.seed, symbols=symbols)
        return provider, source.synthetic.max_staleness_s
    raise ConfigError(
        f"data_source: provider {name!r} is not available in this build; use 'synthetic'"
    )


def make_registry(settings: Settings) -> FeatureRegistry:
    """The feature registry the configuration describes."""
    features = settings.prediction.features
    return FeatureRegistry(features.universe, vix_bounds=features.vix_regime_thresholds)


@dataclass(eq=False)
class Service:
    """Everything one worker serves with, and its readiness.

    Attributes:
        settings: The loaded configuration.
        predictor: The data plane.
        started: Monotonic time the process began building the service.
        ready: True once models are loaded and warmed and kernels compiled; False again
            while shutting down.
    """

    settings: Settings
    predictor: Predictor
    started: float
    started_at: datetime
    ready: bool = False
    warmup_seconds: dict[str, float] = field(default_factory=dict)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        """Start providers, compile kernels, warm the pipeline end to end, then turn ready."""
        await self.predictor.market.start()
        self.warmup_seconds["kernels"] = await asyncio.to_thread(compile_all)
        mark = time.perf_counter()
        await warm_pipeline(self.predictor)
        self.warmup_seconds["pipeline"] = time.perf_counter() - mark
        self.ready = True
        log.info(
            "ready",
            extra={
                "seconds": round(time.monotonic() - self.started, 3),
                "models": [model.label for model in self.predictor.models.models],
            },
        )

    async def stop(self) -> None:
        """Turn not-ready first, then release providers."""
        self.ready = False
        await self.predictor.market.close()

    async def reload(self, repository: Path | None = None) -> ModelSet:
        """Load, verify and warm a candidate repository, then swap it in (SPEC §5.4).

        Raises:
            ModelLoadError: the candidate failed a step; the serving set is unchanged.
        """
        async with self._reload_lock:
            path = repository or self.predictor.models.repository
            registry = self.predictor.registry
            candidate = await asyncio.to_thread(load_repository, path, registry, True)
            self.predictor.swap_models(candidate)
            log.info("models reloaded", extra={"models": [m.label for m in candidate.models]})
            return candidate

    def health(self) -> dict[str, Any]:
        """The human summary of ``GET /health``."""
        predictor = self.predictor
        return {
            "status": "ready" if self.ready else "starting",
            "environment": self.settings.system.environment,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "started_at": self.started_at.isoformat(),
            "models": [
                {
                    "name": model.manifest.name,
                    "version": model.manifest.version,
                    "kind": model.manifest.kind,
                    "sha256": model.manifest.onnx_sha256[:12],
                }
                for model in predictor.models.models
            ],
            "providers": predictor.market.health(),
            "caches": {
                cache.name: {"size": len(cache), "hits": cache.hits, "misses": cache.misses}
                for cache in (
                    predictor.market.cache,
                    predictor.features.cache,
                    predictor.prediction_cache,
                )
            },
            "warmup_seconds": {k: round(v, 3) for k, v in self.warmup_seconds.items()},
        }


def build_service(settings: Settings) -> Service:
    """Assemble the service: load and verify models, create providers and caches.

    Raises:
        ConfigError: a provider cannot be created.
        ModelLoadError: the model repository cannot be served.
    """
    started = time.monotonic()
    registry = make_registry(settings)
    models = load_repository(Path(settings.prediction.models_dir), registry, warm=True)
    cache = settings.performance.cache
    slots = []
    for name in (settings.data_source.primary, *settings.data_source.fallback):
        provider, staleness = make_provider(name, settings)
        slots.append(ProviderSlot(provider, staleness, CircuitBreaker()))
    market = MarketData(
        slots,
        TTLCache("market_data", cache.max_size, cache.market_data_ttl, cache.enabled),
        history_bars=settings.data_source.history_bars,
        on_stale=settings.data_source.on_stale,
    )
    predictor = Predictor(
        models,
        market,
        registry,
        max_batch_size=settings.performance.batch_predictions.max_batch_size,
        feature_cache=TTLCache("features", cache.max_size, cache.feature_ttl, cache.enabled),
        prediction_cache=TTLCache(
            "predictions", cache.max_size, cache.prediction_ttl, cache.enabled
        ),
    )
    return Service(
        settings=settings, predictor=predictor, started=started, started_at=datetime.now(UTC)
    )


async def warm_pipeline(predictor: Predictor) -> None:
    """Send one order of every routed strategy through the whole pipeline, bypassing caches.

    This runs each kernel, the gather and every onnxruntime session once with real shapes,
    so the first client request is as fast as the steady state.
    """
    orders = [
        Order(strategy=strategy, symbol=symbol, premium=1.0, predicted_price=100.0)
        for symbol in predictor.registry.universe
        for strategy in STRATEGIES
    ]
    cache = predictor.prediction_cache
    enabled, cache.enabled = cache.enabled, False
    try:
        await predictor.predict_batch(orders[: predictor.max_batch_size])
    finally:
        cache.enabled = enabled
