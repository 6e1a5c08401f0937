"""Name → connector class, so configuration can say ``kind = "simulator"``.

Connector modules register themselves on import with ``@register("kind")``; importing
``connectors.providers`` imports the built-in ones.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from floodgate.errors import ConfigError

from .base import VideoProvider

_T = TypeVar("_T", bound=type)
_KINDS: dict[str, type] = {}


def register(kind: str) -> Callable[[_T], _T]:
    """Class decorator: make ``create(kind, ...)`` build this connector."""

    def decorate(cls: _T) -> _T:
        existing = _KINDS.get(kind)
        # Re-registering the same class is harmless (module reloads); two classes under one name is a bug.
        if existing is not None and existing is not cls:
            raise ConfigError(f"provider kind {kind!r} is already registered to {existing.__qualname__}")
        _KINDS[kind] = cls
        return cls

    return decorate


def create(kind: str, **config: Any) -> VideoProvider:
    """Build a connector of ``kind`` from keyword settings. Raises ``ConfigError`` for unknown kinds or settings."""
    try:
        cls = _KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(_KINDS)) or "none"
        raise ConfigError(f"unknown provider kind {kind!r} (known: {known})") from None
    try:
        provider: VideoProvider = cls(**config)
    except TypeError as exc:
        raise ConfigError(f"bad settings for provider kind {kind!r}: {exc}") from exc
    return provider


def kind_class(kind: str) -> type | None:
    """The connector class registered for ``kind`` (its class attributes say what the kind does:
    ``callbacks``, ``status_rate_per_second``), or None for a kind not registered."""
    return _KINDS.get(kind)


def kinds() -> tuple[str, ...]:
    """Registered kinds, sorted."""
    return tuple(sorted(_KINDS))


__all__ = ["create", "kind_class", "kinds", "register"]
