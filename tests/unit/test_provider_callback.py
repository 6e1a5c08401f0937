"""Per-job callback paths, and how the routing file names a provider's base URL and secrets."""
from __future__ import annotations

import pytest

from connectors.providers import callback
from floodgate.errors import ConfigError, WebhookVerificationError
from floodgate.provider_config import from_dict

SECRET = "a-callback-secret-of-some-length"


def test_callback_url_round_trips_to_its_job() -> None:
    url = callback.callback_url("https://fg.test/webhooks/kling/", SECRET, "kling", "job_01")
    prefix = "https://fg.test/webhooks/kling/"
    assert url.startswith(prefix + "job_01/")
    assert callback.check(SECRET, "kling", url[len(prefix):]).job_id == "job_01"


@pytest.mark.parametrize("path", [
    "job_01", "job_01/", "/00000000000000000000000000000000", "job_01/" + "0" * 32, "job_01/abc/def",
])
def test_a_path_without_the_right_mac_is_refused(path: str) -> None:
    with pytest.raises(WebhookVerificationError):
        callback.check(SECRET, "kling", path)


@pytest.mark.parametrize("given", [
    "éé",  # what /job_01/%C3%A9%C3%A9 arrives as
    "é" * callback.MAC_HEX,
    "٠" * callback.MAC_HEX,  # Arabic-Indic zeros: digits to str.isdigit(), not to hexdigest()
    callback.mac(SECRET, "kling", "job_01")[:-1] + "\udcff",  # a path byte that was not UTF-8
    callback.mac(SECRET, "kling", "job_01").upper(),
], ids=["short-non-ascii", "non-ascii", "non-ascii-digits", "escaped-byte", "upper-case"])
def test_a_mac_not_of_our_shape_is_refused_not_compared(given: str) -> None:
    with pytest.raises(WebhookVerificationError, match="not of the expected shape"):
        callback.check(SECRET, "kling", f"job_01/{given}")


def test_a_mac_does_not_move_to_another_job_or_provider() -> None:
    mac = callback.mac(SECRET, "kling", "job_01")
    with pytest.raises(WebhookVerificationError):
        callback.check(SECRET, "kling", f"job_02/{mac}")
    with pytest.raises(WebhookVerificationError):
        callback.check(SECRET, "runpod", f"job_01/{mac}")
    with pytest.raises(WebhookVerificationError):
        callback.check(SECRET + "x", "kling", f"job_01/{mac}")


def test_a_short_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        callback.mac("short", "kling", "job")


def test_env_references_take_a_path_suffix() -> None:
    setup = from_dict({
        "providers": {"rep": {"kind": "replicate", "concurrency_limit": 3,
                              "connection": {"base_url": "env:SIM_URL/replicate", "api_token": "env:TOKEN"}}},
        "routes": {"m": [{"provider": "rep"}]}},
        environ={"SIM_URL": "http://127.0.0.1:9", "TOKEN": "r8_x"})
    assert setup.connections["rep"] == {"base_url": "http://127.0.0.1:9/replicate", "api_token": "r8_x"}
    with pytest.raises(ConfigError, match="MISSING"):
        from_dict({"providers": {"rep": {"kind": "replicate", "concurrency_limit": 3,
                                         "connection": {"api_token": "env:MISSING"}}}, "routes": {}}, environ={})
