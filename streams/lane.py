"""One worker's view of one provider: the slot table, slot waits, rate bucket, outage breaker and
the submissions running in the background.

Slots live in the ``inflight-<provider>`` table under ``b"<partition>:<job id>"``: the partition
prefix lets a partition's slots be counted from the keys alone (no decoding), and the release of
a job finds its slot without a scan, because release and dispatch topics are co-partitioned.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any

import faust

from floodgate.routing import ProviderSpec
from floodgate.throttle import Backoff, CircuitBreaker, TokenBucket, partition_share
from streams.tables import JsonTable

log = logging.getLogger(__name__)


def slot_key(partition: int, job_id: str) -> bytes:
    return f"{partition}:{job_id}".encode()


def parse_slot_key(key: bytes) -> tuple[int, str]:
    partition, _, job_id = key.decode().partition(":")
    return int(partition), job_id


class Lane:
    def __init__(self, app: faust.App, spec: ProviderSpec, partitions: int) -> None:
        self.spec = spec
        self.partitions = partitions
        self.slots = JsonTable(app, f"inflight-{spec.name}", partitions=partitions)
        self.changed = asyncio.Event()
        self.bucket = TokenBucket(spec.rate_per_second, max(1.0, spec.rate_per_second)) if spec.rate_per_second else None
        self.breaker = CircuitBreaker(failure_threshold=5, reset_after=30.0)
        self.backoff = Backoff(base=0.5, factor=2.0, cap=30.0, jitter="full", rng=random.Random())
        self.submitting: dict[bytes, asyncio.Task[None]] = {}

    def capacity(self, partition: int) -> int:
        return partition_share(self.spec.concurrency_limit, self.partitions, partition)

    def held(self, partition: int) -> int:
        prefix = f"{partition}:".encode()
        return sum(1 for key in self.slots.table.keys() if key.startswith(prefix))

    async def wait_for_slot(self, partition: int) -> None:
        while self.held(partition) >= self.capacity(partition):
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 1.0)
            except asyncio.TimeoutError:
                pass  # re-count: a rebalance may have changed what this worker holds

    def freed(self) -> None:
        self.changed.set()

    def run_in_background(self, key: bytes, work: Coroutine[Any, Any, None]) -> None:
        """Run a submission without holding up the dispatch stream. Its slot is already durable,
        so a crash mid-call loses nothing: the poller re-dispatches slots that never got a
        provider job id."""
        task = asyncio.create_task(work, name=f"submit:{key.decode()}")
        self.submitting[key] = task
        task.add_done_callback(lambda t: self._done(key, t))

    def _done(self, key: bytes, task: asyncio.Task[None]) -> None:
        self.submitting.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("submission %s failed; the poller will retry it", key.decode(), exc_info=task.exception())

    async def stop(self) -> None:
        tasks = list(self.submitting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
