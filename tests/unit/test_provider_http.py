"""What the real-provider connectors share: params as model inputs, Retry-After from a body, output
URLs, timestamps."""
from __future__ import annotations

import pytest

from connectors.providers.common import timestamp
from connectors.providers.http import body_retry_after, first_url, fraction, model_inputs
from floodgate.errors import SchemaError


@pytest.mark.parametrize(("value", "sent"), [
    ("10", 10), ("-2", -2), ("0.5", 0.5), ("true", True), ("false", False), ("007", "007"), ("9:16", "9:16"),
    ("1e3", "1e3"), ("10.0", 10.0), ("", ""), ("null", "null"), ("t", "t"), ("a lighthouse", "a lighthouse")])
def test_params_that_read_as_json_numbers_or_booleans_are_sent_as_such(value: str, sent: object) -> None:
    assert model_inputs({"k": value}) == {"k": sent}


@pytest.mark.parametrize(("body", "seconds"), [
    (b'{"detail": "throttled", "status": 429, "retry_after": 5}', 5.0), (b'{"retry_after": 0.5}', 0.5),
    (b'{"retry_after": -1}', None), (b'{"retry_after": true}', None), (b'{"retry_after": "5"}', None),
    (b"not json", None), (b"[5]", None)])
def test_retry_after_from_a_body(body: bytes, seconds: float | None) -> None:
    assert body_retry_after(body) == seconds


def test_first_url_finds_the_video_in_the_usual_shapes() -> None:
    assert first_url("https://a/x.mp4") == "https://a/x.mp4"
    assert first_url(["", "https://a/y.mp4"]) == "https://a/y.mp4"
    assert first_url({"video": {"url": "https://a/z.mp4"}}) == "https://a/z.mp4"
    assert first_url({"videos": [{"id": "v", "url": "https://a/w.mp4"}]}) == "https://a/w.mp4"
    assert first_url({"output": {"video_url": "https://a/v.mp4"}}) == "https://a/v.mp4"
    assert first_url(None) is None and first_url({"images": []}) is None


def test_fractions_and_timestamps() -> None:
    assert fraction(42, 100) == 0.42 and fraction(1.5) == 1.0 and fraction(-1) == 0.0 and fraction(None) is None
    assert timestamp("2024-06-27T19:49:32.334Z", 0) == pytest.approx(1719517772.334)
    assert timestamp(1774805191502, 0) == pytest.approx(1774805191.502)
    assert timestamp(1774805191, 0) == 1774805191 and timestamp(None, 7.0) == 7.0
    with pytest.raises(SchemaError):
        timestamp("yesterday", 0)
