"""Case-insensitive header reading: one rule for signature checks, the bridge and Retry-After."""
from __future__ import annotations

from multidict import CIMultiDict

from floodgate.headers import header, lowered


def test_names_match_in_any_case() -> None:
    assert header({"Retry-After": "3"}, "retry-after") == "3"
    assert header({"retry-after": "3"}, "Retry-After") == "3"
    assert header({"Other": "x"}, "Retry-After") is None


def test_first_of_repeated_headers_wins() -> None:
    repeated = CIMultiDict([("Webhook-Id", "first"), ("webhook-id", "second")])
    assert header(repeated, "WEBHOOK-ID") == "first"
    assert lowered(repeated) == {"webhook-id": "first"}


def test_lowered_keeps_values_as_they_are() -> None:
    assert lowered({"Content-Type": "Application/JSON", "X-A": ""}) == {"content-type": "Application/JSON", "x-a": ""}
