"""What every agent module needs, built once per worker: the app, topic names, the emitter,
the routing table, provider connectors, an HTTP session and the worker's Prometheus metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import faust

from floodgate.metrics import WorkerMetrics, worker_metrics
from floodgate.provider_config import ProviderSetup
from floodgate.readahead import ReadAhead
from floodgate.routing import RoutingTable
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from streams.emit import Emitter
from streams.lines import LineBoard


@dataclass
class Pipeline:
    app: faust.App
    settings: Settings
    setup: ProviderSetup
    providers: dict[str, Any]  # name -> VideoProvider
    names: TopicNames = field(init=False)
    emit: Emitter = field(init=False)
    metrics: WorkerMetrics = field(default_factory=worker_metrics)
    lines: LineBoard | None = None
    """How every provider's line stands (only when the routing table has spillover rules)."""
    read_ahead: ReadAhead = field(init=False)
    """The worker's window of waiting orders held in memory, over all its providers' lines."""
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.names = TopicNames(self.settings)
        self.emit = Emitter(self.app)
        self.read_ahead = ReadAhead(self.settings.fair_window)

    @property
    def routing(self) -> RoutingTable:
        return self.setup.routing

    def session(self) -> aiohttp.ClientSession:
        """One HTTP session per worker, created inside the running loop on first use."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        return self._session

    async def close(self) -> None:
        if self.lines is not None:
            await self.lines.stop()
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)
