"""The ends of the jobs this process accepted, for the queued-jobs quota of an API without a job
view (an ingress-only process).

Such a process follows no job's changes (that is what keeps its core for the 202s), so it counts
only the jobs it answered 202 itself (``floodgate.quotas.JobsByTenant``, filled by the
admission) and takes each out when its job's result appears on ``results``: every job that ends
(completed, failed, cancelled, expired) gets a record there, keyed by its job id (the jobs agent
writes it with the terminal state; a second one, after a redelivery, changes nothing).
``EndedJobs`` reads only those keys: no value is decoded.

The reader is a plain consumer (no group: every process needs every job's end) that starts at
the end of the topic, before the first request is served, so every job this process accepts
ends after its reading position. Its fetches wait for 64 KiB or 100 ms, as the other readers of
``results`` do (``floodgate.results_consumer``): one fetch for about fifty results under load,
ten a second when idle. A job counts for at most 100 ms after its result is written; a reader
that cannot reach the broker leaves jobs counted (the quota then refuses early, never late).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from floodgate.quotas import JobsByTenant
from floodgate.results_consumer import DELIVERY_WAIT_MS, FETCH_MIN_BYTES
from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class EndedJobs:
    """``start()`` (reading from the end of ``results``), then ``stop()``. Each result read takes
    its job out of ``jobs``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, jobs: JobsByTenant) -> None:
        self.topic = topic
        self.jobs = jobs
        self.read = 0
        """Results read since the start (for tests and logs)."""
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                          client_id="floodgate-api-ended", isolation_level="read_committed",
                                          fetch_max_wait_ms=DELIVERY_WAIT_MS, fetch_min_bytes=FETCH_MIN_BYTES)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        try:
            self._consumer.assign(self._partitions)
            await self._consumer.seek_to_end(*self._partitions)
            for tp in self._partitions:  # the end is looked up now, not at the first fetch
                await self._consumer.position(tp)
        except BaseException:
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(self._reading(), name="ended-jobs")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._consumer.stop()

    async def _reading(self) -> None:
        while True:
            try:
                self.take(await self._consumer.getmany(timeout_ms=1000))
            except KafkaError as exc:
                log.warning("ended jobs: results not read: %s; reading again in a second", exc)
                await asyncio.sleep(1.0)

    def take(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        discard = self.jobs.discard
        for records in batches.values():
            for msg in records:
                key = msg.key
                if key is not None:
                    discard(key.decode("utf-8", "replace"))
            self.read += len(records)


__all__ = ["EndedJobs"]
