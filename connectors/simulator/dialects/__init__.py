"""One dialect per real provider the simulator can play (``ProviderConfig.dialect``).

``openai`` is the simulator's original OpenAI-Videos-shaped API, served by ``server``'s own
routes; every other dialect is served under ``/{provider}/...`` by ``server.dialect_request``.
"""
from __future__ import annotations

from ..config import ProviderConfig
from .base import Dialect
from .fal import FalDialect
from .kling import KlingDialect
from .replicate import ReplicateDialect
from .runpod import RunPodDialect
from .runway import RunwayDialect
from .wavespeed import WaveSpeedDialect

_FACTORIES: dict[str, type[Dialect]] = {
    "replicate": ReplicateDialect,
    "runpod": RunPodDialect,
    "runway": RunwayDialect,
    "wavespeed": WaveSpeedDialect,
}


def make(config: ProviderConfig) -> Dialect | None:
    """A fresh dialect for one simulated provider (fal's holds its own signing key), or None for openai."""
    if config.dialect == "kling":
        return KlingDialect(config.jwt_secret)
    if config.dialect == "fal":
        return FalDialect(config.webhook_secret)
    factory = _FACTORIES.get(config.dialect)
    return None if factory is None else factory()


__all__ = ["Dialect", "make"]
