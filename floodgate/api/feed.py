"""The job view's feed: ``notifications`` and the providers' slot logs, read from the beginning
into a ``JobView`` (``floodgate.api.view``), in every API process that serves reads; and
``webhooks``, read from its end, for what providers say of the jobs this process's subscribers
watch (``floodgate.api.heard``: they hear it before the jobs table has it).

The feed uses **no consumer group**: every API instance reads every partition from the beginning,
so each one holds the whole view and a restarted instance rebuilds it (compaction keeps the latest
snapshot per job). It sets ``view.ready`` once it has read up to the end offsets it saw at start.

The consumer is librdkafka's (confluent-kafka), polled from a thread of its own, not aiokafka's on
the event loop. The feed follows every job's every change, so it fetches all the time, and at
1,000 jobs a second aiokafka's fetch rounds (hundreds a second, each parsed and scheduled in
Python) cost the API 140-190 µs of CPU per job, on the loop that answers the 202s. librdkafka
fetches in its own C threads and the feed hands its records over in batches (``LINGER_SECONDS``
when busy): about 115 µs a job (measured beside a real broker, a process writing a queued snapshot
and a waiting order per job at a steady 1,000 jobs/s; the same records read as one backlog cost
13 µs a job, the floor), about 70 µs since the busy linger is 10 ms (``dev/feed_cpu.py``). Asking
the broker for 16 KB a fetch got 58 µs, but added up to 10 ms to every change when little happens
(the notification bench's p99 went from 15 to 73 ms). Asking for 4 KB, once a provider's word
reached the job's watchers from the bridge itself (``JobView.heard``), still cost the
notifications more than it saved: the feed's CPU per change 0.79× at 2,000 changes/s, the API's
per 202 0.975× in the accept bench, and the notification p50 and p99 1.5× and 1.6× at 50 jobs/s
(p99 10.6 → 17.4 ms; old, new, new, old, 2026-12-06). A word is told early only once the view
knows the job's submission, and that comes through this feed (the slot logs). The
thread hands its batches to a task on the event loop, which applies them in the order they were
read; it reads at most ``IN_FLIGHT`` batches ahead of the view. (Waiting for each batch to be
applied before reading on, through ``run_coroutine_threadsafe``, cost 9% of the API's CPU in
thread wake-ups at 1,000 requests/s: py-spy, accept bench.)
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from connectors.providers.base import read_webhook
from floodgate.api.heard import Heard
from floodgate.api.view import YIELD_EVERY, JobView, Snapshot, Submission
from floodgate.errors import SchemaError
from floodgate.jobs.record import read_notification
from floodgate.kafka_admin import groupless_reader, watermarks
from floodgate.tasks import PollThread, cancel_and_wait

log = logging.getLogger(__name__)

BATCH = 2000
"""Records handed to the view at most at once."""
LINGER_SECONDS = 0.010
LINGER_FROM = 8
"""After a batch of at least ``LINGER_FROM`` records (the feed is busy), the next batch waits up to
``LINGER_SECONDS`` after its first record for more: a dozen or more records per hand-over instead
of one or two, for at most 10 ms on a change that follows the others closely anyway; a quiet feed
hands each change over as it comes. Each hand-over costs the process a wake-up of the loop and a
round of the feed's task whatever it carries: at 2,000 changes/s (``dev/feed_cpu.py``, variants
in turns) the feed took 45-50 µs of CPU per change at 5 ms and 34-36 at 10 ms, for 3.5 ms
more on the change's p50 (7.3 → 10.9 ms) and 5 ms on its p99; 20 ms saved little more (33.5 µs)
for twice the wait. In the accept bench (1,000 requests/s, the worker admitting them) the API's
CPU per 202 went from 0.482 and 0.491 ms to 0.453 and 0.445 (0.92×; pinned 0.94×); in the
notification bench the idle p50 and p99 did not move, and while the pipeline ran at its max the
API's hop took 2.7 ms more at its p50."""
IN_FLIGHT = 8
"""Batches read ahead of the view at most (each up to ``BATCH`` records)."""
POLL_SECONDS = 0.2
"""The longest a poll waits for records: also how often the view flushes its evictions when
nothing arrives (the ingress's local snapshots evict too)."""


