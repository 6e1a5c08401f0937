"""The API's read model: job id → latest ``JobSnapshot``, rebuilt from the compacted
``notifications`` topic and pushed to live subscribers (SSE, WebSocket).

A job's submission to its provider is not a change of the jobs table: the dispatcher records the
provider job id in the job's slot (``inflight-<provider>``) anyway, and the feed reads those slot
logs too. ``JobView.submitted`` lays that fact over a queued snapshot of the same attempt, so
readers see ``submitted`` (with the provider job id) the moment the provider accepted the job,
at the cost of no Kafka record and no worker hop of its own.

``JobView`` is pure bookkeeping (no Kafka) so ordering and eviction are unit-tested directly;
``floodgate.api.feed.NotificationFeed`` is the I/O edge that feeds it, in every API instance
from the beginning of the topics (each one holds the whole view).

Memory holds at most ``max_jobs`` snapshots. With a ``SpillStore`` (``floodgate.api.spill``),
an evicted snapshot is written to disk rather than forgotten, and reads that miss memory look
there before a token-bearing job is presumed queued. Evictions are collected and written once
per feed batch, in a thread; the feed also looks up, in one query per batch and in a thread, the
spilled versions of the jobs it is about to apply, so a spilled job keeps the version order.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from floodgate.api.heard import Heard, as_heard
from floodgate.api.spill import SpillStore
from floodgate.dispatch import Slot, is_parked, parse_slot_key, unsubmitted
from floodgate.jobs.state import TERMINAL
from floodgate.queueboard import QueueBoard, update_due
from floodgate.quotas import OpenJobs

log = logging.getLogger(__name__)

Snapshot = dict[str, Any]

DEFAULT_MAX_JOBS = 100_000
NUDGE_EVERY = 0.5
"""Seconds between two looks at where subscribed queued jobs stand (the feed may loop faster)."""
STANDING = "_standing"
"""Marks a snapshot offered again to subscribers because the job moved up in line (same version)."""
# A subscriber only ever needs the newest state; a slow one loses intermediate snapshots
# rather than making the view buffer without bound.
SUBSCRIBER_QUEUE = 16


YIELD_EVERY = 256
"""Snapshots applied between two turns of the event loop. A feed catching up hands over batches
of up to 2,000 records, several back to back, and at 17-40 µs a record a backlog held the loop
(and every 202 waiting on it) for a second at a time; 256 records are 4-10 ms."""

HEARD_MAX = 10_000
"""Jobs with providers' words held for their subscribers until the jobs table has them (a bound
on memory: the table normally catches up within a second)."""

LEAVING_MAX = 200_000
"""Submissions held for jobs whose snapshot has not moved past ``queued`` yet (a bound on memory:
normally a job's ``running`` or final snapshot drops its entry within seconds)."""


def untracked(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with its nested maps (``metadata``, ``push``) as tuples of pairs, which every
    reader takes through ``dict(...)`` anyway.

    Why: a dict that holds another dict stays tracked by the garbage collector for good, and a
    full collection walks every tracked object. With 100,000 snapshots held (and the queue
    board's 100,000 places) a full collection took 160 ms on an idle core and 100-500 ms on a
    busy one, a stall of the event loop every 202 in flight waited out, 1-4 times in 20 s at
    1,000 requests/s. A dict of strings, numbers and tuples of strings is untracked by the next
    full collection, which then has nothing of it to walk."""
    metadata, push = snapshot.get("metadata"), snapshot.get("push")
    if not isinstance(metadata, dict) and not isinstance(push, dict):
        return snapshot
    out = dict(snapshot)
    if isinstance(metadata, dict):
        out["metadata"] = tuple(metadata.items())
    if isinstance(push, dict):
        out["push"] = tuple(push.items())
    return out


def is_terminal(snapshot: Snapshot) -> bool:
    return snapshot.get("status") in TERMINAL


@dataclass(frozen=True)
class Submission:
    """A provider accepted a job's attempt: read from the job's slot record."""

    job_id: str
    provider: str
    attempt: int
    provider_job_id: str
    at_ms: int
    """When the slot recorded it (the record's timestamp, epoch milliseconds)."""

    @classmethod
    def from_slot(cls, key: bytes | None, value: bytes | None, timestamp_ms: int) -> Submission | None:
        """The submission a slot record tells of; None for a slot not yet accepted by its provider,
        a waiting order's record, or a tombstone (a slot freed: the job's own snapshots say how it
        ended). Raises ``ValueError`` (or a ``KeyError``/``TypeError``) for a record that does not
        decode."""
        if key is None or value is None or is_parked(value) or unsubmitted(value):
            return None  # the job's order waiting for a slot (the same table holds both), or just taken
        slot = Slot.decode(value)
        if not slot.provider_job_id:
            return None
        return cls(job_id=parse_slot_key(key)[1], provider=slot.order.provider, attempt=slot.attempt,
                   provider_job_id=slot.provider_job_id, at_ms=int(timestamp_ms))


def _stage(snapshot: Snapshot, sub: Submission) -> int:
    """Where ``snapshot`` stands against ``sub``: -1 before it (an older attempt: the snapshot
    that opens the submission's attempt is still to come), 0 queued in that very attempt (the
    submission applies), 1 past it (running or ended, or a later attempt: it no longer matters)."""
    attempt = int(snapshot.get("attempt") or 0)
    if attempt != sub.attempt:
        return -1 if attempt < sub.attempt else 1
    return 0 if snapshot.get("status") == "queued" else 1


def as_submitted(snapshot: Snapshot, sub: Submission) -> Snapshot:
    """``snapshot`` (queued, in ``sub``'s attempt) as the job stands once its provider took it."""
    return {**snapshot, "status": "submitted", "provider": sub.provider, "provider_job_id": sub.provider_job_id,
            "updated_at": max(int(snapshot.get("updated_at") or 0), sub.at_ms)}


class JobView:
    """Latest snapshot per job, bounded to ``max_jobs`` in memory (oldest terminal jobs are
    evicted first). Evicted snapshots go to ``spill`` when there is one, and are lost otherwise.

    Not thread-safe; use from the event loop only.
    """

    def __init__(self, max_jobs: int = DEFAULT_MAX_JOBS, spill: SpillStore | None = None, *,
                 board: QueueBoard | None = None, clock: Callable[[], float] = time.time) -> None:
        """``board``: where queued jobs stand in their provider's line (place and ETA)."""
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.max_jobs = max_jobs
        self.spill = spill
        self.board = board
        self.clock = clock
        self._told: dict[str, tuple[int, float]] = {}
        """Per subscribed queued job: the place its subscribers were last told of, and when."""
        self._nudged_at = 0.0
        # Two recency orders: evicting a finished job costs its owner nothing (the result also
        # lives on `results` and in the spill), evicting a live one without a spill would make
        # its GET fall back to "queued".
        self._active: OrderedDict[str, Snapshot] = OrderedDict()
        self._done: OrderedDict[str, Snapshot] = OrderedDict()
        # Evicted but not yet on disk: `_evicted` waits for the next flush, `_writing` is being
        # written by it. Both are read like memory, so a job is never out of sight in between.
        self._evicted: dict[str, Snapshot] = {}
        self._writing: dict[str, Snapshot] = {}
        self._spilled_any = False
        # Spilled versions looked up for the feed batch being applied (-1: nothing spilled).
        self._floors: dict[str, int] = {}
        self._flush_lock = asyncio.Lock()
        self._subscribers: dict[str, set[asyncio.Queue[Snapshot]]] = {}
        self._leaving: OrderedDict[str, Submission] = OrderedDict()
        """Submissions read from the slot logs, per job, until its snapshot moves past them."""
        self._words: OrderedDict[str, list[Heard]] = OrderedDict()
        """Providers' words on subscribed jobs (from this process's bridge or its feed), per job,
        until the job's snapshot from the jobs table has them (``floodgate.api.heard``)."""
        self._arrivals: dict[str, set[asyncio.Future[None]]] = {}
        self.ready = asyncio.Event()
        """Set once the feed has read up to the end offsets it saw at start."""
        self.open_jobs = OpenJobs()
        """Jobs not yet terminal per tenant, and admitted jobs still queued: the ingress's
        queued-jobs quota and backlog guard read them. Counted apart from the snapshots held, so
        eviction to the spill loses no count."""

    def __len__(self) -> int:
        """Snapshots held in memory (at most ``max_jobs``); spilled ones are not counted."""
        return len(self._active) + len(self._done)

    def get(self, job_id: str) -> Snapshot | None:
        """The job's snapshot if it is in memory (or evicted and not yet written); no disk I/O."""
        return self._effective(self._held(job_id))

    def _held(self, job_id: str) -> Snapshot | None:
        """The job's newest snapshot from ``notifications`` in memory, without its submission."""
        return (self._active.get(job_id) or self._done.get(job_id)
                or self._evicted.get(job_id) or self._writing.get(job_id))

    def _effective(self, snapshot: Snapshot | None) -> Snapshot | None:
        """``snapshot`` with the job's submission and the providers' words heard since laid over
        it, when they apply."""
        if snapshot is None:
            return None
        if self._leaving and snapshot.get("status") == "queued":
            sub = self._leaving.get(snapshot["job_id"])
            if sub is not None and _stage(snapshot, sub) == 0:
                snapshot = as_submitted(snapshot, sub)
        words = self._words.get(snapshot["job_id"]) if self._words else None
        for word in words or ():
            snapshot = as_heard(snapshot, word) or snapshot
        return snapshot

    async def lookup(self, job_id: str) -> Snapshot | None:
        """The job's snapshot from memory or, on a miss, from the spill (read in a thread)."""
        found = self.get(job_id)
        if found is not None or self.spill is None or not self._spilled_any:
            return found
        spilled = await asyncio.to_thread(self.spill.get, job_id)
        # A newer snapshot may have arrived during the read; memory is never older than disk.
        return self.get(job_id) or self._effective(spilled)

    def apply(self, snapshot: Snapshot, *, unseen: bool = False) -> bool:
        """Keep ``snapshot`` if it is newer than what we hold, in memory or spilled; True if kept.

        Equal versions are not newer: a redelivered snapshot changes nothing and wakes nobody.
        A job neither in memory nor in the batch ``apply_batch`` looked up costs one indexed
        read of the spill on the event loop (in the server, only ``put_local`` of a job whose id
        came from its Idempotency-Key gets there). ``unseen``: no snapshot of this job can exist
        yet (its id was just minted), so there is nothing to read.
        """
        job_id = snapshot["job_id"]
        current = self.get(job_id)
        held = current["version"] if current is not None else (-1 if unseen else self._spilled_version(job_id))
        if held >= snapshot["version"]:
            return False
        snapshot = untracked(snapshot)
        self._active.pop(job_id, None)
        self._done.pop(job_id, None)
        self._evicted.pop(job_id, None)  # superseded: no need to write it
        (self._done if is_terminal(snapshot) else self._active)[job_id] = snapshot
        sub = self._leaving.get(job_id) if self._leaving else None
        if sub is not None:
            stage = _stage(snapshot, sub)
            if stage > 0:
                del self._leaving[job_id]
            elif stage == 0:
                snapshot = as_submitted(snapshot, sub)
        shown = self._caught_up(snapshot) if self._words and job_id in self._words else snapshot
        self._evict()
        self._tell(snapshot, shown)
        for waiter in self._arrivals.pop(job_id, ()):
            if not waiter.done():
                waiter.set_result(None)
        return True

    def submitted(self, sub: Submission) -> bool:
        """Take in a submission read from a slot log; True if it changed how the job stands.

        A submission that arrives before its job's queued snapshot (another topic, another
        fetch) is held until that snapshot comes; one that a newer snapshot has passed already
        (the job runs, ended, or moved on to another attempt) is dropped."""
        current = self._held(sub.job_id)
        if current is not None and _stage(current, sub) > 0:
            return False
        known = self._leaving.get(sub.job_id)
        if known is not None and known.attempt >= sub.attempt:
            return False  # (the same submission again: a slot log read from its start)
        self._leaving[sub.job_id] = sub
        if len(self._leaving) > LEAVING_MAX:
            self._leaving.popitem(last=False)
        if current is None or _stage(current, sub) < 0:
            return False
        self._tell(as_submitted(current, sub), self.get(sub.job_id))
        return True

    def watches(self, key: bytes | None) -> bool:
        """Whether the job keyed ``key`` (a record's key: its id) has subscribers here."""
        if not key or not self._subscribers:
            return False
        try:
            return key.decode() in self._subscribers
        except UnicodeDecodeError:
            return False

    def heard(self, word: Heard) -> bool:
        """Take in a provider's word from a webhook on Kafka (stored by this process's bridge, or
        read by its feed); True if the job's subscribers were told of it. Only a subscribed job's
        word is kept: a reader without a subscription gains little from hearing it a few
        milliseconds before the table says it, and every job's would cost every webhook the jobs
        agent's rules once more."""
        job_id = word.job_id
        if job_id not in self._subscribers:
            return False
        current = self.get(job_id)  # (the words heard before this one laid over it already)
        shown = None if current is None else as_heard(current, word)
        if shown is None:
            return False
        self._words.setdefault(job_id, []).append(word)
        self._words.move_to_end(job_id)
        if len(self._words) > HEARD_MAX:
            self._words.popitem(last=False)
        for queue in self._subscribers.get(job_id, ()):
            _offer(queue, shown)
        return True

    def _caught_up(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` (new from the table) with the job's heard words that are still news laid
        over it; the words it has caught up with (or passed: it ended, it moved to another
        provider) are forgotten. A word that is old news stays old news: every field it sets
        only moves one way within an attempt."""
        job_id, shown = snapshot["job_id"], snapshot
        pending = []
        for word in self._words.pop(job_id):
            ahead = as_heard(shown, word)
            if ahead is not None:
                pending.append(word)
                shown = ahead
        if pending:
            self._words[job_id] = pending
        return shown

    def _tell(self, snapshot: Snapshot, shown: Snapshot | None = None) -> None:
        """What knows of a job's state learns ``snapshot``: counts, the line, and subscribers,
        who are shown ``shown`` (the same with the providers' words heard since laid over it).
        The counts follow the table and the slot logs only: a heard word may yet lose a race."""
        job_id = snapshot["job_id"]
        self.open_jobs.observe(job_id, snapshot.get("tenant") or "default", snapshot["status"], snapshot["version"])
        if self.board is not None:
            self.board.observe(snapshot, self.clock())
        for queue in self._subscribers.get(job_id, ()):
            _offer(queue, shown or snapshot)

    async def apply_batch(self, snapshots: list[Snapshot]) -> int:
        """Apply a batch from the feed in order, then write what it evicted; how many were kept.

        Spilled versions of the jobs not in memory are looked up first, in one query off the
        event loop, so ``apply`` never reads the disk here. Every ``YIELD_EVERY`` snapshots the
        loop runs whatever else is ready. (Those versions stay valid meanwhile: only this
        method's own flush writes to the spill.)
        """
        if self.spill is not None and self._spilled_any:
            missing = {s["job_id"] for s in snapshots if self.get(s["job_id"]) is None}
            if missing:
                found = await asyncio.to_thread(self._spilled_versions, missing)
                self._floors = {job_id: found.get(job_id, -1) for job_id in missing}
        kept = 0
        try:
            for start in range(0, len(snapshots), YIELD_EVERY):
                if start:
                    await asyncio.sleep(0)  # let the 202s waiting on this loop go first
                kept += sum(self.apply(snapshot) for snapshot in snapshots[start:start + YIELD_EVERY])
        finally:
            # Only valid until the next flush: drop them before it.
            self._floors = {}
        await self.flush()
        return kept

    async def flush(self) -> None:
        """Write the snapshots evicted since the last flush to the spill, in one transaction in
        a thread. The feed calls it once per batch. A failed write is logged and those
        snapshots are lost, as without a spill: the feed must go on."""
        if self.spill is None:
            return
        async with self._flush_lock:
            if not self._evicted:
                return
            self._writing, self._evicted = self._evicted, {}
            try:
                await asyncio.to_thread(self.spill.put_many, list(self._writing.values()))
                self._spilled_any = True
            except sqlite3.Error as exc:
                log.error("job view: could not spill %d evicted snapshots to %s: %s",
                          len(self._writing), self.spill.path, exc)
            finally:
                self._writing = {}

    def put_local(self, snapshot: Snapshot, *, new_id: bool = False) -> bool:
        """What the ingress knows right after its 202, so a GET on this instance never 404s.

        Carries version 0: the job-state agent's first snapshot (version 1) supersedes it.
        ``new_id``: the ingress minted the job id for this request (no Idempotency-Key), so no
        other snapshot of it exists and the spill is not read: once the view has spilled, that
        read was a query on the event loop for every 202.
        """
        return self.apply(snapshot, unseen=new_id)

    async def wait_for(self, job_id: str, timeout: float) -> Snapshot | None:
        """The job's snapshot (memory, then spill), waiting up to ``timeout`` seconds for one to arrive."""
        found = self.get(job_id)
        if found is not None:
            return found
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._arrivals.setdefault(job_id, set())
        waiters.add(waiter)  # before the spill read, so an arrival during it is not missed
        try:
            found = await self.lookup(job_id)
            if found is None and timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, timeout)
                # What arrived may already be evicted (a full view of live jobs): look everywhere.
                found = await self.lookup(job_id)
        finally:
            waiters.discard(waiter)
            if not waiters and self._arrivals.get(job_id) is waiters:
                del self._arrivals[job_id]
        return found

    def nudge(self) -> int:
        """Tell subscribers of queued jobs that moved up in line (the feed calls it at least once
        a second): when the place moved by 5% of itself, or 5 s after the last word if it moved
        at all (``update_due``). The subscriber gets the job's current snapshot again, marked as
        a ``standing`` update, and renders its place and ETA anew. Returns how many were told."""
        board = self.board
        now, told = self.clock(), 0
        if board is None or now - self._nudged_at < NUDGE_EVERY:
            return 0
        self._nudged_at = now
        for job_id in [job_id for job_id in self._told if job_id not in self._subscribers]:
            del self._told[job_id]
        for job_id, queues in self._subscribers.items():
            position = board.position(job_id)
            snapshot = self.get(job_id)
            if position is None or snapshot is None:
                self._told.pop(job_id, None)
                continue
            last = self._told.get(job_id)
            if last is None:
                self._told[job_id] = (position, now)  # (the subscriber read this place when it came)
                continue
            if update_due(last, position, now):
                self._told[job_id] = (position, now)
                for queue in queues:
                    _offer(queue, {**snapshot, STANDING: True})
                told += 1
        return told

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

    def _spilled_version(self, job_id: str) -> int:
        if self.spill is None or not self._spilled_any:
            return -1
        floor = self._floors.get(job_id)
        if floor is None:
            floor = self._spilled_versions((job_id,)).get(job_id, -1)
        return floor

    def _spilled_versions(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Spilled versions of ``job_ids``; none if the disk fails. Snapshots of a job reach the
        topic in version order, so taking an arrival as newer is the right guess then, and a
        feed that stopped on a disk error would be worse (a view that never changes again)."""
        assert self.spill is not None
        try:
            return self.spill.versions(job_ids)
        except sqlite3.Error as exc:
            log.error("job view: could not read spilled versions from %s: %s", self.spill.path, exc)
            return {}

    def _evict(self) -> None:
        while len(self) > self.max_jobs:
            job_id, snapshot = (self._done if self._done else self._active).popitem(last=False)
            if self.spill is not None:
                self._evicted[job_id] = snapshot


def _offer(queue: asyncio.Queue[Snapshot], snapshot: Snapshot) -> None:
    if queue.full():
        queue.get_nowait()  # drop the oldest: the newest state is what a subscriber needs
    queue.put_nowait(snapshot)


__all__ = ["DEFAULT_MAX_JOBS", "STANDING", "YIELD_EVERY", "JobView", "Snapshot", "Submission", "as_submitted",
           "is_terminal", "untracked"]
