"""One typed settings object: defaults, then ``config/config.yaml``, then ``MAGIC8_PREDICTOR_*``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "MAGIC8_PREDICTOR_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = Path("config") / "config.yaml"

#: The seed's flat environment variables (realtime-integration-plan.md §4.2) → nested setting path.
FLAT_ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "ENV": ("system", "environment"),
    "LOG_LEVEL": ("system", "log_level"),
    "DATA_SOURCE": ("data_source", "primary"),
    "DATA_FALLBACK": ("data_source", "fallback"),
    "MODEL_PATH": ("prediction", "models_dir"),
    "IB_HOST": ("data_source", "standalone", "ib_host"),
    "IB_PORT": ("data_source", "standalone", "ib_port"),
    "IB_CLIENT_ID": ("data_source", "standalone", "client_id"),
    "REDIS_HOST": ("data_source", "redis", "host"),
    "REDIS_PORT": ("data_source", "redis", "port"),
    "REDIS_DB": ("data_source", "redis", "db"),
    "REDIS_URL": ("data_source", "redis", "url"),
    "COMPANION_URL": ("data_source", "companion", "base_url"),
    "API_HOST": ("server", "host"),
    "API_PORT": ("server", "port"),
    "WORKERS": ("server", "workers"),
    "ADMIN_TOKEN": ("admin", "token"),
}

PROVIDER_NAMES = ("synthetic", "replay", "ibkr", "redis", "companion")


class Section(BaseModel):
    """Base of every config section: unknown keys are an error, docstrings document fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class SystemSettings(Section):
    """Process-wide switches."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Minimum level of the JSON log lines."""
    environment: Literal["production", "paper", "backtest", "development"] = "production"
    """Where this instance runs; reported by /health."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ServerSettings(Section):
    """Where and how the HTTP server listens."""

    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port."""
    workers: int = Field(default=1, ge=1, le=64)
    """Worker processes; more than one runs gunicorn with uvicorn workers."""
    limit_concurrency: int = Field(default=1000, ge=1)
    """Connections plus requests one worker holds before uvicorn itself refuses with a bare
    503; a backstop for connection floods, far above ``performance.max_in_flight``."""
    drain_s: float = Field(default=1.0, ge=0)
    """On SIGTERM: seconds readiness answers 503 and every response closes its connection
    while requests are still served, before the worker stops accepting."""
    graceful_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for in-flight requests after draining; then they are cancelled."""
    max_requests: int = Field(default=100_000, ge=0)
    """Requests a gunicorn worker serves before it is replaced (0: never)."""
    max_requests_jitter: int = Field(default=10_000, ge=0)
    """Random extra requests per worker, so workers are not all replaced at once."""


class SyntheticSettings(Section):
    """The embedded deterministic simulator."""

    seed: int = 8
    """Seed of the simulated market; the same seed always gives the same bars."""
    max_staleness_s: float = Field(default=600.0, gt=0)
    """Data older than this (on the exchange clock) is stale."""


class ReplaySettings(Section):
    """Bars replayed from files, one per symbol."""

    path: Path = Path("data/replay")
    """Folder holding ``{SYMBOL}.parquet`` or ``{SYMBOL}.csv``."""
    max_staleness_s: float = Field(default=600.0, gt=0)
    """Data older than this (on the exchange clock) is stale."""


class CompanionSettings(Section):
    """HTTP client of a Magic8-Companion style market-data service."""

    enabled: bool = True
    """Whether the provider may be used."""
    base_url: str = "http://localhost:8765"
    """Base URL of the service."""
    timeout: float = Field(default=5.0, gt=0)
    """Longest a snapshot waits for the service, retries included; then it is abandoned."""
    retry_attempts: int = Field(default=3, ge=0, le=10)
    """Retries after a failed request (connection error or 5xx), within ``timeout``."""
    retry_backoff_s: float = Field(default=0.1, ge=0)
    """Wait before the first retry; doubles per retry."""
    max_staleness_s: float = Field(default=600.0, gt=0)
    """Data older than this (on the exchange clock) is stale."""


class RedisChannels(Section):
    """Redis channel names; ``{symbol}`` is replaced by the ticker."""

    price_data: str = "market:prices:{symbol}"
    """Pub/sub channel of bar and quote updates."""
    vix_data: str = "market:vix"
    """Legacy VIX channel name from the seed (VIX is also published as a symbol)."""
    heartbeat: str = "market:heartbeat"
    """Channel and key of the feed's heartbeat."""


