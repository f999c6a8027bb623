"""Providers built from settings: names, sections, the enabled switch and the seed's variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.config import ConfigError, load_settings
from inference.service import make_provider, make_slot, redis_url
from providers.companion import CompanionProvider
from providers.ibkr import IBKRProvider
from providers.redis_provider import RedisProvider
from providers.replay import ReplayProvider
from providers.synthetic import SyntheticProvider


def test_each_name_builds_its_provider(tmp_path: Path) -> None:
    settings = load_settings(
        data_source={
            "replay": {"path": str(tmp_path), "max_staleness_s": 900},
            "standalone": {"ib_host": "10.1.2.3", "ib_port": 4002, "client_id": 7},
            "redis": {"host": "cache", "port": 6380, "db": 2},
            "companion": {"base_url": "http://companion:8765/", "timeout": 2.5},
        }
    )
    expected = {
        "synthetic": SyntheticProvider,
        "replay": ReplayProvider,
        "ibkr": IBKRProvider,
        "redis": RedisProvider,
        "companion": CompanionProvider,
    }
    for name, kind in expected.items():
        provider, staleness = make_provider(name, settings)
        assert isinstance(provider, kind)
        assert provider.name == name
        assert staleness == (900 if name == "replay" else 600)
    ibkr, _ = make_provider("ibkr", settings)
    assert isinstance(ibkr, IBKRProvider)
    assert (ibkr.host, ibkr.port, ibkr.client_id) == ("10.1.2.3", 4002, 7)
    assert "VIX" in ibkr.symbols
    assert redis_url(settings) == "redis://cache:6380/2"
    companion, _ = make_provider("companion", settings)
    assert isinstance(companion, CompanionProvider)
    assert (companion.base_url, companion.timeout) == ("http://companion:8765", 2.5)


def test_streaming_providers_are_not_cached_by_the_chain() -> None:
    settings = load_settings(data_source={"circuit": {"failure_threshold": 5, "cooldown_s": 9}})
    assert make_slot("redis", settings).cache_ttl_s == 0
    assert make_slot("ibkr", settings).cache_ttl_s == 0
    slot = make_slot("synthetic", settings)
    assert slot.cache_ttl_s is None
    assert (slot.breaker.failure_threshold, slot.breaker.cooldown_s) == (5, 9)


def test_a_disabled_provider_in_the_chain_stops_start_up() -> None:
    settings = load_settings(data_source={"redis": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"data_source.redis.enabled is false"):
        make_provider("redis", settings)


def test_one_ib_session_per_worker_is_refused() -> None:
    settings = load_settings(server={"workers": 2})
    with pytest.raises(ConfigError, match="magic8 feed --source ibkr"):
        make_provider("ibkr", settings)


def test_the_seeds_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in {
        "MAGIC8_PREDICTOR_DATA_SOURCE": "standalone",
        "MAGIC8_PREDICTOR_DATA_FALLBACK": "redis,synthetic",
        "MAGIC8_PREDICTOR_IB_HOST": "192.0.2.1",
        "MAGIC8_PREDICTOR_IB_PORT": "7497",
        "MAGIC8_PREDICTOR_IB_CLIENT_ID": "42",
        "MAGIC8_PREDICTOR_REDIS_HOST": "redis.local",
        "MAGIC8_PREDICTOR_REDIS_PORT": "6390",
        "MAGIC8_PREDICTOR_COMPANION_URL": "http://companion.local:8765",
        "MAGIC8_PREDICTOR_DATA_SOURCE__REDIS__HEARTBEAT_TIMEOUT_S": "3.5",
    }.items():
        monkeypatch.setenv(variable, value)
    source = load_settings().data_source
    assert (source.primary, source.fallback) == ("ibkr", ["redis", "synthetic"])
    assert (source.standalone.ib_host, source.standalone.ib_port) == ("192.0.2.1", 7497)
    assert source.standalone.client_id == 42
    assert (source.redis.host, source.redis.port) == ("redis.local", 6390)
    assert source.redis.heartbeat_timeout_s == 3.5
    assert source.companion.base_url == "http://companion.local:8765"
    monkeypatch.setenv("MAGIC8_PREDICTOR_DATA_SOURCE__REDIS__HEARTBEAT_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match="heartbeat_timeout_s"):
        load_settings()
