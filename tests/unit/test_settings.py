from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

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


@pytest.mark.parametrize("name", ["FLOODGATE_POLL_AFTER", "FLOODGATE_JOB_TIMEOUT"])
@pytest.mark.parametrize("raw", ["0", "-5"])
def test_the_in_flight_poll_and_timeout_must_be_positive(name: str, raw: str) -> None:
    assert Settings.from_env({name: "2.5"}).to_env()[name] == "2.5"
    with pytest.raises(ConfigError, match=f"{name} must be positive"):
        Settings.from_env({name: raw})


def test_the_worker_niceness_is_one_unix_accepts() -> None:
    assert Settings.from_env({}).worker_nice == 0  # the default leaves the worker as it was started
    assert Settings.from_env({"FLOODGATE_WORKER_NICE": "10"}).worker_nice == 10
    for bad in ("-1", "20"):
        with pytest.raises(ConfigError, match="FLOODGATE_WORKER_NICE must be 0 to 19"):
            Settings.from_env({"FLOODGATE_WORKER_NICE": bad})


# Every float setting, read from the dataclass: one added later is swept below without a word here.
FLOAT_SETTINGS = [f.name for f in fields(Settings) if get_type_hints(Settings)[f.name] is float]


def test_the_sweep_finds_the_float_settings() -> None:
    assert {"session_timeout", "job_timeout", "backlog_max_wait", "video_breaker_open_for"} <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_a_float_setting_refuses_what_float_reads_but_is_no_number(name: str, raw: str) -> None:
    """nan slips past range checks ("nan <= 0" is false) and inf makes a timeout, interval or
    bound never end; none of the float settings means "no limit" by inf (0 says none where one is
    allowed), so each refuses both at start, naming its variable."""
    variable = f"FLOODGATE_{name.upper()}"
    with pytest.raises(ConfigError, match=f"^{variable} must be a finite number"):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_a_float_setting_given_in_code_is_held_to_the_same_rule(name: str) -> None:
    # Settings built in code (the SDK's, a test's) are validated too, not only what the environment says.
    with pytest.raises(ConfigError, match=f"^FLOODGATE_{name.upper()} must be a finite number"):
        Settings().with_overrides(**{name: math.nan}).validate()
