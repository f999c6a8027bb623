"""Configuration: YAML then environment, unknown keys and bad values stop start-up by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_seed() -> None:
    settings = load_settings(None)
    assert settings.data_source.primary == "synthetic"
    assert settings.performance.batch_predictions.max_batch_size == 100
    assert settings.performance.cache.market_data_ttl == 300
    assert settings.performance.cache.feature_ttl == 60
    assert settings.data_source.standalone.client_id == 99
    assert settings.prediction.features.vix_regime_thresholds == (15, 20, 25)


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "performance:\n  cache:\n    ttl_secnds: 5\n")
    with pytest.raises(ConfigError, match=r"performance\.cache\.ttl_secnds"):
        load_settings(path)


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "performance:\n  batch_predictions:\n    max_batch_size: -3\n")
    with pytest.raises(ConfigError, match=r"max_batch_size"):
        load_settings(path)


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "data_source:\n  primary: synthetic\nserver:\n  port: 9000\n")
    monkeypatch.setenv("MAGIC8_PREDICTOR_API_PORT", "8123")
    monkeypatch.setenv("MAGIC8_PREDICTOR_PERFORMANCE__CACHE__MAX_SIZE", "17")
    monkeypatch.setenv("MAGIC8_PREDICTOR_IB_CLIENT_ID", "42")
    monkeypatch.setenv("MAGIC8_PREDICTOR_REDIS_HOST", "cache.internal")
    settings = load_settings(path)
    assert settings.server.port == 8123
    assert settings.performance.cache.max_size == 17
    assert settings.data_source.standalone.client_id == 42
    assert settings.data_source.redis.host == "cache.internal"


def test_seed_name_standalone_means_ibkr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGIC8_PREDICTOR_DATA_SOURCE", "standalone")
    monkeypatch.setenv("MAGIC8_PREDICTOR_DATA_FALLBACK", "synthetic")
    settings = load_settings(None)
    assert settings.data_source.primary == "ibkr"
    assert settings.data_source.fallback == ["synthetic"]


def test_unknown_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGIC8_PREDICTOR_CACHE_SIZE", "5")
    with pytest.raises(ConfigError, match="cache_size"):
        load_settings(None)


def test_unknown_provider_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "data_source:\n  primary: yahoo\n")
    with pytest.raises(ConfigError, match="synthetic, replay, ibkr, redis, companion"):
        load_settings(path)


def test_committed_config_file_loads() -> None:
    settings = load_settings(Path(__file__).parents[2] / "config" / "config.yaml")
    assert settings.data_source.on_stale == "flag"
