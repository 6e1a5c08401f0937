"""HTTP status → error mapping for provider connectors (Retry-After parsing: test_throttle.py)."""
from __future__ import annotations

import email.utils

import pytest

from connectors.providers import create, error_for_response, kinds, register
from connectors.providers.base import VideoProvider
from floodgate.errors import (
    ConfigError,
    ProviderGone,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "kind", "retriable", "reroute"),
    [
        (429, RateLimited, True, False),
        (500, ProviderUnavailable, True, True),
        (502, ProviderUnavailable, True, True),
        (503, ProviderUnavailable, True, True),
        (504, ProviderUnavailable, True, True),
        (599, ProviderUnavailable, True, True),
        (408, ProviderUnavailable, True, True),  # a timeout waiting for our request, not a refusal
        (410, ProviderGone, False, True),
        (400, ProviderRejected, False, False),
        (401, ProviderRejected, False, False),
        (403, ProviderRejected, False, False),
        (404, ProviderRejected, False, False),
        (409, ProviderRejected, False, False),
        (422, ProviderRejected, False, False),
        (302, ProviderRejected, False, False),
    ],
)
def test_status_maps_to_error(status: int, kind: type, retriable: bool, reroute: bool) -> None:
    error = error_for_response(status, {}, "", NOW)
    assert type(error) is kind
    assert error.status == status
    assert error.retriable is retriable
    assert error.reroute is reroute


def test_rate_limited_carries_delta_seconds_retry_after() -> None:
    error = error_for_response(429, {"Retry-After": "7"}, '{"detail":"slow down"}', NOW)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert "429" in str(error) and "slow down" in str(error)


def test_retry_after_header_name_is_case_insensitive() -> None:
    assert error_for_response(429, {"retry-after": "3"}, "", NOW).retry_after == 3.0


def test_rate_limited_with_http_date_retry_after() -> None:
    date = email.utils.formatdate(NOW + 120, usegmt=True)
    assert error_for_response(429, {"Retry-After": date}, "", NOW).retry_after == pytest.approx(120.0)


def test_rate_limited_without_retry_after_is_none() -> None:
    assert error_for_response(429, {}, "", NOW).retry_after is None


def test_unavailable_keeps_retry_after_from_an_outage() -> None:
    assert error_for_response(503, {"Retry-After": "30"}, "", NOW).retry_after == 30.0


def test_long_bodies_are_trimmed_in_the_message() -> None:
    assert len(str(error_for_response(500, {}, "x" * 10_000, NOW))) < 400


def test_registry_creates_the_simulator_connector() -> None:
    assert "simulator" in kinds()
    provider = create(
        "simulator", name="sora", base_url="http://127.0.0.1:1/", api_key="k", webhook_secret="s", timeout=1.0
    )
    assert isinstance(provider, VideoProvider)
    assert provider.name == "sora"


def test_registry_rejects_unknown_kind_and_bad_settings() -> None:
    with pytest.raises(ConfigError, match="unknown provider kind 'nope'"):
        create("nope")
    with pytest.raises(ConfigError, match="bad settings"):
        create("simulator", name="x", colour="blue")


def test_registry_refuses_two_classes_under_one_kind() -> None:
    with pytest.raises(ConfigError, match="already registered"):

        @register("simulator")
        class Impostor:
            pass