class RedisSettings(Section):
    """Bars and quotes published to Redis by ``magic8 feed``."""

    enabled: bool = True
    """Whether the provider may be used."""
    host: str = "localhost"
    """Redis host."""
    port: int = Field(default=6379, ge=1, le=65535)
    """Redis port."""
    db: int = Field(default=0, ge=0)
    """Redis database number."""
    url: str | None = None
    """``redis://host:port/db`` URL; overrides host, port and db when set."""
    channels: RedisChannels = RedisChannels()
    """Channel names."""
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)
    """A feed silent for longer than this is treated as down: its data is reported stale."""
    connect_timeout_s: float = Field(default=2.0, gt=0)
    """Limit on connecting; start-up waits at most this long for the first load."""
    reconnect_backoff_s: float = Field(default=0.5, gt=0)
    """First wait before reconnecting after Redis is lost; doubles per failed attempt."""
    reconnect_max_backoff_s: float = Field(default=5.0, gt=0)
    """Longest wait between reconnect attempts."""
    max_staleness_s: float = Field(default=600.0, gt=0)
    """Data older than this (on the exchange clock) is stale."""


class StandaloneSettings(Section):
    """A direct Interactive Brokers connection (provider ``ibkr``)."""

    enabled: bool = True
    """Whether the provider may be used; false refuses a chain that names ``ibkr``."""
    ib_host: str = "127.0.0.1"
    """TWS / IB Gateway host."""
    ib_port: int = Field(default=7498, ge=1, le=65535)
    """TWS / IB Gateway port."""
    client_id: int = Field(default=99, ge=0)
    """API client id, distinct from the other systems' ids."""
    max_staleness_s: float = Field(default=600.0, gt=0)
    """Data older than this (on the exchange clock) is stale."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Limit on connecting and on each start-up synchronisation request."""
    request_timeout_s: float = Field(default=60.0, gt=0)
    """Limit on one historical-data request."""
    reconnect_backoff_s: float = Field(default=1.0, gt=0)
    """First wait before reconnecting after the connection is lost; doubles per failure."""
    reconnect_max_backoff_s: float = Field(default=60.0, gt=0)
    """Longest wait between reconnect attempts."""
    pacing_backoff_s: float = Field(default=60.0, gt=0)
    """First wait after IB refuses a history request (162, 354); doubles up to 10 minutes."""
    quotes: bool = True
    """Also stream quotes (``reqMktData``); symbols without a subscription (354) fall back
    to the open bar's close."""


