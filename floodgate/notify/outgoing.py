"""Deliver each job's final result to its ``webhook_url``: the outgoing half of notification fan-out.

Reads ``results`` in the consumer group ``<app_id>-webhooks``, so any number of API processes
share the partitions and each result is handled by one of them. Deliveries run concurrently
(``concurrency`` HTTP attempts at once, ``max_pending`` records held in memory; beyond that the
partitions are paused, not the poll loop, so the group membership survives backpressure).

One slow receiver never stalls the others. Each destination (``host:port`` of the
``webhook_url``) has a lane (:mod:`floodgate.lanes`): at most ``per_destination``
attempts at once (1/``shares`` of ``concurrency``) while the others need slots, and a circuit
breaker; a destination alone may use all but a ``BURST_RESERVE``th of the slots, which stay free
for the next destination to come. Toward ``max_pending`` a destination's records count only up to
its share (1/``shares`` of ``max_pending``); the rest wait in memory without holding up the fetch,
which stops for them only at ``max_held`` records in all. So a black hole with hundreds of results
in flight holds at most 48 of the 64 attempt slots (8 once others need slots: its hung attempts
time out and are not replaced past its cap) and 128 of the 1,024 pending places, and everyone
else's results are still fetched and delivered.

A destination holds at most ``max_per_destination`` records (half of ``max_held``, as a video host
holds half of the copier's, to the copier's rule, here ``Destinations.sheds``/``fetch_waits``). At
its bound, while its breaker is open, its next results are dead-lettered at once as failed after
0 attempts: what its breaker's wait would have come to at the end of their retry budget, without
holding memory meanwhile. While its breaker is closed it is taking its deliveries, however
slowly, and the fetch waits for it to be under its bound again (records of it in a batch fetched
before are held past it) rather than dead-letter deliveries it would take: a lag of thousands of
results for one healthy receiver after a restart would otherwise be shed. A black hole's
attempts time out (10 s), which opens its breaker (5 failures in a row; a platform's, 20), so it
holds up the others' fetch for that long at most, once it holds its bound: before the bound it
filled all 4,096 places and paused everyone's fetch until its deliveries gave up with their
retry budget, up to ten minutes later (``tests/unit/test_outgoing_isolation.py``).

At-least-once: an offset is committed only when it and every offset before it in its partition
are done — delivered, skipped, or parked in ``dlq`` (:mod:`floodgate.commit_tracker`).
A crash or rebalance may repeat a delivery; the ``webhook-id`` stays ``<job_id>:<version>`` so
receivers drop the copy. A delivery that keeps failing is retried with backoff
(:class:`RetryPolicy`) and then dead-lettered with the original bytes; it holds up the commit
point of its partition for its retry budget at most, and never the others' deliveries. Records
waiting in a lane are in flight like any other (tracked from fetch to finish), so the commit
point cannot pass them however long they wait.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from connectors.notifiers.base import EVENT_TYPES, Notification, Notifier
from floodgate import codec
from floodgate.commit_tracker import CommitTracker, Ticket
from floodgate.dead_letter import dead_letter_record
from floodgate.errors import ConfigError, NotificationError, SchemaError
from floodgate.lanes import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_OPEN_FOR,
    Destinations,
    Lanes,
    fetch_room,
    url_destination,
)
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.notify.delivery import deliver
from floodgate.notify.retry import RetryPolicy
from floodgate.results_consumer import DELIVERY_WAIT_MS, results_consumer
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.videolinks import VideoLinks

log = logging.getLogger(__name__)

DEFAULT_POLICY = RetryPolicy()
HELD_PER_PENDING = 4
"""``max_held`` (records in memory, whoever they are for) is this many times ``max_pending`` by
default: a few kilobytes each, so the defaults hold at most some tens of megabytes."""
BURST_RESERVE = 4
"""A destination alone may run past its share of the attempt slots, but never into the last
quarter of them: those stay free for any other destination's results."""


def webhook_destination(url: str) -> str:
    """The lane of a webhook URL: its host (as the connector resolves it) and port, e.g.
    ``hooks.example.com:443``; every path on one receiver shares it. A URL that does not parse is a
    lane of its own (its delivery fails at once)."""
    return url_destination(url)


