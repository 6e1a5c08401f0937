from __future__ import annotations

from pathlib import Path

import pytest

from floodgate.errors import ConfigError
from floodgate.settings import Secret, Settings


def test_to_env_round_trips_every_field() -> None:
    original = Settings.from_env({}).with_overrides(
        stream_buffer=16, allow_private_webhooks=True, session_timeout=2.5, cache_dir=Path("/tmp/x"),
        api_keys=Secret("k1=acme"), topic_prefix="t.")
    assert Settings.from_env(original.to_env()) == original


def test_a_malformed_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="FLOODGATE_STREAM_BUFFER"):
        Settings.from_env({"FLOODGATE_STREAM_BUFFER": "lots"})
    with pytest.raises(ConfigError, match="FLOODGATE_STREAM_BUFFER must be at least 1"):
        Settings.from_env({"FLOODGATE_STREAM_BUFFER": "0"})


def test_the_breaker_reset_time_must_be_positive() -> None:
    assert Settings.from_env({"FLOODGATE_BREAKER_RESET_AFTER": "1.5"}).breaker_reset_after == 1.5
    with pytest.raises(ConfigError, match="FLOODGATE_BREAKER_RESET_AFTER must be positive"):
        Settings.from_env({"FLOODGATE_BREAKER_RESET_AFTER": "0"})


def test_the_worker_niceness_is_one_unix_accepts() -> None:
    assert Settings.from_env({}).worker_nice == 0  # the default leaves the worker as it was started
    assert Settings.from_env({"FLOODGATE_WORKER_NICE": "10"}).worker_nice == 10
    for bad in ("-1", "20"):
        with pytest.raises(ConfigError, match="FLOODGATE_WORKER_NICE must be 0 to 19"):
            Settings.from_env({"FLOODGATE_WORKER_NICE": bad})
