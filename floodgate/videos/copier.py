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

One slow source never holds up the others' copies. Each host the videos come from (``host:port``
of the ``video_url``: a provider's CDN, a bucket) has a lane (:mod:`floodgate.lanes`, as each
webhook receiver has): at most ``per_host`` copies at once (1/``SHARES`` of ``concurrency``) while
other hosts need slots, all but the last ``BURST_RESERVE``th of them when it is alone, and a
circuit breaker (after ``FLOODGATE_VIDEO_BREAKER_FAILURES`` failed copies in a row, default five,
one probe every ``FLOODGATE_VIDEO_BREAKER_OPEN_FOR`` seconds, default 30; its copies wait without a
slot and are given up on with their retry budget). Toward ``max_pending`` a host's copies count
only up to its share (1/``SHARES``); the rest wait without pausing the fetch, which stops for them
only at ``max_held`` copies in all. A host holds at most ``max_per_host`` copies (half of
``max_held``), by the lanes' bound (``Destinations(most=...)``, the outgoing webhooks' rule too):
past that, while its breaker is open, a new copy for it is given up on at once (``sheds``), as its
retry budget would have (recorded with ``gave_up``, so a request for the video starts it again);
while its breaker is closed its copies are being made, however slowly, and the fetch waits for it
(``fetch_waits``) until it is under its bound again or its breaker opens, which wakes the fetch at
once, rather than give up copies that would succeed: a given-up copy sends its viewers to the
provider's copy, which expires, until someone asks for the video again. A copy from it in a batch
fetched before it was full is held past its bound. A copy started again on request (``copy``, from
``copy_again``) meets the same bound with the same outcome: given up on at once while the breaker
is open, else it waits, outside the host's count, until the host has room or its breaker opens
(``tests/unit/test_video_copier_again.py``). So a CDN that accepts connections and never
answers holds 6 of the 8 copy slots at most (its hung copies are not replaced past 2 while other
hosts need slots), and the copies from every other host are fetched and made meanwhile (once it
holds ``max_per_host``, only after its copies' timeouts have opened its breaker:
``tests/unit/test_video_copier_isolation.py``; before, one global cap of 8 copies and 256 pending
let it stop them all until its copies timed out).
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
from floodgate.lanes import Destinations, Lanes, Verdict, fetch_room, url_destination
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.results_consumer import COPY_WAIT_MS, results_consumer
from floodgate.settings import Settings
from floodgate.throttle import Backoff
from floodgate.topics import TopicNames

log = logging.getLogger(__name__)


AGAIN_AFTER = 60.0
"""Seconds after a copy was given up on (its record written) before a request for its video
starts it again: each viewer's request would otherwise start one."""
SHARES = 4
"""A source host may use 1/``SHARES`` of the copy slots while other hosts need them (2 of 8), and
count 1/``SHARES`` of ``max_pending`` toward pausing the fetch: providers are few, and a
deployment's videos come from a handful of hosts, not the thousands of webhook receivers."""
BURST_RESERVE = 4
"""A host alone may run past its share of the copy slots, but never into the last quarter of
them: those stay free for the first copy from any other host."""
HELD_PER_PENDING = 4
"""``max_held`` (copies in memory, whichever host they are from) is this many times
``max_pending`` by default: a record and a task each, a few kilobytes."""
PAUSED_RECHECK = 0.5
"""Seconds the paused fetch waits for a copy to end or a breaker to open (either wakes it at
once) before it looks at its room, and polls to stay in its group, anyway."""


