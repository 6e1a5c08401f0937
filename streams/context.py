"""What every agent module needs, built once per worker: the app, topic names, the emitter,
the routing table, provider connectors and an HTTP session."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import faust

from floodgate.provider_config import ProviderSetup
from floodgate.routing import RoutingTable
from floodgate.settings import Settings
from streams.emit import Emitter
from streams.topics import TopicNames


@dataclass
class Counters:
    """Plain per-process counters; the metrics endpoint reads them."""

    admitted: int = 0
    duplicates: int = 0
    rerouted_requests: int = 0
    dead_letters: int = 0
    transitions: int = 0
    submitted: int = 0
    rate_limited: int = 0
    retries: int = 0
    rerouted: int = 0
    polled: int = 0
    timed_out: int = 0
    webhooks: int = 0


@dataclass
class Pipeline:
    app: faust.App
    settings: Settings
    setup: ProviderSetup
    providers: dict[str, Any]  # name -> VideoProvider
    names: TopicNames = field(init=False)
    emit: Emitter = field(init=False)
    metrics: Counters = field(default_factory=Counters)
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.names = TopicNames(self.settings)
        self.emit = Emitter(self.app)

    @property
    def routing(self) -> RoutingTable:
        return self.setup.routing

    def session(self) -> aiohttp.ClientSession:
        """One HTTP session per worker, created inside the running loop on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)
