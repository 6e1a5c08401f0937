"""One worker's view of one provider: the slot table, the slot accounting and waiting orders of
each dispatch partition, rate bucket, outage breaker and the submissions running in the background.

Slots live in the ``inflight-<provider>`` table under ``b"<partition>:<job id>"``: the partition
prefix lets a partition's slots be rebuilt from the keys alone (no decoding), and the release of
a job finds its slot without a scan, because release and dispatch topics are co-partitioned.

The table is the durable truth; ``pools`` mirror it per partition (an O(1) count on every order,
where scanning the table would cost O(limit)) and are rebuilt from it whenever a partition is
seen in a new consumer generation, i.e. after every rebalance and table recovery.

Orders waiting for a slot wait in a fair line per partition (``floodgate.fairqueue``: priority
first, then each tenant's weighted share, then acceptance) and live in the same table, under the
same key their slot will have, with their dispatch offset (``Parked``; ``is_parked`` tells the two
kinds apart): giving a waiting order its slot overwrites its waiting entry, one changelog record
where two tables took two (a slot, and a tombstone for the waiting entry). The dispatch record is
acknowledged as soon as its order is parked there,
so every dispatch record is acknowledged in offset order and no offset is held back for minutes.
(Faust computes the offset to commit from acknowledged offsets, and commits past a *single*
unacknowledged offset at the head of a partition, or past any number when nothing was committed
yet: holding waiting orders unacknowledged lost one now and then on a graceful stop.) The lines in
memory are rebuilt from that table whenever a partition is seen in a new generation; the waiting
entries are bounded by the lines' high mark, because a partition whose line is full is paused and
the rest of its backlog waits in Kafka. (Workers before this layout kept waiting orders in a table
of their own, ``waiting-<provider>``: ``sync`` moves what it still holds into the shared table.)

Cancel marks live in a table of their own, ``cancelled-<provider>``, keyed like slots: a job
cancelled while its order has not yet been taken (still in Kafka, or about to be submitted) is
marked so that the order is dropped instead of submitted. Being a separate table, marks never
count as held slots when ``sync`` rebuilds the pools from the slot entries' keys. A mark is
deleted when it is used; one that is never used (the order was already gone) expires by
``mark_expired``, so marks cannot pile up.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from operator import attrgetter
from typing import Any

import faust

from floodgate.dispatch import (
    CancelMark,
    Order,
    Parked,
    Slot,
    decode_entry,
    is_parked,
    mark_expired,
    parse_slot_key,
    slot_key,
)
from floodgate.fairqueue import FairLine
from floodgate.pace import Pace
from floodgate.routing import ProviderSpec
from floodgate.throttle import (
    Backoff,
    CircuitBreaker,
    SlotPool,
    TokenBucket,
    partition_bucket,
    partition_share,
)
from streams.slotwriter import SlotWriter
from streams.tables import EntriesOf, RecordTable

log = logging.getLogger(__name__)


class Lane:
    def __init__(self, app: faust.App, spec: ProviderSpec, partitions: int, *, window: int = 20_000,
                 weight_of: Callable[[str], float] = lambda tenant: 1.0, breaker_reset_after: float = 30.0,
                 configured_hold: float | None = None, writer: SlotWriter | None = None) -> None:
        """``window``: orders a partition reads ahead into its fair line while its slots are full
        (at least its share of the limit): large enough that a tenant arriving behind another's
        burst is read and interleaved, while the rest of the backlog stays in Kafka.
        ``weight_of(tenant)``: the tenant's fair share. ``breaker_reset_after``: seconds the
        circuit breaker stays open before a probe. ``configured_hold``: typical seconds a job holds
        a slot here (the routing file's ``render_time``), the prior of the holds seen
        (``floodgate.pace``).
        ``writer``: the producer of their own that this lane's tables write through
        (``streams/slotwriter.py``), or None for the worker's Faust producer."""
        self.spec = spec
        self.partitions = partitions
        self.entries: RecordTable[Slot | Parked] = RecordTable(
            app, f"inflight-{spec.name}", partitions=partitions, encode=lambda entry: entry.encode(),
            decode=decode_entry, writer=writer)
        self.slots: EntriesOf[Slot] = EntriesOf(self.entries, lambda raw: not is_parked(raw))
        self.waiting: EntriesOf[Parked] = EntriesOf(self.entries, is_parked)
        self.pools = {p: SlotPool(self.capacity(p)) for p in range(partitions)}
        self.old_waiting: RecordTable[Parked] = RecordTable(app, f"waiting-{spec.name}", partitions=partitions,
                                                            encode=Parked.encode, decode=Parked.decode,
                                                            writer=writer)
        """The waiting orders of workers before slots and waiting orders shared a table: read
        only to move them over (``sync``)."""
        self.lines: dict[int, FairLine[Order]] = {
            p: FairLine(max(window, self.capacity(p)), weight_of, order_key=attrgetter("line_key"),
                        held_of=self.pools[p].held_by, slots=self.pools[p].capacity)
            for p in range(partitions)}
        self.generations: dict[int, int] = {}
        """Per dispatch partition, the consumer generation its slot count and line were rebuilt in."""
        self.settled_generation: int | None = None
        """The generation ``drop_unassigned`` last ran in."""
        # Per partition, like the slots: the rate holds across workers (see ``partition_bucket``).
        self.buckets: dict[int, TokenBucket] = (
            {p: partition_bucket(spec.rate_per_second, partitions) for p in range(partitions)}
            if spec.rate_per_second else {})
        self.breaker = CircuitBreaker(failure_threshold=5, reset_after=breaker_reset_after)
        self.backoff = Backoff(base=0.5, factor=2.0, cap=30.0, jitter="full", rng=random.Random())
        self.submitting: dict[bytes, asyncio.Task[None]] = {}
        self.marks: RecordTable[CancelMark] = RecordTable(app, f"cancelled-{spec.name}", partitions=partitions,
                                                          encode=CancelMark.encode, decode=CancelMark.decode,
                                                          writer=writer)
        self.read_to: dict[int, int] = {}
        """Per dispatch partition, the last offset read since this worker got it (for ``mark_expired``)."""
        self.ended_early: dict[bytes, str] = {}
        """Slots whose provider job ended (the bridge said so) before their submission recorded
        its provider job id: that submission frees them instead of recording it."""
        self.paces = {p: Pace(configured_hold) for p in range(partitions)}
        """Per partition, how fast its line moves (``floodgate.pace``), from its slots taken and
        given back here: the start rate its line reports, which spillover and the backlog guard
        turn into a wait."""
        self.cancelling: set[bytes] = set()
        """Slots whose provider job is being cancelled (the slot is freed once that is done)."""
        self.calling: set[bytes] = set()
        """Submissions whose provider call is under way (``hand_over`` waits for them)."""
        self.handing_over: set[int] = set()
        """Partitions on their way to another worker (revoked, or this worker stopping): a
        provider call that returns meanwhile records its provider job id durably."""
        self._chores: set[asyncio.Task[None]] = set()

    def capacity(self, partition: int) -> int:
        return partition_share(self.spec.concurrency_limit, self.partitions, partition)

    def sync(self, partition: int, generation: int) -> bool:
        """Rebuild ``partition``'s slot count and waiting line from the tables the first time it is
        seen in a consumer generation (the tables were just recovered, or other workers changed
        them). True if it did."""
        if self.generations.get(partition) == generation:
            return False
        self.generations[partition] = generation
        self.move_old_waiting(partition)
        self.reconcile(partition)
        self.restore_line(partition)
        return True

    def move_old_waiting(self, partition: int) -> int:
        """Move ``partition``'s entries of the former ``waiting-<provider>`` table into the shared
        one (unless the job has an entry there already); returns how many moved."""
        prefix = f"{partition}:".encode()
        moved = 0
        for key, entry in list(self.old_waiting.items()):
            if not key.startswith(prefix):
                continue
            if key not in self.entries.table.data:
                self.entries.put_in(partition, key, entry)
                moved += 1
            self.old_waiting.remove_in(partition, key)
        if moved:
            log.info("%s[%d]: %d waiting orders moved to the shared table", self.spec.name, partition, moved)
        return moved

    def restore_line(self, partition: int) -> None:
        """Make ``partition``'s line the orders its waiting table holds, oldest (lowest offset) first."""
        prefix = f"{partition}:".encode()
        parked = sorted((entry for key, entry in self.waiting.items() if key.startswith(prefix)),
                        key=lambda entry: entry.offset)
        line = self.lines[partition]
        line.clear()
        for entry in parked:
            line.push(entry.order)
        if parked:
            log.info("%s[%d]: %d waiting orders back in line", self.spec.name, partition, len(parked))

    def park(self, partition: int, offset: int, order: Order) -> tuple[Any, bool]:
        """Queue ``order`` (read at ``offset``) for a slot. Returns the future of its durable copy
        (its dispatch record may be acknowledged once that resolves) and whether the line is at its
        high mark (pause the partition). The job must hold no slot here (intake makes sure): the
        waiting entry would replace it."""
        durable = self.waiting.put_reliably_in(partition, slot_key(partition, order.job_id), Parked(order, offset))
        return durable, self.lines[partition].push(order)

    def park_at_head(self, partition: int, order: Order) -> None:
        """Put ``order`` back at the head of the line (a start that could not be made durable)."""
        self.waiting.put_reliably_in(partition, slot_key(partition, order.job_id), Parked(order, -1))
        self.lines[partition].push_front(order)

    def parked(self, key: bytes) -> Order | None:
        entry = self.waiting.get(key)
        return None if entry is None else entry.order

    def unpark(self, partition: int, key: bytes) -> None:
        """The order of ``key`` no longer waits (its job was cancelled, or it went elsewhere). Once
        it holds a slot there is nothing to do: the slot's entry replaced its waiting entry."""
        self.waiting.remove_in(partition, key)

    def reconcile(self, partition: int) -> None:
        """Make ``partition``'s slot count what its table says. Safe at any await point: a slot is
        taken in the table in the same step as in the pool. The poll timer calls it on every tick,
        because a count taken while a recovery was still replaying the changelog can include slots
        the replay then deletes, and a count that only grows would stall the partition for good."""
        prefix = f"{partition}:".encode()
        pool = self.pools[partition]
        held: list[tuple[str, str]] = []
        for key in self.slots:
            if key.startswith(prefix):
                job = parse_slot_key(key)[1]
                # The tenant a slot was taken for, for the fair line; decoded only for a slot this
                # pool did not take itself (recovered), since this runs on every poll tick.
                tenant = pool.tenant_of(job)
                if tenant is None:
                    slot = self.slots.get(key)
                    tenant = slot.order.tenant if slot is not None else ""
                held.append((job, tenant))
        pool.rebuild(held)
        # Slots given back elsewhere (a partition that moved away and came back) left no end here.
        self.paces[partition].keep_only({job for job, _ in held})

    def next_waiting(self, partition: int) -> tuple[Order, bool] | None:
        """The waiting order served next (``FairLine``'s rule) if it can go now, and whether it
        took a new slot (False: its job holds one already, e.g. a duplicate order). None while the
        partition's slots are full."""
        line, pool = self.lines[partition], self.pools[partition]
        head = line.peek()
        if head is None:
            return None
        job = head.job_id
        if job in pool:
            line.pop()
            return head, False
        if not pool.free:
            return None
        line.pop()  # before the slot is counted as its tenant's: the line's rule weighs slots held
        pool.try_acquire(job, head.tenant)
        return head, True

    def started(self, partition: int, order: Order, at: float) -> None:
        """``order`` took a slot of ``partition`` at ``at`` (out of its line, if it waited)."""
        limit = self.capacity(partition)
        self.paces[partition].started(order.job_id, at, at, waiting=len(self.lines[partition]), limit=limit,
                                      tenant=order.tenant, full=len(self.pools[partition]) >= limit)

    def free(self, partition: int, job_id: str, at: float | None = None) -> None:
        """The slot of ``job_id`` is given back: at ``at``, after its job held it (its hold counts
        for the pace); without ``at``, it never went to the provider."""
        self.pools[partition].release(job_id)
        if at is None:
            self.paces[partition].ended(job_id)
        else:
            self.paces[partition].finished(job_id, at)

    def start_rate(self, partition: int, now: float) -> float | None:
        """Orders ``partition`` starts per second while orders wait (None: nothing known yet)."""
        return self.paces[partition].rate(self.capacity(partition), now)

    def drop_unassigned(self, assigned: set[int]) -> int:
        """Forget, locally, the entries the tables hold for partitions this worker does not own.

        Faust's memory store forgets only the keys it recovered, not those written here, so a
        partition that moved away leaves its slots, marks and waiting orders behind; left there,
        the poller would act on another worker's slots, and a partition coming back would find
        entries its changelog has since deleted. (Coming back, it is replayed from the start.)
        Call it only once recovery is complete. Returns the number of entries dropped."""
        dropped = 0
        for table in (self.entries, self.marks, self.old_waiting):
            data = table.data
            for key in [key for key in list(data.keys()) if parse_slot_key(key)[0] not in assigned]:
                del data[key]
                dropped += 1
        return dropped

    def waiting_count(self) -> int:
        """Orders this worker holds waiting for a slot (every line is of an owned partition)."""
        return sum(len(line) for line in self.lines.values())

    def forget_waiting(self, partitions: set[int]) -> int:
        """Drop the lines of revoked partitions: their orders stay in the waiting table, which
        whoever owns the partitions next recovers and rebuilds its lines from."""
        dropped = 0
        for p in partitions:
            dropped += len(self.lines[p].clear())
            self.generations.pop(p, None)
            self.read_to.pop(p, None)
        return dropped

    def mark(self, partition: int, key: bytes, end: int | None, now: float) -> None:
        """Mark the job of slot ``key`` cancelled: its order, wherever it is, must not be submitted."""
        self.marks.put_in(partition, key, CancelMark(made_at=now, end=end))

    def marked(self, key: bytes) -> bool:
        return key in self.marks.data

    def unmark(self, partition: int, key: bytes) -> None:
        self.marks.remove_in(partition, key)

    def expire_marks(self, now: float) -> int:
        """Delete the cancel marks of this worker's partitions that ``mark_expired`` lets go."""
        gone = 0
        for key, mark in list(self.marks.items()):
            partition, _ = parse_slot_key(key)
            if partition in self.generations and mark_expired(mark, self.read_to.get(partition), now):
                self.unmark(partition, key)
                gone += 1
        return gone

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run a chore (e.g. a provider cancel) in the background; ``work`` handles its own errors."""
        task = asyncio.create_task(work, name=name)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def run_in_background(self, key: bytes, work: Coroutine[Any, Any, None]) -> None:
        """Run a submission (and the slot write before it, for an order that waited) without
        holding up the dispatch stream. A crash loses nothing: before the slot is durable the
        order is still in the waiting table; after, the poller re-dispatches slots that never got
        a provider job id. ``key in submitting`` until it ends."""
        task = asyncio.create_task(work, name=f"submit:{key.decode()}")
        self.submitting[key] = task
        task.add_done_callback(lambda t: self._done(key, t))

    def _done(self, key: bytes, task: asyncio.Task[None]) -> None:
        self.submitting.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("submission %s failed; the poller will retry it", key.decode(), exc_info=task.exception())

    async def hand_over(self, partitions: set[int], wait: float) -> int:
        """Let the submissions of ``partitions`` end before the partitions leave this worker.

        One whose provider call is under way is waited for, up to ``wait`` seconds: the provider
        may be creating the job, and once the call returns its provider job id is written (and,
        the partition being in ``handing_over``, awaited until Kafka has it) before the next
        owner reads the table. Cancelled instead, the next owner would find a slot without a
        provider job id and submit the job a second time (most providers have no idempotency
        key). The others (waiting for their slot's write, a Retry-After, the rate) are cancelled
        before they call; their slots are durable, and the next owner submits them. Returns how
        many calls were still under way at the bound (cancelled: their jobs may be submitted twice)."""
        mine = {key: task for key, task in self.submitting.items() if parse_slot_key(key)[0] in partitions}
        self.handing_over.update(partitions)
        try:
            calls = [task for key, task in mine.items() if key in self.calling]
            for key, task in mine.items():
                if key not in self.calling:
                    task.cancel()
            late: set[asyncio.Task[None]] = set()
            if calls:
                _, late = await asyncio.wait(calls, timeout=wait)
                for task in late:
                    task.cancel()
            await asyncio.gather(*mine.values(), return_exceptions=True)
        finally:
            self.handing_over.difference_update(partitions)
        if late:
            log.warning("%s: %d provider calls still under way after %.0f s were cancelled as their partitions "
                        "left; their jobs may be submitted again", self.spec.name, len(late), wait)
        return len(late)

    async def stop(self, wait: float = 0.0) -> None:
        """Hand over every partition's submissions (``hand_over``), then cancel the chores."""
        await self.hand_over(set(range(self.partitions)), wait)
        for task in self._chores:
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
