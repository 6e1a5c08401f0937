"""Reading HTTP headers without caring how their names are cased. Pure.

One rule for every reader (signature checks, the webhook bridge, Retry-After): names compare
case-insensitively and the first of repeated headers wins, so a multidict with a repeated
header cannot smuggle a second value past a check that read the first. Works on plain dicts
and on aiohttp's multidicts alike.
"""
from __future__ import annotations

from collections.abc import Mapping


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers with lower-cased names; of repeated headers, the first wins."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        out.setdefault(name.lower(), value)
    return out


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` in any casing (the first, if repeated), or ``None``."""
    return lowered(headers).get(name.lower())


__all__ = ["header", "lowered"]