class NotificationFeed:
    """Reads ``topic`` (and the providers' slot logs, ``slot_logs``: topic → partitions) from the
    beginning into ``view``; sets ``view.ready`` once caught up with all of them."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, view: JobView, *,
                 slot_logs: Mapping[str, int] | None = None, webhooks: tuple[str, int] | None = None,
                 connectors: Mapping[str, Any] | None = None,
                 client_id: str = "floodgate-api-view", fetch_max_wait_ms: int = 20) -> None:
        """``webhooks``: the topic the bridges write (name, partitions), read from its end for the
        providers' words on jobs this process's subscribers watch, which ``connectors`` (provider
        → connector) parse (``floodgate.api.heard``)."""
        # The partition count comes from the topic layout (ensure_topics has checked it).
        self.topic = topic
        self.partitions = [(topic, p) for p in range(partitions)]
        self.partitions += [(log_topic, p) for log_topic, count in (slot_logs or {}).items() for p in range(count)]
        self.webhooks = webhooks[0] if webhooks else None
        self._webhook_partitions = [(webhooks[0], p) for p in range(webhooks[1])] if webhooks else []
        self.connectors = dict(connectors or {})
        self.view = view
        # The feed starts from the beginning of its partitions (from the end of webhooks', ``start``).
        self._consumer = Consumer(groupless_reader(
            bootstrap, client_id, **{
                # A partition drained while a fetch long-polls the others waits for that fetch to
                # return: the wait bounds what a notification can lose here (see Settings).
                "fetch.wait.max.ms": fetch_max_wait_ms,
                "logger": log,
            }))
        self._poller = PollThread("floodgate-view-feed")
        self._batches: asyncio.Queue[tuple[list[Any], bool]] = asyncio.Queue()
        self._room = threading.Semaphore(IN_FLIGHT)
        """Batches handed over and not yet applied, at most ``IN_FLIGHT``: the thread waits for room."""
        self._applier: asyncio.Task[None] | None = None
        self._pending: dict[tuple[str, int], int] = {}
        """Partitions not yet read up to the end offset seen at start (topic, partition) → end."""

    async def start(self) -> None:
        """Find where the partitions end and start reading; the catch-up runs in the background."""
        try:
            ends = await asyncio.to_thread(watermarks, self._consumer, self.partitions + self._webhook_partitions)
        except BaseException:
            await asyncio.to_thread(self._consumer.close)
            raise
        words_from = {tp: ends.pop(tp)[1] for tp in self._webhook_partitions}
        self._pending = {tp: high for tp, (low, high) in ends.items() if high > low}
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self.partitions]
                              # A word older than this process is of no use to its subscribers. (From
                              # the end offset asked for here: librdkafka's OFFSET_END at assign
                              # never started fetching a partition still empty then.)
                              + [TopicPartition(t, p, words_from[(t, p)]) for t, p in self._webhook_partitions])
        if not self._pending:
            self.view.ready.set()
        self._applier = asyncio.create_task(self._apply_batches(), name="notification-feed")
        self._applier.add_done_callback(_report_crash)
        self._poller.start(self._run)

    async def stop(self) -> None:
        await self._poller.stop()
        applier, self._applier = self._applier, None
        await cancel_and_wait(applier)
        await asyncio.to_thread(self._consumer.close)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The feed thread: poll, and hand each batch to the loop (waiting for room)."""
        linger = 0.0
        try:
            while not self._poller.stopping.is_set():
                try:
                    # consume() waits for a full batch or its timeout, whichever comes first: wait
                    # for one record only, then take what else is already fetched.
                    first = self._consumer.poll(POLL_SECONDS)
                    records = [] if first is None else [first, *self._consumer.consume(BATCH - 1, timeout=linger)]
                except KafkaException as exc:
                    log.warning("notification feed: %s; retrying", exc)
                    self._poller.stopping.wait(1.0)
                    continue
                linger = LINGER_SECONDS if len(records) >= LINGER_FROM else 0.0
                caught_up = self._caught_up() if self._pending else False
                while not self._room.acquire(timeout=0.5):
                    if self._poller.stopping.is_set():
                        return
                try:
                    loop.call_soon_threadsafe(self._batches.put_nowait, (records, caught_up))
                except RuntimeError:  # the loop is closed: nobody reads the view any more
                    return
        except Exception:
            # A dead feed means a view that silently stops changing: make that loud.
            log.exception("notification feed stopped")

    def _caught_up(self) -> bool:
        """Whether every partition pending at start has been read up to its end (in the thread)."""
        positions = self._consumer.position([TopicPartition(t, p) for t, p in self._pending])
        for tp in positions:
            if tp.offset >= self._pending[(tp.topic, tp.partition)]:
                del self._pending[(tp.topic, tp.partition)]
        return not self._pending

    async def _apply_batches(self) -> None:
        """On the loop: apply the batches in the order they were read."""
        while True:
            records, caught_up = await self._batches.get()
            try:
                await self._apply(records, caught_up)
            finally:
                self._room.release()
            if not self._batches.empty():
                await asyncio.sleep(0)  # the next batch is ready, but the loop has more to do than this

    async def _apply(self, records: Sequence[Any], caught_up: bool) -> None:
        snapshots: list[Snapshot] = []
        submissions: list[Submission] = []
        words: list[Heard] = []
        admitted: dict[int, int] = {}  # requests partition → the newest record seen admitting a job
        topic, webhooks = self.topic, self.webhooks
        for n, msg in enumerate(records, 1):
            if not n % YIELD_EVERY:
                await asyncio.sleep(0)  # decoding a full batch takes tens of milliseconds
            if msg.error() is not None:
                log.warning("notification feed: %s", msg.error())
            elif msg.topic() == topic:
                if (read := _decode(msg)) is not None:
                    snapshot, src = read
                    snapshots.append(snapshot)
                    if src is not None and src[1] > admitted.get(src[0], -1):
                        admitted[src[0]] = src[1]
            elif msg.topic() == webhooks:
                if self.view.watches(msg.key()) and (word := self._word(msg)) is not None:
                    words.append(word)
            elif (sub := _submission(msg)) is not None:
                submissions.append(sub)
        # Also with nothing fetched: the flush writes what the ingress's put_local evicted.
        await self.view.apply_batch(snapshots)
        if admitted:
            self.view.open_jobs.admitted(admitted)
        for sub in submissions:
            self.view.submitted(sub)
        for word in words:  # after the table's snapshots of the same batch: those may have it already
            self.view.heard(word)
        self.view.nudge()
        if caught_up:
            self.view.ready.set()

    def _word(self, msg: Any) -> Heard | None:
        """What a webhook record (verified by the bridge that wrote it) says of its job, parsed as
        the jobs agent parses it; None for one that does not parse (the jobs agent dead-letters it)."""
        try:
            provider, job_id, event = read_webhook(msg.value(), msg.headers(), self.connectors)
        except Exception as exc:
            log.debug("notification feed: webhook at %s[%s]@%s not heard: %s", msg.topic(), msg.partition(),
                      msg.offset(), exc)
            return None
        return Heard(provider, job_id, event)


def _report_crash(task: asyncio.Task[None]) -> None:
    # A dead feed means a view that silently stops changing: make that loud.
    if not task.cancelled() and task.exception() is not None:
        log.error("notification feed stopped", exc_info=task.exception())


def _submission(msg: Any) -> Submission | None:
    try:
        return Submission.from_slot(msg.key(), msg.value(), msg.timestamp()[1])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("skipping undecodable slot record at %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(),
                    exc)
        return None


def _decode(msg: Any) -> tuple[Snapshot, tuple[int, int] | None] | None:
    value = msg.value()
    if value is None:
        return None  # a tombstone: compaction's business, not a state
    try:
        return read_notification(value, msg.headers())
    except SchemaError as exc:
        log.warning("skipping undecodable snapshot at %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(),
                    exc)
        return None


__all__ = ["NotificationFeed"]