@dataclasses.dataclass
class WebhookStats:
    delivered: int = 0
    failed: int = 0
    """Given up after retries or a permanent error (each also dead-lettered)."""
    retries: int = 0
    skipped: int = 0
    """No webhook_url, or not a final state."""
    dead_lettered: int = 0
    """Records written to dlq: failed deliveries plus undecodable records."""
    shed: int = 0
    """Failed deliveries given up on without an attempt: their destination held ``max_per_destination``
    and its breaker was open."""


class _Abandoned(Exception):
    """Stopping while a record waits (backoff, dlq retry): leave it uncommitted for the next owner."""


class OutgoingWebhooks:
    """The webhook delivery service. ``start()`` then ``stop()``; not restartable.

    Pass ``notifier`` (any :class:`Notifier`) or ``session`` for tests; by default a
    :class:`~connectors.notifiers.webhook.WebhookNotifier` on an SSRF-guarded session is built
    from ``settings``. Raises ``ConfigError`` if ``settings.kafka_bootstrap`` is empty.

    Another channel (push to phones, ``floodgate.notify.push``) is a subclass that names itself
    (``channel``: its consumer group and logs), says which results it wants (``wants``), builds
    its notifier (``build_notifier``) and counts its outcomes (``count``).
    """

    channel = "webhooks"
    noun = "webhook"
    """What one delivery is called in a dead letter's reason."""
    shares = 8
    """A destination may use 1/``shares`` of ``concurrency`` (attempts at once) and of
    ``max_pending`` (records counted toward pausing the fetch)."""
    breaker_failures = DEFAULT_FAILURE_THRESHOLD
    """Failed attempts in a row after which a destination gets one attempt every ``breaker_open_for`` s."""
    breaker_open_for = DEFAULT_OPEN_FOR

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None,
                 session: aiohttp.ClientSession | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                 concurrency: int = 64, max_pending: int = 1024, per_destination: int | None = None,
                 max_held: int | None = None, max_per_destination: int | None = None,
                 commit_interval: float = 1.0, drain_timeout: float = 10.0,
                 rand: Callable[[], float] = random.random, metrics: ApiMetrics | None = None) -> None:
        """``concurrency`` attempts at once over all destinations, ``per_destination`` of them
        (default 1/``shares``) for one destination while others need slots; ``max_pending``
        records held before the fetch pauses, counting each destination's only up to 1/``shares``
        of it, and ``max_held`` (default ``HELD_PER_PENDING`` times it) in all,
        ``max_per_destination`` (default half of that) of them for one destination. Raises
        ``ConfigError`` when ``settings.kafka_bootstrap`` is empty or a bound is below 1
        (``max_held`` below ``max_pending``)."""
        if not settings.kafka_bootstrap:
            raise ConfigError("settings.kafka_bootstrap must be resolved before starting webhooks")
        max_held = HELD_PER_PENDING * max_pending if max_held is None else max_held
        max_per_destination = max(1, max_held // 2) if max_per_destination is None else max_per_destination
        if min(concurrency, max_pending, max_per_destination) < 1 or max_held < max_pending:
            raise ConfigError("concurrency, max_pending and max_per_destination must be at least 1, max_held at "
                              "least max_pending")
        self._settings = settings
        self._names = TopicNames(settings)
        self._notifier = notifier
        self._session = session
        self._owns_session = False
        self._policy = policy
        self._semaphore = asyncio.Semaphore(concurrency)
        self._metrics = metrics or api_metrics()
        openings = self._metrics.breaker_openings.labels(self.channel)

        def opened() -> None:
            openings.inc()
            self._slot_freed.set()  # the fetch may have waited for this destination: it sheds now

        self._lanes = Lanes(Destinations(
            per_destination or max(1, concurrency // self.shares), max(1, max_pending // self.shares),
            failure_threshold=self.breaker_failures, open_for=self.breaker_open_for,
            burst_until=concurrency - concurrency // BURST_RESERVE, most=max_per_destination), on_open=opened)
        self._max_pending = max_pending
        self._max_held = max_held
        self._max_per_destination = max_per_destination
        self._commit_interval = commit_interval
        self._drain_timeout = drain_timeout
        self._rand = rand
        self._stats = WebhookStats()
        self._tracker: CommitTracker[int] = CommitTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._assignment: frozenset[int] = frozenset()
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.link_base = settings.public_url
        """Base URL of the video links in webhook bodies (the API sets its own address when
        FLOODGATE_PUBLIC_URL is empty); empty: webhooks carry the provider's URL."""

    @property
    def group_id(self) -> str:
        return f"{self._settings.app_id}-{self.channel}"

    # --- what a channel decides --------------------------------------------------------------
    def wants(self, notification: Notification) -> bool:
        """Whether this channel delivers ``notification`` (else it is counted as skipped)."""
        return bool(notification.webhook_url) and notification.status in EVENT_TYPES

    def destination(self, notification: Notification) -> str:
        """The lane ``notification`` (one it ``wants``) is delivered in: what fails or hangs as one.
        For webhooks, the receiver's ``host:port``: every path on one server shares its connections,
        its timeouts and its outages, and two ports of a host are two servers; a finer key (the
        URL) would let one receiver take a bound per path, a coarser one (the domain) would let one
        tenant's dead server shed another's."""
        return webhook_destination(notification.webhook_url or "")

    async def build_notifier(self) -> Notifier:
        """The notifier used when none was passed in; called once, by ``start``."""
        from connectors.notifiers.webhook import WebhookNotifier, guarded_session

        if self._session is None:
            self._session = guarded_session(allow_private=self._settings.allow_private_webhooks)
            self._owns_session = True
        return WebhookNotifier.from_settings(self._settings, self._session)

    async def close_notifier(self) -> None:
        """Release what ``build_notifier`` opened; called once, by ``stop``."""
        if self._owns_session and self._session is not None:
            await self._session.close()

    def count(self, outcome: str | None, retries: int = 0) -> None:
        """Metrics for one result: ``outcome`` is delivered, failed, skipped, invalid, or None when
        the service stopped before the result was finished (it is delivered again later)."""
        if outcome is not None:
            self._metrics.outgoing.labels(outcome).inc()
        if retries:
            self._metrics.outgoing_retries.inc(retries)

    @property
    def stats(self) -> WebhookStats:
        """A copy of the counters."""
        return dataclasses.replace(self._stats)

    @property
    def max_per_destination(self) -> int:
        """The deliveries one destination holds before the fetch waits for it (its breaker closed) or
        its next ones are dead-lettered at once (open)."""
        return self._max_per_destination

    @property
    def assignment(self) -> frozenset[int]:
        """Partitions of ``results`` this instance currently owns."""
        return self._assignment

    async def start(self) -> None:
        """Join the consumer group and begin delivering; raises aiokafka errors if the broker is unreachable."""
        if self._notifier is None:
            self._notifier = await self.build_notifier()
        # Read at each scrape from the lanes themselves: no second count to keep in step.
        rules = self._lanes.rules
        self._metrics.breakers_open.labels(self.channel).set_function(lambda: rules.open_breakers)
        bootstrap = self._settings.kafka_bootstrap
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        self._consumer = results_consumer(self._settings, self.group_id, DELIVERY_WAIT_MS)
        self._consumer.subscribe([self._names.results], listener=_Rebalance(self))
        try:
            await self._producer.start()
            await self._consumer.start()
        except BaseException:
            await self.stop()
            raise
        self._loops = [asyncio.create_task(self._consume(), name=f"{self.channel}-consume"),
                       asyncio.create_task(self._commit_loop(), name=f"{self.channel}-commit")]

    async def stop(self) -> None:
        """Stop fetching, let in-flight attempts finish (up to ``drain_timeout``), commit, leave the group.

        Records still unfinished then stay uncommitted: the partition's next owner delivers them.
        Safe to call more than once, and after a failed ``start``.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._lanes.close()  # deliveries waiting for their destination stop waiting, as backoffs do
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._drain_timeout)
        for task in set(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer is not None:
            await self._commit()
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self.close_notifier()

    # --- consuming -------------------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping.is_set():
            room = self._room()
            if room <= 0:
                consumer.pause(*consumer.assignment())
                await self._wait(self._slot_freed, 0.5)
                self._slot_freed.clear()
                room = self._room()
            if room > 0 and consumer.paused():
                consumer.resume(*consumer.paused())
            try:
                # Polling even while paused keeps this member alive in the group (max.poll.interval).
                batch = await consumer.getmany(timeout_ms=200 if room > 0 else 0, max_records=max(room, 1))
            except KafkaError as exc:
                log.warning("%s: fetch failed (%s); retrying", self.channel, exc)
                await self._stopped_within(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._spawn(tp.partition, record)

    def _room(self) -> int:
        """How many more records to fetch (see the module docstring)."""
        rules = self._lanes.rules
        if rules.fetch_waits:
            return 0
        return fetch_room(len(self._tasks), rules.overflow, self._max_pending, self._max_held)

    def _spawn(self, partition: int, record: ConsumerRecord[Any, Any]) -> None:
        try:
            ticket = self._tracker.start(partition, record.offset)
        except ValueError:
            # The fetch position moved back (offset reset) without a rebalance. Restarting the
            # partition's tracking is safe: the re-read offsets are all <= those still in flight.
            log.warning("%s: %s[%d] went back to offset %d", self.channel, record.topic, partition, record.offset)
            self._tracker.forget([partition])
            ticket = self._tracker.start(partition, record.offset)
        # Read here, not in the task, so the destination holds the record from now on and the next
        # room (``_room``) is exact: a batch of one black hole's records counts as its share only.
        read = self._read(record)
        destination = self.destination(read) if isinstance(read, Notification) and self.wants(read) else None
        rules = self._lanes.rules
        # Past its bound with its breaker open, a destination's record would only wait, holding
        # memory, until its retry budget gives it up: give it up now. (Closed, the fetch waits for
        # the destination instead; a record of it from a batch fetched before is held past it.)
        shed = destination is not None and rules.sheds(destination)
        held = None if shed else destination
        if held is not None:
            rules.enter(held)
        task = asyncio.create_task(self._process(record, ticket, read, destination, shed))
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            # A done callback, not the task's finally: it runs even for a task cancelled before it
            # started, and _consume is woken only once the record no longer counts.
            self._tasks.discard(task)
            if held is not None:
                rules.leave(held)
            self._slot_freed.set()

        task.add_done_callback(done)

    @staticmethod
    def _read(record: ConsumerRecord[Any, Any]) -> Notification | Exception:
        try:
            return Notification.from_snapshot(codec.decode("JobSnapshot", record.value or b"", record.headers))
        except Exception as exc:  # SchemaError is dead-lettered as invalid; anything else as an internal error
            return exc

    async def _process(self, record: ConsumerRecord[Any, Any], ticket: Ticket[int], read: Notification | Exception,
                       destination: str | None, shed: bool) -> None:
        try:
            await self._handle(record, read, destination, shed)
        except _Abandoned:
            return  # not finished: the offset stays uncommitted and is redelivered
        except Exception as exc:  # a bug here must not wedge the partition's commits
            log.exception("%s: unexpected error at %s[%d]@%d", self.channel, record.topic, record.partition,
                          record.offset)
            try:
                await self._dead_letter(record, f"internal error: {exc}", exc)
            except _Abandoned:
                return
            except Exception:  # not even parked: leave it uncommitted rather than lose it
                log.exception("%s: cannot dead-letter %s[%d]@%d", self.channel, record.topic, record.partition,
                              record.offset)
                return
        self._tracker.finish(ticket)

    async def _handle(self, record: ConsumerRecord[Any, Any], read: Notification | Exception,
                      destination: str | None, shed: bool) -> None:
        """``shed``: give the delivery up without an attempt (its destination holds
        ``max_per_destination`` deliveries already, and its breaker is open)."""
        if isinstance(read, SchemaError):
            self.count("invalid")
            await self._dead_letter(record, f"undecodable JobSnapshot: {read}", read)
            return
        if isinstance(read, Exception):
            raise read
        if destination is None:
            self._stats.skipped += 1
            self.count("skipped")
            return
        if shed:
            # As an open breaker's delivery ends once its retry budget is spent, without the wait:
            # failed, and dead-lettered with the original record and the same kind of reason.
            self._stats.failed += 1
            self._stats.shed += 1
            self._metrics.deliveries_shed.labels(self.channel).inc()
            self.count("failed")
            error = NotificationError(
                f"no attempt: {destination} is failing (its breaker is open) and holds {self.max_per_destination} "
                "deliveries already", retriable=True)
            await self._dead_letter(record, f"{self.noun} delivery failed after 0 attempt(s): {error}", error)
            return
        notification = self._with_our_link(read)
        assert self._notifier is not None
        outcome = await deliver(self._notifier, notification, self._policy, semaphore=self._semaphore,
                                rand=self._rand, wait=self._stopped_within, lanes=self._lanes,
                                destination=destination)
        retries = max(0, outcome.attempts - 1)
        self._stats.retries += retries
        if outcome.abandoned:
            self.count(None, retries)
            raise _Abandoned
        if outcome.error is None:
            self._stats.delivered += 1
            self.count("delivered", retries)
            return
        self._stats.failed += 1
        self.count("failed", retries)
        await self._dead_letter(
            record, f"{self.noun} delivery failed after {outcome.attempts} attempt(s): {outcome.error}",
            outcome.error)

    def _with_our_link(self, notification: Notification) -> Notification:
        """With videos kept in our store, the webhook carries our signed link, as GET does (made now,
        so it is valid for FLOODGATE_VIDEO_LINK_TTL from delivery); without a base URL to build it
        on, the provider's."""
        settings = self._settings
        if (settings.video_store == "off" or not self.link_base or notification.status != "completed"
                or not notification.video_url):
            return notification
        links = VideoLinks(settings.video_link_key, settings.video_link_ttl)
        return dataclasses.replace(notification, video_url=links.url(self.link_base, notification.job_id,
                                                                      time.time()))

    async def _dead_letter(self, record: ConsumerRecord[Any, Any], reason: str, exc: BaseException) -> None:
        """Write a DeadLetter and wait for the ack; retries until stopping (then ``_Abandoned``)."""
        assert self._producer is not None
        value, headers = codec.encode(
            "DeadLetter", dead_letter_record(record, reason, exc, at_ms=time.time_ns() // 1_000_000))
        delay = 0.1
        while True:
            try:
                await self._producer.send_and_wait(self._names.dlq, value, headers=headers)
                self._stats.dead_lettered += 1
                log.warning("%s: dead-lettered %s[%d]@%d: %s", self.channel, record.topic, record.partition,
                            record.offset, reason)
                return
            except KafkaError as error:
                log.warning("%s: cannot write to %s (%s); retrying", self.channel, self._names.dlq, error)
            if await self._stopped_within(delay):
                raise _Abandoned
            delay = min(delay * 2, 5.0)

    # --- committing ------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while not await self._stopped_within(self._commit_interval):
            await self._commit()

    async def _commit(self, partitions: Iterable[int] | None = None) -> None:
        assert self._consumer is not None
        owned = {tp.partition for tp in self._consumer.assignment()}
        wanted = owned if partitions is None else owned.intersection(partitions)
        offsets = self._tracker.committable(wanted)
        if not offsets:
            return
        topic = self._names.results
        try:
            await self._consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
        except KafkaError as exc:
            # Typically a rebalance in progress; the next round (or the new owner) commits instead.
            log.warning("%s: commit of %s failed: %s", self.channel, offsets, exc)
            return
        self._tracker.mark_committed(offsets)

    async def _revoked(self, partitions: set[int]) -> None:
        await self._commit(partitions)
        self._tracker.forget(partitions)
        self._assignment = self._assignment - partitions

    def _assigned(self, partitions: set[int]) -> None:
        self._assignment = frozenset(partitions)

    # --- waiting ---------------------------------------------------------------------------------
    async def _stopped_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as the service is stopping."""
        return await self._wait(self._stopping, seconds)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
        return event.is_set()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: OutgoingWebhooks) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._service._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._service._assigned({tp.partition for tp in assigned})


__all__ = ["OutgoingWebhooks", "RetryPolicy", "WebhookStats", "fetch_room", "webhook_destination"]