class CircuitSettings(Section):
    """The circuit breaker in front of every provider."""

    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures that open the circuit."""
    cooldown_s: float = Field(default=30.0, gt=0)
    """Seconds an open circuit waits before letting one trial call through."""


class DataSourceSettings(Section):
    """Which providers supply market data, in which order."""

    primary: str = "synthetic"
    """First provider asked."""
    fallback: list[str] = Field(default_factory=list)
    """Providers asked, in order, when the primary fails or is stale."""
    on_stale: Literal["flag", "reject"] = "flag"
    """With only stale data: answer with ``stale: true`` (flag) or 503 (reject)."""
    history_bars: int = Field(default=100, ge=21, le=2000)
    """Completed bars fetched per symbol (RSI uses up to 100)."""
    circuit: CircuitSettings = CircuitSettings()
    """Circuit breaker settings, the same for every provider."""
    synthetic: SyntheticSettings = SyntheticSettings()
    """Simulator settings."""
    replay: ReplaySettings = ReplaySettings()
    """Replay settings."""
    companion: CompanionSettings = CompanionSettings()
    """Companion HTTP settings."""
    redis: RedisSettings = RedisSettings()
    """Redis settings."""
    standalone: StandaloneSettings = StandaloneSettings()
    """Interactive Brokers settings."""

    @field_validator("primary", mode="before")
    @classmethod
    def _primary(cls, value: Any) -> Any:
        return _provider_name(value) if isinstance(value, str) else value

    @field_validator("fallback", mode="before")
    @classmethod
    def _fallback(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [_provider_name(item) if isinstance(item, str) else item for item in value]
        return value


def _provider_name(raw: str) -> str:
    name = raw.strip().lower()
    # The seed calls a direct IB connection "standalone"; the provider is "ibkr".
    name = "ibkr" if name == "standalone" else name
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider {raw!r}; valid: {', '.join(PROVIDER_NAMES)}")
    return name


class FeatureSettings(Section):
    """Feature definitions that are configurable."""

    universe: list[str] = Field(
        default_factory=lambda: ["SPX", "SPY", "XSP", "NDX", "QQQ", "RUT", "AAPL", "TSLA"]
    )
    """Symbols whose market indicators (``{S}_close`` …) the registry knows; VIX is implied."""
    vix_regime_thresholds: tuple[float, float, float] = (15.0, 20.0, 25.0)
    """Bounds of the low / normal / elevated / high VIX regimes (left-closed)."""

    @field_validator("universe", mode="after")
    @classmethod
    def _universe(cls, value: list[str]) -> list[str]:
        return [symbol.strip().upper() for symbol in value]

    @field_validator("vix_regime_thresholds", mode="after")
    @classmethod
    def _bounds(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not value[0] < value[1] < value[2]:
            raise ValueError("vix_regime_thresholds must be strictly increasing")
        return value


class PredictionSettings(Section):
    """The model repository and the features."""

    models_dir: Path = PROJECT_ROOT / "models"
    """Model repository: ``<dir>/<name>/<version>/model.onnx`` + ``manifest.json``."""
    features: FeatureSettings = FeatureSettings()
    """Feature settings."""


class CacheSettings(Section):
    """The three caches (batch-endpoint-integration.md, Configuration)."""

    enabled: bool = True
    """Turn every cache on or off."""
    market_data_ttl: float = Field(default=300.0, ge=0)
    """Seconds a market snapshot is reused; never past the next bar boundary."""
    feature_ttl: float = Field(default=60.0, ge=0)
    """Seconds a market-feature block is reused."""
    prediction_ttl: float = Field(default=300.0, ge=0)
    """Seconds a prediction is reused for an identical order and data."""
    max_size: int = Field(default=1000, ge=1)
    """Entries per cache (least recently used are evicted)."""


class BatchSettings(Section):
    """Batch endpoint limits."""

    enabled: bool = True
    """Serve ``/predict/batch``."""
    max_batch_size: int = Field(default=100, ge=1, le=10_000)
    """Orders per batch; more is refused with 413 (never truncated)."""
    timeout_ms: float = Field(default=5000.0, gt=0)
    """Per-request deadline; a request past it gets 503."""


class PerformanceSettings(Section):
    """Caches and batch limits."""

    cache: CacheSettings = CacheSettings()
    """Cache settings."""
    batch_predictions: BatchSettings = BatchSettings()
    """Batch settings."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted."""
    max_in_flight: int = Field(default=2, ge=1)
    """Requests one worker serves at once (health, readiness and metrics excepted); more are
    refused at once with 503 and ``Retry-After`` rather than queued behind the CPU."""
    max_queue_ms: float = Field(default=2.0, gt=0)
    """Longest a request may wait on a worker's event loop, between being read and being
    admitted, behind batches read before it; a longer wait is refused at once with 503 and
    ``Retry-After`` (overload is shed before latency grows)."""
    retry_after_s: int = Field(default=1, ge=1)
    """``Retry-After`` seconds sent with a 503 for overload or a missed deadline."""


class PredictionLogSettings(Section):
    """The optional prediction log: one JSON line per answered order."""

    path: Path | None = None
    """File the lines are appended to; none disables the log."""
    queue_size: int = Field(default=10_000, ge=1)
    """Batches waiting for the writer; when full, new ones are dropped and counted."""


class ObservabilitySettings(Section):
    """Request logs, metrics and the prediction log."""

    slow_request_ms: float = Field(default=250.0, gt=0)
    """Requests slower than this are always logged (others only at DEBUG)."""
    metrics_interval_s: float = Field(default=1.0, gt=0)
    """Seconds between flushes of a worker's metric buffers into ``GET /metrics``."""
    prediction_log: PredictionLogSettings = PredictionLogSettings()
    """Prediction log settings."""


