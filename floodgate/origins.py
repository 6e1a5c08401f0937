"""Which web origins may open the job WebSocket (``GET /v1/stream``), pure: no I/O.

Browsers send ``Origin`` on every WebSocket handshake and, unlike ``fetch``, apply no CORS check
to it: without a check of our own, any page a user visits could open a socket to the API. Job
tokens, not cookies, authorise subscriptions, so such a page could not read jobs it holds no
token for; the check still keeps foreign pages from holding connections open (and from reading
anything a future cookie would unlock).

The rule: a handshake without ``Origin`` (not a browser: SDKs, curl, server-side clients) is
allowed; a browser's is allowed if its origin is the API's own, or one configured
(``FLOODGATE_WS_ALLOWED_ORIGINS``), or the configuration is ``*``. Origins compare as RFC 6454
serialisations: scheme and host case-insensitive, a default port the same as none.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from floodgate.errors import ConfigError

ANY = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise(origin: str) -> str | None:
    """``scheme://host[:port]`` in canonical form, or None for what is not a tuple origin
    (``null``, a path, no host, a bad port)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if not scheme or not host or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


@dataclass(frozen=True)
class OriginPolicy:
    """The origins allowed besides the API's own; ``any_origin`` for ``*``."""

    allowed: frozenset[str] = frozenset()
    any_origin: bool = False

    @classmethod
    def parse(cls, text: str, var: str = "FLOODGATE_WS_ALLOWED_ORIGINS") -> OriginPolicy:
        """From a comma-separated list; raises ``ConfigError`` naming ``var`` for an entry that
        is not an origin."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        if ANY in items:
            return cls(any_origin=True)
        allowed = set()
        for item in items:
            canonical = normalise(item)
            if canonical is None:
                raise ConfigError(f"{var}: {item!r} is not an origin (scheme://host[:port])")
            allowed.add(canonical)
        return cls(frozenset(allowed))

    def allows(self, origin: str | None, own: Iterable[str]) -> bool:
        """True if a handshake with this ``Origin`` header value may proceed; ``own`` are the
        API's own origins (the URL clients reach it at)."""
        if origin is None:
            return True
        if self.any_origin:
            return True
        canonical = normalise(origin)
        if canonical is None:
            return False
        return canonical in self.allowed or canonical in {normalise(o) for o in own}


__all__ = ["ANY", "OriginPolicy", "normalise"]
