"""A local stand-in for async video providers (OpenAI Videos / Replicate shaped), over real HTTP.

``async with run_simulator(dev_config()) as sim:`` serves it in-process; ``python -m
connectors.simulator`` serves it from the command line.
"""
from __future__ import annotations

from .config import (
    DEV_WEBHOOK_SECRET,
    Distribution,
    ProviderConfig,
    SimulatorConfig,
    config_from_dict,
    dev_config,
    load_config,
    realistic_config,
)
from .receiver import Delivery, WebhookReceiver, run_receiver
from .server import Simulator, build_app, run_simulator

__all__ = [
    "DEV_WEBHOOK_SECRET",
    "Delivery",
    "Distribution",
    "ProviderConfig",
    "SimulatorConfig",
    "Simulator",
    "WebhookReceiver",
    "build_app",
    "config_from_dict",
    "dev_config",
    "load_config",
    "realistic_config",
    "run_receiver",
    "run_simulator",
]
