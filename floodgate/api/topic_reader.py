"""A light reader of one topic for an API process: a plain consumer (no group: every process
needs every record) of all the topic's partitions, on the event loop, that hands each batch it
fetches to ``take``. Its fetches wait for 64 KiB or 100 ms, as the other light readers of the API
do (``floodgate.results_consumer``): about one fetch for fifty records under load, ten a second
when idle. A reader that cannot reach the broker logs it and tries again a second later.

Subclasses say where reading starts (``seek``, run before ``start`` returns) and what a batch
does (``take``): ``floodgate.api.ended`` (the ends of this process's jobs, from ``results``) and
``floodgate.api.keyed`` (every process's keyed requests, from ``requests``).
"""
from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from floodgate.results_consumer import DELIVERY_WAIT_MS, FETCH_MIN_BYTES
from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Batches = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class TopicReader(ABC):
    """``start()``, then ``stop()``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, client_id: str) -> None:
        self.topic = topic
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                         client_id=client_id, isolation_level="read_committed",
                                         fetch_max_wait_ms=DELIVERY_WAIT_MS, fetch_min_bytes=FETCH_MIN_BYTES)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        try:
            self.consumer.assign(self.partitions)
            await self.seek()
        except BaseException:
            await self.consumer.stop()
            raise
        self._task = asyncio.create_task(self._reading(), name=f"{type(self).__name__}-{self.topic}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.consumer.stop()

    @abstractmethod
    async def seek(self) -> None:
        """Set where each partition's reading starts (the partitions are assigned)."""

    @abstractmethod
    def take(self, batches: Batches) -> None:
        """One fetch's records, by partition, each partition's in order."""

    async def _reading(self) -> None:
        while True:
            try:
                self.take(await self.consumer.getmany(timeout_ms=1000))
            except KafkaError as exc:
                log.warning("%s: %s not read: %s; reading again in a second", type(self).__name__, self.topic, exc)
                await asyncio.sleep(1.0)


__all__ = ["Batches", "TopicReader"]
