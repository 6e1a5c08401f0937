"""dispatch.<provider> → the provider, never more in flight than its concurrency limit.

One ``Dispatcher`` per provider. By default its dispatch topic has one partition, so all of the
provider's slots and its whole queue live in one place (one worker): no share of the limit sits
idle on one partition while orders wait on another, and the queue is one line in arrival order.
A provider's submission rate is small (limit ÷ render time), so one worker carries it; a
provider that needs more is given more partitions (``FLOODGATE_DISPATCH_PARTITIONS``) and its
limit is then split into fixed shares (``partition_share``), which add up to the limit whatever
the number of workers, because a partition belongs to one worker at a time.

A slot is held by an entry in the ``inflight-<provider>`` table (written before the provider is
called) and freed when ``release.<provider>`` says the job ended (or when the job moves on to a
fallback provider). After a restart the table is recovered from its changelog, and the count with
it. While a partition's slots are all taken its orders wait in a line (mirrored in
``waiting-<provider>``, see ``streams.lane``) and, once that is full, the partition is paused:
the backlog stays in Kafka, not in memory.

**Acknowledgements.** A dispatch record is acknowledged once what it caused is durable (its slot,
or its place in the waiting table) — never before, and always in offset order (``AckLine``), so
Faust's commit arithmetic (which commits past a lone unacknowledged offset at the head of a
partition) never sees a gap. The agent does not wait for those writes: it sends them and reads
on, and the line acknowledges each record when its write lands. The provider call itself runs in
a background task once the slot is durable, so one partition keeps all its slots in flight at once
instead of one round trip per order. This is not Faust's ``concurrency=`` (which can commit past
an unfinished event, faust-streaming #606): the order's offset is committed only once its slot is
on Kafka, because the slot entry, not the order, is then the durable record of the work.

Its jobs, once submitted, are asked about by its ``Poller`` (``streams.poller``: the late poll,
the timeout, the following of jobs at providers that say little by themselves, status calls within
the provider's read limit), and a cancelled job's release is acted on by its ``SlotCanceller``
(``streams.canceller``), wherever the job is. The dispatcher owns both.

**Submissions cost no record of their own.** The provider job id goes into the job's slot (the
poller and cancels need it after a restart); the API's job view reads the slot log to show the job
``submitted``. The jobs table learns the provider job id from the provider's first webhook.

**A slot an earlier attempt still holds.** A job's slot here is freed when the job moves on; a
crash or a duplicate dispatch can keep it past the reroute, and the job may come back to this
provider (A → B → A: a later attempt). Its order then takes the slot over (``take_over``), since
the jobs table takes a dispatcher's word of an attempt the job left as old news: the slot's polls,
its timeout and the releases that free it name the later attempt from then on. A provider job the
slot holds becomes the later attempt's, never submitted again (the one submission told by an event:
``submitted``, with the provider job id); without one, the later attempt is submitted under the
slot. An ``ended`` release of such a provider job does not free the slot by itself, nor does one
read while the earlier attempt's submission, still running, made that job: its end may have been
told as the earlier attempt's, so the provider is asked again, at once (``Poller.ask_again``). A
timeout whose cancel of such a provider job a takeover overtook fails the later attempt, whose job
it is now (``floodgate.dispatch.timed_out_attempt``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, cast

import faust
from faust.types import TP

from connectors.providers.base import SubmitOrder, SubmitResult, same_provider_job
from floodgate import codec
from floodgate.dispatch import ENDED, Order, Slot, slot_key
from floodgate.errors import FloodgateError, ProviderUnavailable
from floodgate.readahead import floor_for
from floodgate.routing import next_target
from floodgate.spillover import LineReport, Spill, estimated_wait, spill_to
from floodgate.submit_policy import SubmitPolicy, decide
from floodgate.throttle import BreakerState
from streams import guard
from streams.ackline import AckLine
from streams.canceller import SlotCanceller
from streams.context import Pipeline
from streams.lane import Lane
from streams.poller import Poller
from streams.slotwriter import SlotWriter, writes_alone

log = logging.getLogger(__name__)

DEFAULT_POLICY = SubmitPolicy()
HANDOVER_WAIT = 10.0
"""Seconds a revoke (or a stop) waits for provider calls under way on the partitions it hands over
(``Lane.hand_over``): a submission takes a second or two, and the group waits meanwhile."""
TAKEN_OVER = ":taken-over"
"""The end of the id of the ``submitted`` event that gives a later attempt of a job the provider
job of the slot it took over (``Dispatcher.take_over``)."""


class Dispatcher:
    """The submitter of one provider: intake of orders, slots, the waiting line, submissions and
    releases; its poller (``Poller``) and its cancels (``SlotCanceller``) are objects of their own.
    ``register()`` wires it into the Faust app."""

    def __init__(self, pipe: Pipeline, name: str, policy: SubmitPolicy = DEFAULT_POLICY, *,
                 lane: Lane | None = None) -> None:
        self.pipe, self.name, self.policy = pipe, name, policy
        self.app, self.names, self.emit, self.settings = pipe.app, pipe.names, pipe.emit, pipe.settings
        spec = pipe.routing.providers[name]
        self.connector = pipe.providers[name]
        self.partitions = self.names.dispatch_partitions(spec.concurrency_limit)
        weights = self.settings.tenant_weight_map
        self.lane = lane or Lane(self.app, spec, self.partitions, window=self.settings.fair_window,
                                 weight_of=lambda tenant: weights.get(tenant, 1.0),
                                 breaker_reset_after=self.settings.breaker_reset_after,
                                 configured_hold=pipe.setup.render_times.get(name),
                                 writer=self._slot_writer(spec.concurrency_limit))
        self.orders = self.emit.topic(self.names.dispatch(name), partitions=self.partitions)
        self.releases = self.emit.topic(self.names.release(name), partitions=self.partitions)
        base = self.settings.webhook_base_url
        self.webhook_url = f"{base.rstrip('/')}/webhooks/{name}" if base else None
        self.acks = AckLine()
        self.metrics = pipe.metrics
        self.read_ahead = pipe.read_ahead
        self.read_ahead.track(self.lane.lines.values())
        self.read_ahead.subscribe(self.refetch)
        self.window_held: set[int] = set()
        """Dispatch partitions paused because the worker's read-ahead window is full (see ``hold``)."""
        self.limit_generation: int | None = None
        """The consumer generation this worker's share of the limit was last published for."""
        self.poller = Poller(self)
        """The status calls about its jobs: the late poll, timeouts, following (``streams.poller``)."""
        self.canceller = SlotCanceller(self)
        """What a cancelled job's release does (``streams.canceller``)."""

    @property
    def orders_topic(self) -> str:
        return str(self.orders.get_topic_name())

    # -- wiring ------------------------------------------------------------------------------

    def _slot_writer(self, limit: int) -> SlotWriter | None:
        """The worker's slot writer for a provider with a small limit, else None (Faust's producer)."""
        writer: SlotWriter | None = getattr(self.app, "slot_writer", None)
        return writer if writer is not None and writes_alone(limit, self.settings.slot_producer_limit) else None

    def register(self) -> Lane:
        app = self.app
        app.agent(self.orders, name=f"submit-{self.name}")(self._order_agent)
        app.agent(self.releases, name=f"release-{self.name}")(self._release_agent)
        app.timer(interval=self.settings.line_report_interval, name=f"wake-{self.name}")(self.wake)
        self.poller.register(app)
        app.on_partitions_revoked.connect(self._revoked)  # type: ignore[arg-type]  # mode cannot type this signal
        app.on_before_shutdown.connect(self._stop)
        return self.lane

    async def _order_agent(self, stream: faust.StreamT) -> None:
        # The agent never blocks on a slot: Faust delivers every topic from one loop, and once this
        # stream's buffer is full that loop waits for it, so releases (and everything else) would
        # stop arriving: a deadlock. An order that cannot have a slot now is parked in the waiting
        # table; its record is acknowledged once that write (or its slot's) is durable, in order.
        orders_in = cast(faust.Stream, stream).noack()  # Faust passes a Stream; StreamT lacks noack()
        async for ev in orders_in.events():
            msg = ev.message
            self.metrics.events_processed.labels(f"submit-{self.name}").inc()
            self.lane.read_to[msg.partition] = max(msg.offset, self.lane.read_to.get(msg.partition, -1))
            durable: list[Any] = []

            async def take(msg: Any = msg, durable: list[Any] = durable) -> None:
                durable[:] = [await self.intake(msg, Order.from_record(
                    codec.decode("DispatchOrder", msg.value, msg.headers)))]

            await guard.process(take, emit=self.emit, dlq=self.names.dlq, message=msg, stage=f"submit-{self.name}",
                                on_dead_letter=self.metrics.dead_letters.labels("submitter").inc)

            async def ack(ev: Any = ev, msg: Any = msg) -> None:
                if msg.generation_id == self.app.consumer_generation_id:
                    await orders_in.ack(ev)
                else:
                    # Revoked meanwhile: what was written is on Kafka, but the partition's next owner
                    # may have recovered the tables before it landed, so it reads the order again.
                    # Faust would wait for this tracked message before completing a rebalance.
                    self.app.consumer._unacked_messages.discard(msg)  # type: ignore[attr-defined]  # private, on Consumer only

            self.acks.add(durable[0] if durable else None, ack)

    async def _release_agent(self, stream: faust.StreamT) -> None:
        async for ev in stream.events():
            msg = ev.message
            self.metrics.events_processed.labels(f"release-{self.name}").inc()

            async def handle(msg: Any = msg) -> None:
                await self.release(codec.decode("SlotRelease", msg.value, msg.headers), msg.partition,
                                   msg.generation_id)

            await guard.process(handle, emit=self.emit, dlq=self.names.dlq, message=msg, stage=f"release-{self.name}",
                                on_dead_letter=self.metrics.dead_letters.labels("release").inc)

    async def _revoked(self, app: faust.App, /, revoked: set[Any], **kwargs: object) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == self.orders_topic}
        self.held.difference_update(TP(self.orders_topic, p) for p in mine)
        self.window_held.difference_update(mine)
        dropped = self.lane.forget_waiting(mine)
        if dropped:
            log.info("%s: %d waiting orders left to the partitions' next owner", self.name, dropped)
        # Faust awaits this before the group goes on: the partitions' next owner cannot read their
        # tables before the calls under way here have recorded what the provider answered.
        await self.lane.hand_over(mine, HANDOVER_WAIT)

    async def _stop(self, app: faust.App, /, *args: object, **kwargs: object) -> None:
        await self.acks.stop()
        await self.lane.stop(HANDOVER_WAIT)

    # -- fetching ----------------------------------------------------------------------------

    @property
    def held(self) -> set[Any]:
        """Dispatch partitions paused because their waiting line is full (see ``hold``)."""
        return cast(set[Any], self.app.consumer.held_partitions)  # type: ignore[attr-defined]  # streams.faust_fixes.hold_partitions

    def hold(self, partition: int) -> None:
        """Stop fetching ``partition``: its line is full, and the rest of the backlog waits in
        Kafka. Faust's own pause (records already fetched are still handed out); held, so that
        Faust's stream-buffer relief does not resume it while the line is still full."""
        tp = TP(self.orders_topic, partition)
        self.held.add(tp)
        self.app.consumer.on_buffer_full(tp)

    def let_go(self, partition: int) -> None:
        """Fetch ``partition`` again: its line has drained to its low mark."""
        tp = TP(self.orders_topic, partition)
        self.held.discard(tp)
        self.app.consumer.on_buffer_drop(tp)

    def floor(self, partition: int) -> int:
        return floor_for(self.lane.capacity(partition))

    def shrank(self, partition: int) -> None:
        """``partition``'s line got shorter: fetch it again if nothing holds it any more (its own
        high mark, or the worker's read-ahead window), and let the window's other partitions know."""
        line = self.lane.lines[partition]
        if not len(line):
            self.lane.paces[partition].emptied()  # nobody waits: the next starts take free slots
        due = line.resume_due()  # once per pause of its own, when drained to its low mark
        if partition in self.window_held:
            self.fetch_if_room(partition)
        elif due:
            self.let_go(partition)
        self.read_ahead.drained()

    def refetch(self) -> None:
        """The read-ahead window has room again: let go the partitions held for it."""
        for partition in list(self.window_held):
            self.fetch_if_room(partition)

    def fetch_if_room(self, partition: int) -> None:
        """Let go ``partition``, held for the window, unless its own high mark still holds it or
        the window is still full."""
        line = self.lane.lines[partition]
        if not line.paused and self.read_ahead.may_fetch(len(line), self.floor(partition)):
            self.window_held.discard(partition)
            self.let_go(partition)

    # -- slots -------------------------------------------------------------------------------

    def count_slots(self) -> None:
        # The pools count this worker's slots (the table also holds waiting orders: counting its
        # slots would cost a pass over up to the fair window's orders, on every start and end).
        self.metrics.inflight.labels(self.name).set(sum(len(pool) for pool in self.lane.pools.values()))
        generation = self.app.consumer_generation_id
        if generation != self.limit_generation and (mine := self.assigned()) is not None:
            # The share of the limit beside the slots, once per generation: the metrics timer
            # sets it too, but only a few seconds in, and until then a dashboard drew this
            # worker's slots in use above a limit of 0.
            self.limit_generation = generation
            self.metrics.concurrency_limit.labels(self.name).set(sum(self.lane.capacity(p) for p in mine))

    def upkeep(self, now: float) -> None:
        """The safety nets of this dispatcher's own state, at every tick of the poll
        (``Poller.poll``): the slots counted (also after a rebalance), each line reconciled with its
        slots, its expired orders taken out and the line pumped, cancel marks no order can need
        dropped."""
        self.count_slots()
        lane, mine = self.lane, self.assigned()
        if mine is not None:
            for partition in sorted(mine):  # (``wake`` has synced them to this generation)
                lane.reconcile(partition)  # self-healing: see Lane.reconcile
                if len(lane.lines[partition]):
                    self.expire_waiting(partition)
                    self.pump(partition)  # a safety net: every slot freed also pumps
        lane.expire_marks(now)

    async def free(self, partition: int, key: bytes, job_id: str) -> None:
        """Give the slot of ``key`` back and let a waiting order have it."""
        self.lane.ended_early.pop(key, None)
        self.lane.slots.remove_in(partition, key)
        self.lane.free(partition, job_id, time.time())
        self.count_slots()
        self.pump(partition)

    def take_slot(self, order: Order, key: bytes, partition: int) -> Any:
        """Write the slot (the pool already counts it); returns the future of its durable copy.
        The slot must be on Kafka before the provider hears of the job: a crash after the call but
        before the changelog write would otherwise forget the slot."""
        now = time.time()
        slot = Slot(attempt=order.attempt, taken_at=now, order=order)
        durable = self.lane.slots.put_reliably_in(partition, key, slot)
        self.lane.started(partition, order, now)
        self.count_slots()
        return durable

    # -- intake ------------------------------------------------------------------------------

    async def intake(self, msg: Any, order: Order) -> Any:
        """Act on an order now: start it if a slot is free, or park it until one is. Returns the
        future of the write its record must wait for before it is acknowledged (None: none)."""
        lane, partition = self.lane, msg.partition
        self.sync(partition, msg.generation_id)
        key = slot_key(partition, order.job_id)
        if lane.marked(key):
            # The job was cancelled before its order got here: drop it. A submission still running
            # for the job uses the mark itself.
            if key not in lane.submitting:
                lane.unmark(partition, key)
            return None
        slot = lane.slots.get(key)
        if slot is not None and slot.attempt > order.attempt:
            return None  # an order for an attempt that has been superseded
        if slot is not None and slot.attempt < order.attempt:
            return await self.take_over(order, slot, key, partition, msg.generation_id)
        if slot is not None and slot.provider_job_id:
            if slot.adopted and slot.attempt == order.attempt:
                # Taken over (``take_over``), and read again: the crash may have come between the
                # slot's record and the event that tells the jobs table whose job it is.
                await self.tell_taken_over(order.job_id, order.attempt, slot.provider_job_id)
            return None  # already submitted (a redelivered or re-dispatched order): its slot says so
        if key in lane.submitting:
            return None  # its submission is still running here (e.g. waiting out 429s)
        if slot is not None:
            # It holds a durable slot but its submission never finished (a crash mid-call).
            lane.run_in_background(key, self.submit(order, key, partition, msg.generation_id))
            return None
        parked = lane.parked(key)
        if parked is not None and parked.attempt >= order.attempt:
            return None  # it waits already (a redelivered order)
        line = lane.lines[partition]
        if order.expired(self.pipe.now_ms()):
            # Its deadline passed while it was still in Kafka: it is never submitted.
            line.take(order.job_id)
            await self.expire(order, key, partition)
            return None
        if parked is None and not len(line) and lane.pools[partition].try_acquire(order.job_id, order.tenant):
            # Nobody waits and a slot is free: take it without parking (one changelog write, not three).
            durable = self.take_slot(order, key, partition)
            lane.run_in_background(key, self.submit(order, key, partition, msg.generation_id, durable))
            return durable
        if parked is None and (spill := self.spill_for(order, len(line), partition)) is not None:
            # It would wait past its model's max_wait_s here while an equivalent has room: it goes
            # there now, before costing a place in the waiting table.
            line.take(order.job_id)
            await self.spill(order, key, partition, spill, parked=False)
            return None
        durable, full = lane.park(partition, msg.offset, order)  # (a newer attempt replaces a waiting one)
        self.metrics.parked.labels(self.name).inc()
        if full:
            self.hold(partition)
        elif partition not in self.window_held and self.read_ahead.must_hold(len(line), self.floor(partition)):
            self.window_held.add(partition)
            self.metrics.window_holds.labels(self.name).inc()
            self.hold(partition)
        self.pump(partition)
        return durable

    async def take_over(self, order: Order, slot: Slot, key: bytes, partition: int, generation: int) -> Any:
        """``order``'s job holds ``slot`` here for an earlier attempt, one the job left (a crash or a
        duplicate dispatch kept the slot past the reroute that brought the job back): the slot
        becomes ``order``'s attempt's. Returns the future of its record (None: nothing taken over).

        The jobs table takes a dispatcher's word of an attempt the job left as old news: left as it
        was, the slot's polls, timeout and provider job would speak for no attempt, and the job
        would wait for good. A provider job the slot holds is the later attempt's from now on; the
        jobs table is told so (a ``submitted`` event), and nothing is submitted again (a second
        provider job would take the provider past its limit). Without one, ``order`` is submitted
        under the slot, unless the earlier attempt's submission still runs here (taken up again as
        the partition synced: its call may be under way, and a provider that keys its jobs by the
        attempt gives it the job made before the crash): that one then serves the slot's attempt
        (``submit``, ``move_on``)."""
        lane = self.lane
        # The slot says so before anything is awaited: a release read meanwhile (the end of the
        # provider job, told as the earlier attempt's just before) meets the slot taken over, and
        # asks the provider again instead of freeing it (``release``), where it would have left
        # the later attempt with no slot, no poll and no timeout.
        durable = lane.slots.put_reliably_in(partition, key, slot.taken_over(order, time.time()))
        if slot.provider_job_id:
            await self.tell_taken_over(order.job_id, order.attempt, slot.provider_job_id)
            return durable
        if key not in lane.submitting:
            lane.run_in_background(key, self.submit(order, key, partition, generation, durable))
        return durable

    async def tell_taken_over(self, job_id: str, attempt: int, provider_job_id: str) -> None:
        """Tell the jobs table that the job's ``attempt`` has ``provider_job_id``, the job of the
        slot the attempt took over (the same event id every time: told again, it is a duplicate)."""
        await self.event(job_id, "submitted", attempt, suffix=TAKEN_OVER, durably=True,
                         provider_job_id=provider_job_id)

    def pump(self, partition: int) -> None:
        """Give free slots of ``partition`` to its waiting orders, oldest first. Several callers
        may pump at once (new orders, releases, fallbacks): a slot is taken synchronously."""
        lane = self.lane
        now_ms = self.pipe.now_ms()
        while (nxt := lane.next_waiting(partition)) is not None:
            order, fresh = nxt
            key = slot_key(partition, order.job_id)
            if order.expired(now_ms):
                if fresh:
                    lane.free(partition, order.job_id)  # the slot goes to the next order instead
                lane.spawn(self.expire(order, key, partition), f"expire:{key.decode()}")
                continue
            if fresh:
                # The slot goes into the table in the same step as into the pool: a reconcile (the
                # poll tick rebuilds the pool from the table) must never find one without the other,
                # or it would count the slot free and hand it out twice.
                durable = self.take_slot(order, key, partition)
                lane.run_in_background(key, self.start(order, key, partition, lane.generations.get(partition),
                                                       durable))
            elif key not in lane.submitting:
                # Its job holds a slot already (a duplicate of its order was in line): finish what
                # the slot began, if anything is left to do.
                slot = lane.slots.get(key)
                if slot is not None and not slot.provider_job_id:
                    lane.run_in_background(key, self.submit(order, key, partition, lane.generations.get(partition)))
        self.shrank(partition)

    async def start(self, order: Order, key: bytes, partition: int, generation: int | None,
                    durable: Awaitable[Any]) -> None:
        """A waiting order got a slot (``durable``: its slot's write): once that is on Kafka, stop
        the waiting and submit.

        ``generation``: the one ``partition`` was synced in. A revoke forgets it at once, while
        ``app.consumer_generation_id`` only changes once the next assignment arrives: in between,
        the partition's next owner may already count its slots without this one."""
        lane = self.lane
        try:
            # Shielded: a handover cancels this task, never the write, which the ack line awaits too
            # (a cancelled write would stop the line for good: it awaits its head again and again).
            await asyncio.shield(durable)
        except Exception as exc:  # the write could not be made durable: the order waits on
            log.warning("slot write for %s on %s failed, it waits again: %s", order.job_id, self.name, exc)
            lane.slots.remove_in(partition, key)
            lane.free(partition, order.job_id)
            if self.owns(partition, generation):
                # Back in its waiting entry (which the slot's replaced), at the head of the line,
                # as in memory; the next pump (at the latest the poll tick) retries.
                lane.park_at_head(partition, order)
            return
        if not self.owns(partition, generation):
            return  # revoked meanwhile: the partition's next owner finds the slot (or the waiting entry)
        await self.submit(order, key, partition, generation)

    # -- submission --------------------------------------------------------------------------

    async def event(self, job_id: str, kind: str, attempt: int, *, suffix: str = "", durably: bool = False,
                    **fields: Any) -> None:
        """Tell the jobs agent of ``kind``; ``durably``: return once Kafka has it (before a slot or
        a waiting entry that stood for the job is deleted, so that a crash never leaves neither)."""
        send = self.emit.send_durably if durably else self.emit.send
        await send(self.names.events, "JobEvent", job_id, {
            "event_id": f"{job_id}:{kind}:{self.name}:{attempt}{suffix}", "job_id": job_id, "kind": kind,
            "at": self.pipe.now_ms(), "provider": self.name, "attempt": attempt, **fields})

    async def give_up_cancelled(self, key: bytes, partition: int, job_id: str) -> None:
        """A submission whose job was cancelled meanwhile: free its slot, use up the mark."""
        self.lane.unmark(partition, key)
        await self.free(partition, key, job_id)

    async def expire(self, order: Order, key: bytes, partition: int) -> None:
        """The order's deadline passed before it got a slot: its job ends ``expired``, never
        submitted. The event is on Kafka before the order leaves the waiting table, so a crash in
        between only expires it again (the same event id)."""
        waited = max(0.0, (self.pipe.now_ms() - order.queued_at) / 1000)
        self.metrics.expired.labels(self.name).inc()
        await self.event(order.job_id, "expired", order.attempt, durably=True,
                         error=f"deadline passed after {waited:.0f}s waiting for {self.name}")
        self.lane.unpark(partition, key)

    def expire_waiting(self, partition: int) -> None:
        """Take the orders whose deadline passed out of ``partition``'s line (``upkeep``)."""
        now_ms = self.pipe.now_ms()
        line = self.lane.lines[partition]
        for order in line.remove(lambda waiting: waiting.expired(now_ms)):
            key = slot_key(partition, order.job_id)
            self.lane.spawn(self.expire(order, key, partition), f"expire:{key.decode()}")
        self.shrank(partition)

    # -- spillover ---------------------------------------------------------------------------

    def spill_for(self, order: Order, place: int, partition: int) -> Spill | None:
        """Where ``order``, at ``place`` in line, should spill to (``floodgate.spillover``), or None."""
        board = self.pipe.lines
        if board is None or order.spilled_from is not None or order.model not in self.pipe.routing.spillover:
            return None
        now = time.time()
        wait = estimated_wait(place, self.lane.start_rate(partition, now))
        return spill_to(self.pipe.routing, order.model, wait, self.name, board.room(now), datetime.now(UTC))

    async def spill(self, order: Order, key: bytes, partition: int, spill: Spill, *, parked: bool) -> None:
        """Move a waiting order to an equivalent model's provider: a new attempt of its job there.
        Its event and order are on Kafka before it leaves the waiting table (a crash in between
        only sends them again: the event id and the new attempt are the same)."""
        assert self.pipe.lines is not None
        self.pipe.lines.took(spill.target.provider)
        self.metrics.spilled.labels(self.name, spill.target.provider).inc()
        at = self.pipe.now_ms()  # when it joins the equivalent's line: the order's and the job's
        moved = order.spilled_to(spill.model, spill.target.provider, spill.target.provider_model, at)
        await self.emit.send_durably(self.names.events, "JobEvent", order.job_id, {
            "event_id": f"{order.job_id}:rerouted:{self.name}:{moved.attempt}", "job_id": order.job_id,
            "kind": "rerouted", "at": at, "provider": spill.target.provider, "model": spill.model,
            "attempt": moved.attempt, "error": spill.reason})
        await self.emit.send_durably(self.names.dispatch(spill.target.provider), "DispatchOrder", order.job_id,
                                     moved.to_record())
        if parked:
            self.lane.unpark(partition, key)

    async def report_and_spill(self, partitions: set[int]) -> None:
        """Every FLOODGATE_LINE_REPORT_INTERVAL: say how this provider's partitions stand (spillover
        and the API's backlog guard read it), then spill the waiting orders that would wait past
        their model's max_wait_s, while an equivalent has room."""
        board = self.pipe.lines
        lane, now = self.lane, time.time()
        rates = {partition: lane.start_rate(partition, now) for partition in partitions}
        known = [rate for rate in rates.values() if rate is not None]
        self.metrics.start_rate.labels(self.name).set(sum(known) if known else -1)
        for partition in sorted(partitions):
            line = lane.lines[partition]
            report = LineReport(self.name, partition, free_slots=lane.capacity(partition) - len(lane.pools[partition]),
                                waiting=len(line), start_rate=rates[partition], at=now)
            await self.emit.send_raw(self.names.lines, f"{self.name}:{partition}".encode(), report.encode())
            if board is None:
                continue
            board.put(report)
            room, rate = board.room(now), report.start_rate
            shortest = min(rule.max_wait_s for rule in self.pipe.routing.spillover.values())
            longest = max(rule.max_wait_s for rule in self.pipe.routing.spillover.values())
            if not len(line) or rate is None or not any(there.takes(longest) for there in room.values()):
                continue
            # Orders nearer the head than the shortest max_wait_s allows cannot spill: start past them.
            first = int(shortest * rate)
            when = datetime.now(UTC)
            for place, order in enumerate(line.in_order()[first:], start=first):
                if order.spilled_from is not None:
                    continue
                spill = spill_to(self.pipe.routing, order.model, estimated_wait(place, rate), self.name, room, when)
                if spill is None or line.take(order.job_id) is None:
                    continue
                room[spill.target.provider] = room[spill.target.provider].took_one()
                lane.spawn(self.spill(order, slot_key(partition, order.job_id), partition, spill, parked=True),
                           f"spill:{order.job_id}")
                if not any(there.takes(longest) for there in room.values()):
                    break
        if board is not None:
            for partition in partitions:
                self.shrank(partition)

    async def move_on(self, order: Order, key: bytes, partition: int, reason: str, *, reroute: bool,
                      generation: int | None) -> None:
        if self.lane.marked(key):
            await self.give_up_cancelled(key, partition, order.job_id)  # cancelled: neither fail nor fall back
            return
        slot = self.lane.slots.get(key)
        if slot is not None and slot.attempt > order.attempt:
            # A later attempt took the slot over while this order's submission ran (``take_over``):
            # the job left this order's attempt, so its failure moves nothing on (a reroute of it
            # would submit an attempt nobody waits for, and give the later attempt's slot back).
            # The slot's own order is submitted instead.
            if not slot.provider_job_id:
                await self.submit(slot.order, key, partition, generation)
            return
        # The job's next step is on Kafka before its slot is given back: the slot is all that
        # stands for the job here (its order was acknowledged long ago), so a crash between the
        # two must leave the slot, whose next owner moves the job on again (the same event id and
        # attempt), never neither.
        tried = [*order.tried, self.name]
        nxt = next_target(self.pipe.routing, order.model, tried, datetime.now(UTC)) if reroute else None
        if nxt is None:
            await self.event(order.job_id, "failed", order.attempt, error=reason, durably=True)
        else:
            self.metrics.reroutes.labels(self.name).inc()
            await self.event(order.job_id, "rerouted", order.attempt + 1, provider=nxt.provider, error=reason,
                             durably=True)
            moved = order.moved_to(nxt.provider, nxt.provider_model)
            await self.emit.send_durably(self.names.dispatch(nxt.provider), "DispatchOrder", order.job_id,
                                         moved.to_record())
        await self.free(partition, key, order.job_id)

    def sync(self, partition: int, generation: int) -> bool:
        """``Lane.sync``; once ``partition`` is seen in a new generation, also take up the
        submissions its slots began and did not finish (``resume``). True if it synced."""
        if not self.lane.sync(partition, generation):
            return False
        self.resume(partition, generation)
        return True

    def resume(self, partition: int, generation: int) -> int:
        """Submit, now, the slots of ``partition`` that hold no provider job id and no submission
        runs for: a handover cancelled theirs before they called (every rebalance revokes every
        partition, and most come back), or a crash cut them short. Before, they waited for the
        poll's re-dispatch, ``poll_after`` seconds on. No call is under way for them anywhere: a
        handover waits for the calls it finds (``Lane.hand_over``). Returns how many."""
        lane, prefix, taken = self.lane, f"{partition}:".encode(), 0
        for key in lane.slots:
            if not key.startswith(prefix) or key in lane.submitting or key in lane.cancelling:
                continue
            slot = lane.slots.get(key)
            if slot is not None and not slot.provider_job_id:
                lane.run_in_background(key, self.submit(slot.order, key, partition, generation))
                taken += 1
        if taken:
            log.info("%s[%d]: %d submissions taken up again", self.name, partition, taken)
        return taken

    def owns(self, partition: int, generation: int | None) -> bool:
        """Whether ``partition`` is still this worker's as it was in ``generation`` (the one a
        submission began in): not revoked since, nor being handed over. Never with no generation."""
        lane = self.lane
        return (generation is not None and lane.generations.get(partition) == generation
                and partition not in lane.handing_over)

    async def submit(self, order: Order, key: bytes, partition: int, generation: int | None,
                     durable: Awaitable[Any] | None = None) -> None:
        """Hand ``order`` to the provider once its slot is durable; 429s and outages per policy.
        ``generation``: the one ``partition`` was synced in when the submission began; a
        submission whose partition moved on since never calls the provider (``owns``)."""
        lane = self.lane
        if durable is not None:
            try:
                await asyncio.shield(durable)  # (as in ``start``: the ack line awaits it too)
            except Exception as exc:  # the ack line sends it again; the poller submits it then
                log.warning("slot write for %s on %s failed: %s", order.job_id, self.name, exc)
                return
        request = SubmitOrder(
            job_id=order.job_id, model=order.provider_model, prompt=order.prompt, image_url=order.image_url,
            webhook_url=self.webhook_url, idempotency_key=order.idempotency_key,
            metadata={"fg_attempt": str(order.attempt)}, params=dict(order.params))
        has_fallback = next_target(self.pipe.routing, order.model, [*order.tried, self.name],
                                   datetime.now(UTC)) is not None
        result = await self._call_provider(order, key, partition, generation, request, has_fallback)
        if result is None:
            return
        self.metrics.submissions.labels(self.name).inc()
        # No await between this check and the slot write below: a release either sees the
        # provider job id (and cancels it) or left the mark that is read here.
        if lane.marked(key):
            # The provider job is cancelled before the slot is given back.
            await self.canceller.cancel_at_provider(order.job_id, result.provider_job_id)
            await self.give_up_cancelled(key, partition, order.job_id)
            return
        slot = lane.slots.get(key)
        if slot is None:
            return  # freed meanwhile (the job ended or moved on): nothing left to record
        taken_over = slot.attempt > order.attempt
        ended = same_provider_job(self.connector, lane.ended_early.pop(key, None), result.provider_job_id)
        if ended and not taken_over:
            await self.free(partition, key, order.job_id)  # released meanwhile: a very fast job
            return
        # The slot's second record is the job's submission: the poller and cancels find the
        # provider job by it, and the API's job view reads it (no event, no jobs-table write).
        # Taken over meanwhile by a later attempt (``take_over``), the slot keeps this order as
        # the one that made the job (``Slot.adopted``), and the jobs table is told whose job it is.
        recorded = lane.slots.put_in(partition, key, slot.submitted(result.provider_job_id,
                                                                    by=order if taken_over else None))
        if partition in lane.handing_over:
            await recorded  # on Kafka before the partition's next owner reads the table (hand_over)
        if taken_over:
            await self.tell_taken_over(order.job_id, slot.attempt, result.provider_job_id)
            if ended:
                # Its end was heard during the call, and may have been told as this order's attempt's
                # (the jobs table knew the provider job as that attempt's: its webhook is then a
                # stray, answered with the release read meanwhile). Freed now, the slot's attempt
                # would never hear of its end, nor time out, and wait for good: as for an ``ended``
                # release of an adopted slot (``release``), the provider is asked again, the end
                # told as the slot's attempt's, and the jobs table's answer to that frees the slot.
                self.poller.ask_again(key, partition)
                return
        self.poller.submitted(key, result.state)

    async def _call_provider(self, order: Order, key: bytes, partition: int, generation: int | None,
                             request: SubmitOrder, has_fallback: bool) -> SubmitResult | None:
        """The provider's answer, or None when the order went elsewhere (cancelled, failed,
        rerouted) or its partition did (left to the next owner, which finds its slot)."""
        lane = self.lane
        failures, started = 0, time.monotonic()
        while True:
            if not self.owns(partition, generation):
                return None  # (checked again after every wait: a revoke may have come meanwhile)
            if lane.marked(key):
                await self.give_up_cancelled(key, partition, order.job_id)  # never reaches the provider
                return None
            now = time.monotonic()
            if not lane.breaker.allow(now) and has_fallback:
                await self.move_on(order, key, partition, f"{self.name} is failing (circuit open)", reroute=True,
                                   generation=generation)
                return None
            bucket = lane.buckets.get(partition)
            if bucket is not None:
                wait = bucket.take(now)
                if wait > 0:
                    await asyncio.sleep(wait)
                    if not self.owns(partition, generation):
                        return None
            # No await between the check above and the call: a handover either cancels this
            # submission before it calls, or waits for the call it finds under way.
            lane.calling.add(key)
            try:
                result: SubmitResult = await self.connector.submit(self.pipe.session(), request)
            except FloodgateError as exc:
                failure: FloodgateError | None = exc
            else:
                failure = None
            finally:
                lane.calling.discard(key)
            if failure is None:
                lane.breaker.record_success()
                return result
            if not self.owns(partition, generation):
                return None  # refused during a handover: the next owner decides, as it submits
            if isinstance(failure, ProviderUnavailable):
                lane.breaker.record_failure(time.monotonic())
            elif failure.retriable:
                self.metrics.rate_limited.labels(self.name).inc()
            decision = decide(failure, failures=failures, waited=time.monotonic() - started, has_fallback=has_fallback,
                              breaker_open=lane.breaker.state(time.monotonic()) is BreakerState.OPEN,
                              policy=self.policy, backoff=lane.backoff)
            if decision.action == "retry":
                failures += 1
                self.metrics.retries.labels(self.name).inc()
                await asyncio.sleep(decision.delay)
                continue
            await self.move_on(order, key, partition, decision.reason, reroute=decision.action == "reroute",
                               generation=generation)
            return None

    # -- releases and cancels ----------------------------------------------------------------

    async def release(self, rel: dict[str, Any], partition: int, generation: int) -> None:
        lane = self.lane
        self.sync(partition, generation)
        key = slot_key(partition, rel["job_id"])
        slot = lane.slots.get(key)
        if rel["status"] == ENDED:
            # From the webhook bridge: that provider job ended. Only its own slot is freed; a
            # slot whose submission has not yet recorded the provider job id (a very fast job)
            # is freed by the submission when it does. The connector says whether the two ids
            # name one job (a fal webhook may name it under another app than its submission).
            ended = rel.get("provider_job_id")
            if slot is not None and ended and same_provider_job(self.connector, slot.provider_job_id, ended):
                if slot.adopted and rel["attempt"] < slot.attempt:
                    # Made for an earlier attempt: its end may have been told as that attempt's (a
                    # poll's word just before the takeover), which the jobs table takes as old news
                    # and answers with this release. Freed now, the slot's attempt would never hear
                    # of its end, nor time out: the provider is asked again, the end told as the
                    # slot's attempt's, and the jobs table's answer to that frees the slot.
                    self.poller.ask_again(key, partition)
                    return
                await self.free(partition, key, rel["job_id"])
            elif slot is not None and ended and slot.provider_job_id is None:
                lane.ended_early[key] = ended
            return
        if rel["status"] == "cancelled" and (slot is None or slot.attempt <= rel["attempt"]):
            await self.canceller.cancel(partition, key, rel["job_id"])
        elif slot is not None and slot.attempt <= rel["attempt"]:
            await self.free(partition, key, rel["job_id"])

    # -- timers ------------------------------------------------------------------------------

    def assigned(self) -> set[int] | None:
        """This worker's dispatch partitions, or None while a rebalance or recovery is under way."""
        app = self.app
        if app.rebalancing or app.in_recovery:
            return None
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == self.orders_topic}

    async def wake(self) -> None:
        # After a restart or a rebalance, orders in the waiting table must move even when no
        # dispatch record or release arrives on their partition to trigger ``lane.sync``.
        mine = self.assigned()
        if mine is None:
            return
        lane = self.lane
        generation = self.app.consumer_generation_id
        if lane.settled_generation != generation:
            lane.settled_generation = generation
            dropped = lane.drop_unassigned(mine)
            if dropped:
                log.info("%s: dropped %d local table entries of partitions now owned elsewhere", self.name, dropped)
        for partition in sorted(mine):
            if self.sync(partition, generation):
                self.pump(partition)
        if self.pipe.lines is not None:
            self.pipe.lines.start()
        await self.report_and_spill(mine)
        self.refetch()  # the window may have room since lines of other workers' partitions left


def register_provider(pipe: Pipeline, name: str, policy: SubmitPolicy = DEFAULT_POLICY) -> Lane:
    """Register ``name``'s submitter and releaser agents and timers; returns its ``Lane``."""
    return Dispatcher(pipe, name, policy).register()
