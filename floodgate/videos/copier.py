"""Copy every completed job's video from the provider into Floodgate's own store.

Data flow: ``results`` (the public topic of final snapshots) → this consumer, in its own group
``<app_id>-videos`` → the provider's ``video_url``, fetched through the SSRF guard
(:mod:`connectors.storage.fetch`) → the store (:mod:`connectors.storage`), bytes first, then the
record with their size and SHA-256.

It writes nothing to Kafka and is no hop of the job pipeline: the job is ``completed`` (and its
slot at the provider freed) before the copy starts, and a slow or failing copy delays only the
copy. The public ``result.video_url`` is not written anywhere either: the API computes our signed
link when the job is read (:mod:`floodgate.videolinks`) and answers 503 + Retry-After for it
until the record is there.

Idempotent per job id: a job whose record exists is skipped, so a redelivered record (crash,
rebalance) or a second API process costs one small read. A failed copy is retried with backoff
when the failure may pass (timeouts, 5xx, 429 with its Retry-After, a body cut short or empty,
the store unreachable or refusing our credentials); a refusal that will not change (too large,
not a video, a private address, 4xx), or one that outlasts the retry budget, is recorded as
``failed`` with its reason (and, for the latter, ``gave_up``: the API then sends a viewer to the
provider's own copy, as while a copy is pending). A copy whose record cannot be written is not
done: its offset stays uncommitted, and the partition's next owner copies it again.
A copy given up on is started again when someone asks for its video (``copy_again``), at most
once every ``AGAIN_AFTER`` seconds: the provider's copy lives for an hour or more, and whatever
kept it from being copied (an outage at its CDN, our store unreachable) may have passed since.
Offsets are committed like the outgoing webhooks' (:mod:`floodgate.commit_tracker`): only past
records that are done, and only once the store has put their copies on disk (``VideoStore.sync``,
one per commit).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from connectors.storage import VideoRecord, VideoStore
from connectors.storage.fetch import VideoFetcher, guarded_fetch_session
from floodgate import codec
from floodgate.commit_tracker import CommitTracker, Ticket
from floodgate.errors import ConfigError, SchemaError, StorageError
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.results_consumer import COPY_WAIT_MS, results_consumer
from floodgate.settings import Settings
from floodgate.throttle import Backoff
from floodgate.topics import TopicNames

log = logging.getLogger(__name__)


AGAIN_AFTER = 60.0
"""Seconds after a copy was given up on (its record written) before a request for its video
starts it again: each viewer's request would otherwise start one."""


@dataclass(frozen=True, slots=True)
class CopyPolicy:
    """How hard to try one copy: ``max_attempts`` attempts, waiting as ``Backoff`` says (equal
    jitter) or as the source's Retry-After asks, but never past ``max_elapsed`` seconds."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_elapsed: float = 900.0

    def next_delay(self, attempts: int, elapsed: float, retry_after: float | None, rand: float) -> float | None:
        """Seconds before attempt ``attempts + 1``, or None to give up."""
        if attempts >= self.max_attempts:
            return None
        delay = Backoff(self.base_delay, 2.0, self.max_delay, "equal").delay(attempts - 1, rand)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return None if elapsed + delay > self.max_elapsed else delay


class _Abandoned(Exception):
    """Stopping mid-copy: leave the record uncommitted for the partition's next owner."""


class _Unrecorded(Exception):
    """The store refused the copy's record for good: leave the record uncommitted, so the copy
    is made again by the partition's next owner (after a restart or a rebalance) rather than lost."""


