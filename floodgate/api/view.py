"""The API's read model: job id → latest ``JobSnapshot``, rebuilt from the compacted
``notifications`` topic and pushed to live subscribers (SSE, WebSocket).

``JobView`` is pure bookkeeping (no Kafka) so ordering and eviction are unit-tested directly;
``NotificationFeed`` is the I/O edge that feeds it. The feed uses **no consumer group**: every
API instance reads every partition from the beginning, so each one holds the whole view and a
restarted instance rebuilds it (compaction keeps the latest snapshot per job).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from floodgate import codec
from floodgate.errors import SchemaError
from floodgate.jobs.state import TERMINAL

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]

DEFAULT_MAX_JOBS = 100_000
# A subscriber only ever needs the newest state; a slow one loses intermediate snapshots
# rather than making the view buffer without bound.
SUBSCRIBER_QUEUE = 16


def is_terminal(snapshot: Snapshot) -> bool:
    return snapshot.get("status") in TERMINAL


class JobView:
    """Latest snapshot per job, bounded to ``max_jobs`` (oldest terminal jobs are evicted first).

    Not thread-safe; use from the event loop only.
    """

    def __init__(self, max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.max_jobs = max_jobs
        # Two recency orders: evicting a finished job costs its owner nothing (the result also
        # lives on `results`), evicting a live one would make its GET fall back to "queued".
        self._active: OrderedDict[str, Snapshot] = OrderedDict()
        self._done: OrderedDict[str, Snapshot] = OrderedDict()
        self._subscribers: dict[str, set[asyncio.Queue[Snapshot]]] = {}
        self._arrivals: dict[str, set[asyncio.Future[None]]] = {}
        self.ready = asyncio.Event()
        """Set once the feed has read up to the end offsets it saw at start."""

    def __len__(self) -> int:
        return len(self._active) + len(self._done)

    def get(self, job_id: str) -> Snapshot | None:
        return self._active.get(job_id) or self._done.get(job_id)

    def apply(self, snapshot: Snapshot) -> bool:
        """Keep ``snapshot`` if it is newer than what we hold; True if it was kept.

        Equal versions are not newer: a redelivered snapshot changes nothing and wakes nobody.
        """
        job_id = snapshot["job_id"]
        current = self.get(job_id)
        if current is not None and current["version"] >= snapshot["version"]:
            return False
        self._active.pop(job_id, None)
        self._done.pop(job_id, None)
        (self._done if is_terminal(snapshot) else self._active)[job_id] = snapshot
        self._evict()
        for queue in self._subscribers.get(job_id, ()):
            _offer(queue, snapshot)
        for waiter in self._arrivals.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(None)
        return True

    def put_local(self, snapshot: Snapshot) -> bool:
        """What the ingress knows right after its 202, so a GET on this instance never 404s.

        Carries version 0: the job-state agent's first snapshot (version 1) supersedes it.
        """
        return self.apply(snapshot)

    async def wait_for(self, job_id: str, timeout: float) -> Snapshot | None:
        """The job's snapshot, waiting up to ``timeout`` seconds for one to arrive."""
        found = self.get(job_id)
        if found is not None or timeout <= 0:
            return found
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._arrivals.setdefault(job_id, set())
        waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            waiters.discard(waiter)
            if not waiters and self._arrivals.get(job_id) is waiters:
                del self._arrivals[job_id]
        return self.get(job_id)

    def subscribe(self, job_id: str) -> asyncio.Queue[Snapshot]:
        """A queue receiving every newer snapshot of ``job_id`` from now on; pair with ``unsubscribe``."""
        queue: asyncio.Queue[Snapshot] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[Snapshot]) -> None:
        queues = self._subscribers.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[job_id]

    def subscriber_count(self, job_id: str) -> int:
        return len(self._subscribers.get(job_id, ()))

    def _evict(self) -> None:
        while len(self) > self.max_jobs:
            (self._done if self._done else self._active).popitem(last=False)


def _offer(queue: asyncio.Queue[Snapshot], snapshot: Snapshot) -> None:
    if queue.full():
        queue.get_nowait()  # drop the oldest: the newest state is what a subscriber needs
    queue.put_nowait(snapshot)


def _report_crash(task: asyncio.Task[None]) -> None:
    # A dead feed means a view that silently stops changing: make that loud.
    if not task.cancelled() and task.exception() is not None:
        log.error("notification feed stopped", exc_info=task.exception())


class NotificationFeed:
    """Reads ``topic`` from the beginning into ``view``; sets ``view.ready`` once caught up."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, view: JobView, *,
                 client_id: str = "floodgate-api-view") -> None:
        # The partition count comes from the topic layout (ensure_topics has checked it), not
        # from metadata discovery: aiokafka only caches metadata for subscribed topics.
        self.partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self.view = view
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=200,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and assign every partition; the catch-up itself runs in the background."""
        await self._consumer.start()
        try:
            self._consumer.assign(self.partitions)
            await self._consumer.seek_to_beginning(*self.partitions)
            end = await self._consumer.end_offsets(self.partitions)
        except BaseException:
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(self._run(end), name="notification-feed")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._consumer.stop()

    async def _run(self, end: dict[TopicPartition, int]) -> None:
        pending = {tp for tp, offset in end.items() if offset > 0}
        if not pending:
            self.view.ready.set()
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("notification feed: %s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for msg in records:
                    self._apply(msg)
            if pending:
                for tp in list(pending):
                    if await self._consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
                if not pending:
                    self.view.ready.set()

    def _apply(self, msg: Any) -> None:
        if msg.value is None:
            return  # a tombstone: compaction's business, not a state
        try:
            self.view.apply(codec.decode("JobSnapshot", msg.value, msg.headers))
        except SchemaError as exc:
            log.warning("skipping undecodable snapshot at %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, exc)


__all__ = ["DEFAULT_MAX_JOBS", "JobView", "NotificationFeed", "Snapshot", "is_terminal"]
