"""Which origins may open the job WebSocket: the pure rule, by table."""
from __future__ import annotations

import pytest

from floodgate.errors import ConfigError
from floodgate.origins import OriginPolicy, normalise

OWN = ["http://127.0.0.1:8000"]


@pytest.mark.parametrize(("origin", "canonical"), [
    ("https://App.Example", "https://app.example"),
    ("https://app.example:443", "https://app.example"),
    ("http://app.example:80/", "http://app.example"),
    ("http://app.example:8080", "http://app.example:8080"),
    ("http://[::1]:3000", "http://[::1]:3000"),
    ("null", None), ("", None), ("https://app.example/path", None), ("https://u@app.example", None),
    ("https://app.example:99999", None), ("app.example", None),
])
def test_normalise(origin: str, canonical: str | None) -> None:
    assert normalise(origin) == canonical


@pytest.mark.parametrize(("configured", "origin", "allowed"), [
    ("", None, True),  # not a browser
    ("", "http://127.0.0.1:8000", True),  # the API's own pages
    ("", "HTTP://127.0.0.1:8000", True),
    ("", "http://127.0.0.1:8001", False),
    ("", "https://app.example", False),
    ("", "null", False),  # sandboxed frames and file: pages
    ("https://app.example", "https://app.example:443", True),
    ("https://app.example", "http://app.example", False),  # another scheme is another origin
    ("https://app.example", "https://app.example.evil", False),
    ("https://app.example", "https://sub.app.example", False),
    ("https://a.example, https://b.example", "https://b.example", True),
    ("*", "https://anything.example", True),
    ("*", "null", True),
])
def test_allows(configured: str, origin: str | None, allowed: bool) -> None:
    assert OriginPolicy.parse(configured).allows(origin, OWN) is allowed


@pytest.mark.parametrize("bad", ["app.example", "https://app.example/x", "null"])
def test_a_configured_entry_that_is_no_origin_fails_loudly(bad: str) -> None:
    with pytest.raises(ConfigError, match="FLOODGATE_WS_ALLOWED_ORIGINS"):
        OriginPolicy.parse(f"https://ok.example,{bad}")