class AdminSettings(Section):
    """The admin endpoints."""

    enabled: bool = True
    """Serve ``POST /admin/reload``."""
    token: str | None = None
    """Bearer token required by admin endpoints when set."""


class Settings(BaseSettings):
    """Every setting of the server, loaded once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    system: SystemSettings = SystemSettings()
    """Process-wide switches."""
    server: ServerSettings = ServerSettings()
    """HTTP server."""
    data_source: DataSourceSettings = DataSourceSettings()
    """Market data providers."""
    prediction: PredictionSettings = PredictionSettings()
    """Models and features."""
    performance: PerformanceSettings = PerformanceSettings()
    """Caches and limits."""
    admin: AdminSettings = AdminSettings()
    """Admin endpoints."""
    observability: ObservabilitySettings = ObservabilitySettings()
    """Logs, metrics and the prediction log."""

    @model_validator(mode="after")
    def _providers_distinct(self) -> Settings:
        chain = [self.data_source.primary, *self.data_source.fallback]
        if len(set(chain)) != len(chain):
            raise ValueError(f"data_source: provider listed twice in {chain}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = _CONFIG_FILE.get("path")
        # The built-in env source would read MAGIC8_PREDICTOR_DATA_SOURCE as the whole
        # ``data_source`` section; the seed means the primary provider, so one source owns env.
        sources: list[PydanticBaseSettingsSource] = [init_settings, PrefixedEnvSource(settings_cls)]
        if yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


# The YAML path is chosen per load; pydantic-settings asks for sources on a classmethod.
_CONFIG_FILE: dict[str, Path | None] = {"path": None}


#: Variables with the prefix that are not settings (read by the CLI before settings exist).
NON_SETTING_ENV = frozenset({"CONFIG"})


class PrefixedEnvSource(PydanticBaseSettingsSource):
    """``MAGIC8_PREDICTOR_*`` variables: nested with ``__`` and the seed's flat aliases.

    An unknown variable with the prefix is kept so that validation rejects it by name.
    """

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Unused: values come from ``__call__``."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for variable, raw in os.environ.items():
            if not variable.startswith(ENV_PREFIX):
                continue
            suffix = variable[len(ENV_PREFIX) :]
            if suffix in NON_SETTING_ENV:
                continue
            path = FLAT_ENV_ALIASES.get(suffix) or tuple(
                part.lower() for part in suffix.split("__")
            )
            node = values
            for key in path[:-1]:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"{variable} conflicts with another variable for {key}")
                node = child
            node[path[-1]] = _env_value(raw)
        return values


def _env_value(raw: str) -> Any:
    """Decode JSON lists/objects (``[SPX, SPY]`` style lists are split on commas)."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return [item.strip() for item in text.strip("[]").split(",") if item.strip()]
    return raw


class ConfigError(Exception):
    """The configuration cannot be used; the message names every bad key."""


def resolve_config_path(explicit: str | Path | None) -> Path | None:
    """Pick the YAML file: explicit, ``MAGIC8_PREDICTOR_CONFIG``, then ``config/config.yaml``."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    from_env = os.environ.get(ENV_PREFIX + "CONFIG")
    if from_env:
        return resolve_config_path(from_env)
    for candidate in (DEFAULT_CONFIG, PROJECT_ROOT / DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings once: defaults ← YAML ← environment ← ``overrides``.

    Raises:
        ConfigError: an unknown key or a bad value, with every problem named.
    """
    path = resolve_config_path(config_path)
    _CONFIG_FILE["path"] = path
    try:
        return Settings(**overrides)
    except SettingsError as ex:
        raise ConfigError(f"invalid configuration: {ex}") from ex
    except ValidationError as ex:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
            for error in ex.errors()
        )
        origin = f" (from {path} and {ENV_PREFIX}* variables)" if path else ""
        raise ConfigError(f"invalid configuration{origin}: {problems}") from ex
    finally:
        _CONFIG_FILE["path"] = None