@dataclass(frozen=True, slots=True)
class _Job:
    """What a record asks of the copier: a completed job's video to copy."""

    job_id: str
    url: str
    completed_at_ms: int | None
    host: str


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
                 per_host: int | None = None, max_held: int | None = None, max_per_host: int | None = None,
                 commit_interval: float = 1.0, drain_timeout: float = 10.0,
                 rand: Callable[[], float] = random.random, clock: Callable[[], float] = time.time,
                 metrics: ApiMetrics | None = None) -> None:
        """``concurrency`` copies at once over all hosts, ``per_host`` of them (default
        1/``SHARES``) for one host while others need slots; ``max_pending`` copies held before the
        fetch pauses, counting each host's only up to 1/``SHARES`` of it, and ``max_held`` (default
        ``HELD_PER_PENDING`` times it) in all, ``max_per_host`` (default half of that) of them for
        one host. Each host's breaker opens after ``settings.video_breaker_failures`` failed copies
        in a row and lets a probe through every ``settings.video_breaker_open_for`` seconds. Raises
        ``ConfigError`` when ``settings.kafka_bootstrap`` is empty or a bound is below 1
        (``max_held`` below ``max_pending``)."""
        if not settings.kafka_bootstrap:
            raise ConfigError("settings.kafka_bootstrap must be resolved before starting the video copier")
        max_held = HELD_PER_PENDING * max_pending if max_held is None else max_held
        max_per_host = max(1, max_held // 2) if max_per_host is None else max_per_host
        if min(concurrency, max_pending, max_per_host) < 1 or max_held < max_pending:
            raise ConfigError("concurrency, max_pending and max_per_host must be at least 1, max_held at least "
                              "max_pending")
        self._settings = settings
        self._store = store
        self._fetcher = fetcher
        self._session: aiohttp.ClientSession | None = None
        self._policy = policy
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_pending = max_pending
        self._max_held = max_held
        self._max_per_host = max_per_host
        self._commit_interval = commit_interval
        self._drain_timeout = drain_timeout
        self._rand = rand
        self._clock = clock
        self._metrics = metrics or api_metrics()
        openings = self._metrics.breaker_openings.labels("videos")

        def opened() -> None:
            openings.inc()
            self._freed.set()  # the fetch may be waiting for this host: its next copies are shed now

        self._lanes = Lanes(Destinations(
            per_host or max(1, concurrency // SHARES), max(1, max_pending // SHARES),
            failure_threshold=settings.video_breaker_failures, open_for=settings.video_breaker_open_for,
            burst_until=concurrency - concurrency // BURST_RESERVE, most=max_per_host), on_open=opened)
        self._topic = TopicNames(settings).results
        self._tracker: CommitTracker[int] = CommitTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._again: dict[str, asyncio.Task[None]] = {}
        """Job id → its copy started again on request (``copy_again``), while it runs."""
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
        """Set when a copy held in memory ends or a host's breaker opens: the fetch may have room again."""
        self._consumer: AIOKafkaConsumer | None = None
        self._loops: list[asyncio.Task[None]] = []

    @property
    def group_id(self) -> str:
        return f"{self._settings.app_id}-videos"

    @property
    def max_per_host(self) -> int:
        """The copies one host holds before the fetch waits for it (its breaker closed) or its next
        ones are given up on at once (open)."""
        return self._max_per_host

    async def start(self) -> None:
        if self._fetcher is None:
            self._session = guarded_fetch_session(allow_private=self._settings.allow_private_webhooks)
            self._fetcher = VideoFetcher(self._session, allow_private=self._settings.allow_private_webhooks,
                                         max_bytes=self._settings.video_max_bytes)
        # Read at each scrape from the lanes themselves: no second count to keep in step.
        rules = self._lanes.rules
        self._metrics.breakers_open.labels("videos").set_function(lambda: rules.open_breakers)
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
        self._lanes.close()  # copies waiting for their host stop waiting, as backoffs do
        self._freed.set()  # and so do copies started again that wait for their host's room
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
        ``over``, unless the store holds another record than that one); retry what may pass, in
        the lane of ``url``'s host; record a refusal. Returns the record. Raises ``_Abandoned``
        when stopping, ``_Unrecorded`` when the store refuses a failure's record for good. (A copy
        started again is counted by ``copy_again``, not among the results handled.)

        Held to the host's bound as a fetched copy is (``_spawn``): while the host holds
        ``max_per_host`` copies with its breaker closed, this waits for it to have room (or for its
        breaker to open) before the host holds it; at the bound with the breaker open, the copy is
        given up on at once, recorded as given up."""
        job = _Job(job_id, url, completed_at_ms, url_destination(url))
        rules = self._lanes.rules
        while rules.waits(job.host):
            if self._stopping.is_set():
                raise _Abandoned
            # Set by every copy that ends and every breaker that opens; cleared right before the
            # wait, with no await since the look at the bound, so no wake is missed.
            self._freed.clear()
            await self._wait(self._freed, PAUSED_RECHECK)
        if rules.sheds(job.host):
            return await self._copy(job, over=over, shed=True)
        rules.enter(job.host)
        try:
            return await self._copy(job, over=over)
        finally:
            rules.leave(job.host)
            self._freed.set()  # a copy waiting for this host's room may go on

    async def _copy(self, job: _Job, *, over: VideoRecord | None = None, shed: bool = False) -> VideoRecord:
        """``copy`` of a job whose host is held already. ``shed``: give it up without an attempt
        (its host holds ``max_per_host`` copies already and is failing)."""
        job_id = job.job_id
        outcomes = self._metrics.videos if over is None else None
        existing = await self._retrying(job_id, lambda: self._store.record(job_id), what="read the record")
        if existing is not None and existing != over:
            if outcomes is not None:
                outcomes.labels("already_stored").inc()
            return existing
        if shed:
            self._metrics.video_copies_shed.inc()
            record = self._failed(job_id, StorageError(
                f"not copied: {job.host} holds {self._max_per_host} copies already and is failing", retriable=True),
                attempts=0)
        else:
            record = await self._attempts(job)
        if record.status == "failed":  # a stored video's record was written with its bytes
            try:
                await self._retrying(job_id, lambda: self._store.put_record(record), what="write the record")
            except StorageError as exc:
                raise _Unrecorded(f"cannot write the record of {job_id}: {exc}") from exc
        if outcomes is not None:
            outcomes.labels(record.status).inc()
        if record.status == "stored" and job.completed_at_ms:
            self._metrics.video_copy_lag.observe(max(0.0, self._clock() - job.completed_at_ms / 1000))
        return record

    async def _attempts(self, job: _Job) -> VideoRecord:
        """Attempts at ``job``'s copy, each in a slot of its host's lane and then a global one
        (neither held during a backoff), until one stores the video, one is refused for good, or
        the budget is spent (waiting for the lane included). Returns the record, stored or failed."""
        job_id, host = job.job_id, job.host
        started, attempts, blamed = self._clock(), 0, False
        last: StorageError | None = None
        while True:
            slot = await self._lanes.acquire(host, self._policy.max_elapsed - (self._clock() - started))
            if slot is None:
                if self._lanes.closed:
                    raise _Abandoned
                # Its breaker open, or the host slower than its videos arrive: either way the budget
                # that bounds how long an offset stays uncommitted is spent.
                return self._failed(job_id, StorageError(
                    f"no attempt within the retry budget: {host} is failing or slower than its videos arrive"
                    + ("" if last is None else f" (last: {last})"), retriable=True), attempts)
            attempts += 1
            sourced: list[StorageError] = []
            verdict: Verdict = "neutral"
            try:
                async with self._semaphore:
                    record = await self._copy_once(job_id, job.url, sourced)
                verdict = "delivered"
                return record
            except StorageError as exc:
                error = last = exc
                # The host is to blame for a failure that may pass and came from it, not from our
                # store; once per copy, as one object failing again and again is no sign that its
                # host is down, and always for the breaker's probe, which is asked just that.
                if exc.retriable and exc in sourced and (slot.probe or not blamed):
                    verdict = "failed"
                    blamed = True
            finally:
                self._lanes.release(slot, verdict)
            delay = self._policy.next_delay(attempts, self._clock() - started, error.retry_after, self._rand()) \
                if error.retriable else None
            if delay is None:
                return self._failed(job_id, error, attempts)
            self._metrics.video_retries.inc()
            log.info("videos: copy of %s failed (%s); retrying in %.1fs", job_id, error, delay)
            if await self._stopped_within(delay):
                raise _Abandoned from error

    def _failed(self, job_id: str, error: StorageError, attempts: int) -> VideoRecord:
        """The record of a copy refused (``error`` not retriable) or given up on (it is)."""
        log.warning("videos: copy of %s failed after %d attempt(s): %s", job_id, attempts, error)
        return VideoRecord(job_id, "failed", at_ms=int(self._clock() * 1000), reason=str(error)[:500],
                           gave_up=error.retriable)

    def copy_again(self, record: VideoRecord, url: str) -> bool:
        """Start the copy of ``record``'s job from ``url`` again, in the background, if it was given
        up on ``AGAIN_AFTER`` seconds ago or more and no copy of it runs here; True if it started.
        A copy that fails again writes a new record, so the next try waits as long again in every
        process sharing the store. Its host's bound holds for it as ``copy`` says."""
        job_id = record.job_id
        if (not record.gave_up or self._stopping.is_set() or job_id in self._again
                or len(self._again) >= self._max_pending or self._clock() - record.at_ms / 1000 < AGAIN_AFTER):
            return False
        task = asyncio.create_task(self._copy_again(record, url), name="videos-again")
        self._again[job_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._again.pop(job_id, None)
            self._freed.set()  # it counted toward the copies held

        task.add_done_callback(done)
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

    async def _copy_once(self, job_id: str, url: str, sourced: list[StorageError]) -> VideoRecord:
        """One attempt. The errors that came from the source rather than the store are added to
        ``sourced``: only those tell about the host."""
        assert self._fetcher is not None
        made: list[VideoRecord] = []
        opened = False
        try:
            async with self._fetcher.open(url) as download:
                opened = True

                def stored() -> VideoRecord:
                    # Called by the store once the chunks are read: the size and hash are known then.
                    made.append(VideoRecord(job_id, "stored", at_ms=int(self._clock() * 1000), size=download.size,
                                            sha256=download.hexdigest, content_type=download.content_type))
                    return made[-1]

                async def not_empty() -> AsyncIterator[bytes]:
                    try:
                        async for chunk in download.chunks():
                            yield chunk
                        if download.size == 0:
                            # Raised inside the chunks, so the store keeps nothing. Retriable, as a
                            # body cut short is: a 200 with no bytes for a job that completed with a
                            # video is a source not done yet or a glitch on its way, and the budget
                            # bounds the retries.
                            raise StorageError("no video: the source answered with an empty body", retriable=True)
                    except StorageError as exc:
                        sourced.append(exc)  # the stores pass the chunks' own errors on as they are
                        raise

                # The record goes with the bytes, in one write where the store can.
                await self._store.put_video(job_id, not_empty(), download.content_type, stored)
        except StorageError as exc:
            if not opened:
                sourced.append(exc)
            raise
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
            room = self._room()
            if room <= 0:
                consumer.pause(*consumer.assignment())
                self._freed.clear()
                await self._wait(self._freed, PAUSED_RECHECK)
                room = self._room()
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

    def _room(self) -> int:
        """How many more records to fetch (see the module docstring)."""
        rules = self._lanes.rules
        if rules.fetch_waits:
            return 0
        return fetch_room(len(self._tasks) + len(self._again), rules.overflow, self._max_pending, self._max_held)

    def _spawn(self, partition: int, record: ConsumerRecord[Any, Any]) -> None:
        try:
            ticket = self._tracker.start(partition, record.offset)
        except ValueError:  # the position moved back without a rebalance: start the partition afresh
            self._tracker.forget([partition])
            ticket = self._tracker.start(partition, record.offset)
        # Read here, not in the task, so the host holds the copy from now on and the next room is
        # exact: a batch of one black hole's records counts as its share only.
        job = self._job(record)
        rules = self._lanes.rules
        # Past its bound with its breaker open, a host's copy would only wait, holding memory, until
        # its retry budget gives it up: give it up now. (Closed, the fetch waits for the host
        # instead; a copy from it in a batch fetched before is held past its bound.)
        shed = job is not None and rules.sheds(job.host)
        host = None if job is None or shed else job.host
        if host is not None:
            rules.enter(host)
        task = asyncio.create_task(self._process(record, ticket, job, shed))
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            # A done callback, not the task's finally: it runs even for a task cancelled before it
            # started, and _consume is woken only once the copy no longer counts.
            self._tasks.discard(task)
            if host is not None:
                rules.leave(host)
            self._freed.set()

        task.add_done_callback(done)

    @staticmethod
    def _job(record: ConsumerRecord[Any, Any]) -> _Job | None:
        """The copy ``record`` asks for; None for a result with no video to copy, or undecodable."""
        try:
            snapshot = codec.decode("JobSnapshot", record.value or b"", record.headers)
        except SchemaError as exc:
            # The outgoing webhooks read the same records and dead-letter this one; one copy is enough.
            log.warning("videos: skipping undecodable record %s[%d]@%d: %s", record.topic, record.partition,
                        record.offset, exc)
            return None
        except Exception:  # a bug must not stop the fetch, nor wedge the partition's commits
            log.exception("videos: unexpected error reading %s[%d]@%d", record.topic, record.partition, record.offset)
            return None
        if snapshot["status"] != "completed" or not snapshot.get("video_url"):
            return None
        url = snapshot["video_url"]
        return _Job(snapshot["job_id"], url, snapshot.get("updated_at"), url_destination(url))

    async def _process(self, record: ConsumerRecord[Any, Any], ticket: Ticket[int], job: _Job | None,
                       shed: bool) -> None:
        try:
            if job is None:
                self._metrics.videos.labels("skipped").inc()
            else:
                await self._copy(job, shed=shed)
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
