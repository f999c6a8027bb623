"""Build the serving stack from settings: providers, models, caches, warm-up and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernels.registry import STRATEGIES, FeatureRegistry
from kernels.warmup import compile_all
from providers.base import MarketDataProvider
from providers.companion import CompanionProvider
from providers.ibkr import IBKRProvider
from providers.redis_provider import RedisProvider
from providers.replay import ReplayProvider
from providers.synthetic import SyntheticProvider

from .cache import TTLCache
from .config import ConfigError, Settings
from .errors import ModelLoadError
from .market import CircuitBreaker, MarketData, ProviderSlot
from .pipeline import Predictor
from .repository import ModelSet, load_repository
from .schema import Order

log = logging.getLogger(__name__)


#: Providers that answer from an in-memory mirror of a stream: their snapshots are not
#: cached by the chain, so a dead feed shows in the very next answer.
STREAMING_PROVIDERS = frozenset({"ibkr", "redis"})


def market_symbols(settings: Settings) -> tuple[str, ...]:
    """Every symbol the features can use: the configured universe plus VIX."""
    return tuple(dict.fromkeys((*settings.prediction.features.universe, "VIX")))


def redis_url(settings: Settings) -> str:
    """The Redis URL of ``data_source.redis`` (``url`` if set, else host, port and db)."""
    redis = settings.data_source.redis
    return redis.url or f"redis://{redis.host}:{redis.port}/{redis.db}"


def make_provider(
    name: str, settings: Settings, symbols: Sequence[str] | None = None
) -> tuple[MarketDataProvider, float]:
    """Create the provider called ``name`` and return it with its staleness limit.

    Args:
        name: Provider name (``synthetic``, ``replay``, ``ibkr``, ``redis``, ``companion``).
        settings: The configuration.
        symbols: Tickers to serve (default: the feature universe plus VIX).

    Raises:
        ConfigError: the provider is unknown, or disabled by its ``enabled: false``.
    """
    source = settings.data_source
    symbols = tuple(symbols) if symbols else market_symbols(settings)
    if name == "synthetic":
        provider = SyntheticProvider(seed=source.synthetic.seed, symbols=symbols)
        return provider, source.synthetic.max_staleness_s
    if name == "replay":
        return ReplayProvider(source.replay.path, symbols), source.replay.max_staleness_s
    section = {"ibkr": "standalone", "redis": "redis", "companion": "companion"}.get(name)
    if section is None:
        raise ConfigError(f"data_source: unknown provider {name!r}")
    if not getattr(source, section).enabled:
        raise ConfigError(
            f"data_source: provider {name!r} is listed but data_source.{section}.enabled is "
            f"false (set MAGIC8_PREDICTOR_DATA_SOURCE__{section.upper()}__ENABLED=true)"
        )
    if name == "ibkr":
        if settings.server.workers > 1:
            # IB refuses a second session with the same client id (error 326), and one
            # session per worker would multiply the pacing load: that is what the feed is for.
            raise ConfigError(
                f"data_source: ibkr with server.workers={settings.server.workers} would open "
                "one IB session per worker; run `magic8 feed --source ibkr` once and serve "
                "with MAGIC8_PREDICTOR_DATA_SOURCE=redis"
            )
        ib = source.standalone
        ibkr = IBKRProvider(
            ib.ib_host,
            ib.ib_port,
            ib.client_id,
            symbols,
            history_bars=source.history_bars,
            connect_timeout_s=ib.connect_timeout_s,
            request_timeout_s=ib.request_timeout_s,
            reconnect_backoff_s=ib.reconnect_backoff_s,
            reconnect_max_backoff_s=ib.reconnect_max_backoff_s,
            pacing_backoff_s=ib.pacing_backoff_s,
            quotes=ib.quotes,
        )
        return ibkr, ib.max_staleness_s
    if name == "redis":
        redis = source.redis
        mirror = RedisProvider(
            redis_url(settings),
            symbols,
            history_bars=source.history_bars,
            channel_template=redis.channels.price_data,
            heartbeat=redis.channels.heartbeat,
            heartbeat_timeout_s=redis.heartbeat_timeout_s,
            connect_timeout_s=redis.connect_timeout_s,
            reconnect_backoff_s=redis.reconnect_backoff_s,
            reconnect_max_backoff_s=redis.reconnect_max_backoff_s,
        )
        return mirror, redis.max_staleness_s
    companion = source.companion
    client = CompanionProvider(
        companion.base_url,
        timeout=companion.timeout,
        retry_attempts=companion.retry_attempts,
        retry_backoff_s=companion.retry_backoff_s,
    )
    return client, companion.max_staleness_s


def make_slot(name: str, settings: Settings) -> ProviderSlot:
    """Create the provider called ``name`` behind its circuit breaker.

    Raises:
        ConfigError: see :func:`make_provider`.
    """
    provider, staleness = make_provider(name, settings)
    circuit = settings.data_source.circuit
    return ProviderSlot(
        provider,
        staleness,
        CircuitBreaker(circuit.failure_threshold, circuit.cooldown_s),
        cache_ttl_s=0.0 if name in STREAMING_PROVIDERS else None,
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
    _signal_reloads: set[asyncio.Task[None]] = field(default_factory=set)
    _sighup_loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start providers, compile kernels, warm the pipeline end to end, then turn ready."""
        await self.predictor.market.start()
        self.warmup_seconds["kernels"] = await asyncio.to_thread(compile_all)
        mark = time.perf_counter()
        await warm_pipeline(self.predictor)
        self.warmup_seconds["pipeline"] = time.perf_counter() - mark
        self._install_sighup()
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
        if self._sighup_loop is not None:
            self._sighup_loop.remove_signal_handler(signal.SIGHUP)
            self._sighup_loop = None
        await self.predictor.market.close()

    async def reload(self, repository: Path | None = None) -> ModelSet:
        """Load, verify and warm a candidate repository, then swap it in (SPEC §5.4).

        The swap is one reference assignment: batches already routed finish on the old set,
        the next ones see the new one.

        Raises:
            ModelLoadError: the candidate failed a step; the serving set is unchanged (logged).
        """
        async with self._reload_lock:
            path = repository or self.predictor.models.repository
            registry = self.predictor.registry
            try:
                candidate = await asyncio.to_thread(load_repository, path, registry, True)
            except ModelLoadError as ex:
                serving = [model.label for model in self.predictor.models.models]
                log.error("reload refused", extra={"reason": str(ex), "serving": serving})
                raise
            self.predictor.swap_models(candidate)
            log.info("models reloaded", extra={"models": [m.label for m in candidate.models]})
            return candidate

    def _install_sighup(self) -> None:
        """Reload the models on SIGHUP, handled in this worker's event loop.

        Under uvicorn the process is the worker. Under gunicorn a SIGHUP sent to a worker
        reloads that worker in place; one sent to the master makes gunicorn start fresh
        workers, which load the repository at start-up (see README, "Models").
        """
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError) as ex:
            # No SIGHUP on this platform, or a loop outside the main thread (in-process clients).
            log.warning("SIGHUP reload unavailable", extra={"reason": str(ex)})
            return
        self._sighup_loop = loop

    def _reload_on_signal(self) -> None:
        """Start a reload from the signal handler; its outcome is logged."""
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        # The loop keeps only a weak reference to tasks; this set keeps it alive to the end.
        self._signal_reloads.add(task)
        task.add_done_callback(self._signal_reloads.discard)

    async def _reload_quietly(self) -> None:
        """Reload; a refused candidate is already logged by `reload`, nobody awaits the answer."""
        with contextlib.suppress(ModelLoadError):
            await self.reload()

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
    slots = [
        make_slot(name, settings)
        for name in (settings.data_source.primary, *settings.data_source.fallback)
    ]
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
