"""Video-provider connectors: one module per provider behind the ``VideoProvider`` protocol."""
from __future__ import annotations

from . import fal as _fal  # noqa: F401 - registers kind "fal"
from . import kling as _kling  # noqa: F401 - registers kind "kling"
from . import replicate as _replicate  # noqa: F401 - registers kind "replicate"
from . import runpod as _runpod  # noqa: F401 - registers kind "runpod"
from . import runway as _runway  # noqa: F401 - registers kind "runway"
from . import simulator as _simulator  # noqa: F401 - registers kind "simulator"
from . import wavespeed as _wavespeed  # noqa: F401 - registers kind "wavespeed"
from .base import (
    ProviderEvent,
    ProviderStatus,
    SubmitOrder,
    SubmitResult,
    VideoProvider,
    error_for_response,
)
from .registry import create, kinds, register
from .simulator import SimulatorProvider

__all__ = [
    "ProviderEvent",
    "ProviderStatus",
    "SimulatorProvider",
    "SubmitOrder",
    "SubmitResult",
    "VideoProvider",
    "create",
    "error_for_response",
    "kinds",
    "register",
]