class VideoCopier:
    """The copy service. ``start()`` then ``stop()``; not restartable. ``fetcher`` for tests."""

    def __init__(self, settings: Settings, store: VideoStore, *, fetcher: VideoFetcher | None = None,
                 policy: CopyPolicy = CopyPolicy(), concurrency: int = 8, max_pending: int = 256,
                 commit_interval: float = 1.0, drain_timeout: float = 10.0,
                 rand: Callable[[], float] = random.random, clock: Callable[[], float] = time.time,
                 metrics: ApiMetrics | None = None) -> None:
        if not settings.kafka_bootstrap:
            raise ConfigError("settings.kafka_bootstrap must be resolved before starting the video copier")
        self._settings = settings
        self._store = store
        self._fetcher = fetcher
        self._session: aiohttp.ClientSession | None = None
        self._policy = policy
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_pending = max_pending
        self._commit_interval = commit_interval
        self._drain_timeout = drain_timeout
        self._rand = rand
        self._clock = clock
        self._metrics = metrics or api_metrics()
        self._topic = TopicNames(settings).results
        self._tracker: CommitTracker[int] = CommitTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._again: dict[str, asyncio.Task[None]] = {}
        """Job id → its copy started again on request (``copy_again``), while it runs."""
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._loops: list[asyncio.Task[None]] = []

    @property
    def group_id(self) -> str:
        return f"{self._settings.app_id}-videos"

    async def start(self) -> None:
        if self._fetcher is None:
            self._session = guarded_fetch_session(allow_private=self._settings.allow_private_webhooks)
            self._fetcher = VideoFetcher(self._session, allow_private=self._settings.allow_private_webhooks,
                                         max_bytes=self._settings.video_max_bytes)
        self._consumer = results_consumer(self._settings, self.group_id, COPY_WAIT_MS)
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        try:
            await self._consumer.start()
        except BaseException:
            await self.stop()
            raise
        self._loops = [asyncio.create_task(self._consume(), name="videos-consume"),
                       asyncio.create_task(self._commit_loop(), name="videos-commit")]

    async def stop(self) -> None:
        """Stop fetching, let running copies finish (up to ``drain_timeout``), commit, leave."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = self._tasks | set(self._again.values())
        if running:
            await asyncio.wait(running, timeout=self._drain_timeout)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._consumer is not None:
            await self._commit()
            await self._consumer.stop()
        if self._session is not None:
            await self._session.close()

    # --- one job ---------------------------------------------------------------------------------
    async def copy(self, job_id: str, url: str, completed_at_ms: int | None = None, *,
                   over: VideoRecord | None = None) -> VideoRecord:
        """Copy ``url`` into the store as ``job_id``'s video unless it is there already (or, with
        ``over``, unless the store holds another record than that one); retry what may pass;
        record a refusal. Returns the record. Raises ``_Abandoned`` when stopping, ``_Unrecorded``
        when the store refuses a failure's record for good. (A copy started again is counted by
        ``copy_again``, not among the results handled.)"""
        outcomes = self._metrics.videos if over is None else None
        existing = await self._retrying(job_id, lambda: self._store.record(job_id), what="read the record")
        if existing is not None and existing != over:
            if outcomes is not None:
                outcomes.labels("already_stored").inc()
            return existing
        started, attempts = self._clock(), 0
        while True:
            attempts += 1
            try:
                async with self._semaphore:
                    record = await self._copy_once(job_id, url)
                break
            except StorageError as exc:
                delay = self._policy.next_delay(attempts, self._clock() - started, exc.retry_after, self._rand()) \
                    if exc.retriable else None
                if delay is None:
                    record = VideoRecord(job_id, "failed", at_ms=int(self._clock() * 1000), reason=str(exc)[:500],
                                         gave_up=exc.retriable)
                    log.warning("videos: copy of %s failed after %d attempt(s): %s", job_id, attempts, exc)
                    break
                self._metrics.video_retries.inc()
                log.info("videos: copy of %s failed (%s); retrying in %.1fs", job_id, exc, delay)
                if await self._stopped_within(delay):
                    raise _Abandoned from exc
        if record.status == "failed":  # a stored video's record was written with its bytes
            try:
                await self._retrying(job_id, lambda: self._store.put_record(record), what="write the record")
            except StorageError as exc:
                raise _Unrecorded(f"cannot write the record of {job_id}: {exc}") from exc
        if outcomes is not None:
            outcomes.labels(record.status).inc()
        if record.status == "stored" and completed_at_ms:
            self._metrics.video_copy_lag.observe(max(0.0, self._clock() - completed_at_ms / 1000))
        return record

    def copy_again(self, record: VideoRecord, url: str) -> bool:
        """Start the copy of ``record``'s job from ``url`` again, in the background, if it was given
        up on ``AGAIN_AFTER`` seconds ago or more and no copy of it runs here; True if it started.
        A copy that fails again writes a new record, so the next try waits as long again in every
        process sharing the store."""
        job_id = record.job_id
        if (not record.gave_up or self._stopping.is_set() or job_id in self._again
                or len(self._again) >= self._max_pending or self._clock() - record.at_ms / 1000 < AGAIN_AFTER):
            return False
        task = asyncio.create_task(self._copy_again(record, url), name="videos-again")
        self._again[job_id] = task
        task.add_done_callback(lambda _: self._again.pop(job_id, None))
        self._metrics.video_copies_again.inc()
        log.info("videos: copying %s again (given up on %.0fs ago)", job_id, self._clock() - record.at_ms / 1000)
        return True

    def copies_again(self) -> list[asyncio.Task[None]]:
        """The copies started again (``copy_again``) still running."""
        return list(self._again.values())

    async def _copy_again(self, record: VideoRecord, url: str) -> None:
        try:
            await self.copy(record.job_id, url, over=record)
        except _Abandoned:
            return
        except Exception:  # nothing waits for this task: say what broke
            log.exception("videos: copying %s again failed", record.job_id)

    async def _copy_once(self, job_id: str, url: str) -> VideoRecord:
        assert self._fetcher is not None
        made: list[VideoRecord] = []
        async with self._fetcher.open(url) as download:
            def stored() -> VideoRecord:
                # Called by the store once the chunks are read: the size and hash are known then.
                made.append(VideoRecord(job_id, "stored", at_ms=int(self._clock() * 1000), size=download.size,
                                        sha256=download.hexdigest, content_type=download.content_type))
                return made[-1]

            async def not_empty() -> AsyncIterator[bytes]:
                async for chunk in download.chunks():
                    yield chunk
                if download.size == 0:
                    # Raised inside the chunks, so the store keeps nothing. Retriable, as a body cut
                    # short is: a 200 with no bytes for a job that completed with a video is a
                    # source not done yet or a glitch on its way, and the budget bounds the retries.
                    raise StorageError("no video: the source answered with an empty body", retriable=True)

            # The record goes with the bytes, in one write where the store can.
            await self._store.put_video(job_id, not_empty(), download.content_type, stored)
        return made[-1]

    async def _retrying(self, job_id: str, call: Callable[[], Any], *, what: str) -> Any:
        """A store call retried (with backoff, until stopping) while its error is retriable."""
        attempt = 0
        while True:
            try:
                return await call()
            except StorageError as exc:
                if not exc.retriable:
                    raise
                delay = Backoff(self._policy.base_delay, 2.0, self._policy.max_delay, "equal").delay(
                    min(attempt, 30), self._rand())
                attempt += 1
                log.warning("videos: cannot %s of %s (%s); retrying in %.1fs", what, job_id, exc, delay)
                if await self._stopped_within(delay):
                    raise _Abandoned from exc

    # --- consuming -------------------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping.is_set():
            room = self._max_pending - len(self._tasks)
            if room <= 0:
                consumer.pause(*consumer.assignment())
                self._room.clear()
                await self._wait(self._room, 0.5)
                room = self._max_pending - len(self._tasks)
            if room > 0 and consumer.paused():
                consumer.resume(*consumer.paused())
            try:
                # Polling even while paused keeps this member in the group (max.poll.interval).
                batch = await consumer.getmany(timeout_ms=200 if room > 0 else 0, max_records=max(room, 1))
            except KafkaError as exc:
                log.warning("videos: fetch failed (%s); retrying", exc)
                await self._stopped_within(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._spawn(tp.partition, record)

    def _spawn(self, partition: int, record: ConsumerRecord[Any, Any]) -> None:
        try:
            ticket = self._tracker.start(partition, record.offset)
        except ValueError:  # the position moved back without a rebalance: start the partition afresh
            self._tracker.forget([partition])
            ticket = self._tracker.start(partition, record.offset)
        task = asyncio.create_task(self._process(record, ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, record: ConsumerRecord[Any, Any], ticket: Ticket[int]) -> None:
        try:
            snapshot = codec.decode("JobSnapshot", record.value or b"", record.headers)
        except SchemaError as exc:
            # The outgoing webhooks read the same records and dead-letter this one; one copy is enough.
            log.warning("videos: skipping undecodable record %s[%d]@%d: %s", record.topic, record.partition,
                        record.offset, exc)
            snapshot = None
        try:
            if snapshot is not None and snapshot["status"] == "completed" and snapshot.get("video_url"):
                await self.copy(snapshot["job_id"], snapshot["video_url"], snapshot.get("updated_at"))
            else:
                self._metrics.videos.labels("skipped").inc()
        except _Abandoned:
            return  # uncommitted: the partition's next owner copies it
        except _Unrecorded as exc:
            # Uncommitted too, though this partition's commits stop here until then: finishing
            # would lose the video for good (its link would wait for a copy nobody makes).
            log.error("videos: %s; %s[%d]@%d stays uncommitted until the partition is next assigned", exc,
                      record.topic, record.partition, record.offset)
            return
        except Exception:  # a bug must not wedge the partition's commits
            log.exception("videos: unexpected error at %s[%d]@%d", record.topic, record.partition, record.offset)
        finally:
            self._room.set()
        self._tracker.finish(ticket)

    # --- committing ------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while not await self._stopped_within(self._commit_interval):
            await self._commit()

    async def _commit(self, partitions: Iterable[int] | None = None) -> None:
        assert self._consumer is not None
        owned = {tp.partition for tp in self._consumer.assignment()}
        offsets = self._tracker.committable(owned if partitions is None else owned.intersection(partitions))
        if not offsets:
            return
        try:
            # The copies these offsets pass are on disk before the offsets are (the local store
            # writes without an fsync per file and syncs them all here: one sync a commit).
            await self._store.sync()
        except StorageError as exc:
            log.warning("videos: cannot sync the store before committing %s (%s); later", offsets, exc)
            return
        try:
            await self._consumer.commit({TopicPartition(self._topic, p): o for p, o in offsets.items()})
        except KafkaError as exc:
            log.warning("videos: commit of %s failed: %s", offsets, exc)
            return
        self._tracker.mark_committed(offsets)

    async def revoked(self, partitions: set[int]) -> None:
        await self._commit(partitions)
        self._tracker.forget(partitions)

    # --- waiting ---------------------------------------------------------------------------------
    async def _stopped_within(self, seconds: float) -> bool:
        return await self._wait(self._stopping, seconds)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
        return event.is_set()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, copier: VideoCopier) -> None:
        self._copier = copier

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._copier.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


__all__ = ["CopyPolicy", "VideoCopier"]
