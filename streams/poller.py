"""A provider's jobs asked about once submitted: the late poll, the timeout, and the following of
jobs at providers that say little by themselves. One ``Poller`` per ``Dispatcher``
(``streams.dispatcher``), which owns it.

A timer polls the provider for jobs that have been quiet for ``poll_after`` seconds (lost
webhooks; where webhooks are on, less and less often while a job stays quiet, up to every
``poll_after`` seconds: ``floodgate.following.late_look_due``), re-dispatches jobs whose
submission never completed (a crash mid-call), and fails jobs older than ``job_timeout`` unless
their provider, asked once more, says they ended.

**Providers that say little by themselves.** fal, RunPod and WaveSpeed call back only when a job
ends, and Runway never: a job they hold would show ``submitted`` until its end, or until the
``poll_after`` poll. fal also keeps accepted jobs waiting in a queue of its own (it counts only
running jobs against its limit; such a job holds one of our slots all the same) and tells the place
when asked. For a connector whose ``callbacks`` are ``"end"`` or ``"none"``, a second timer (every
``provider_status_poll`` seconds) asks for the status of each job it follows
(``floodgate.following`` says which answers are news and how long a job is followed): a
``submitted`` event with ``queue_position`` when its place changed, ``running`` once it starts, and
where no webhook ever comes its progress and its end. Each piece of news costs two records (the
event and the job's state change), and only at such a provider. The followed set lives in memory
only: after a restart the ``poll_after`` poll finds such jobs again and follows them. Where no
webhook can reach us at all (no ``FLOODGATE_WEBHOOK_BASE_URL``), every provider is such a
provider: its jobs are followed to their end, so an end is found within a status poll, not
``poll_after`` seconds after the slot was taken.

**Status calls within the provider's read limit.** Both timers only say which jobs are due; the
calls wait their turn in a ``StatusQueue`` (``floodgate.following``) that spends the provider's
read budget, ``status_rate_per_second`` in the routing file or else the connector's documented
limit (Replicate: 3,000 reads a minute), split over the dispatch partitions like the slots. The
timers ask what the budget allows at once, and a third timer (every ``ASK_EVERY`` seconds) asks
the rest as it refills, so the calls are spread over time instead of sent in a burst each round,
and a job waiting its turn is asked before one asked since. A 429 to a status call stops them all
until its Retry-After. Without a budget every job due is asked at once, ``FOLLOW_CALLS`` at a time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import faust

from connectors.providers.base import ProviderStatus
from floodgate.dispatch import Slot, parse_slot_key, timed_out_attempt
from floodgate.errors import FloodgateError, RateLimited
from floodgate.following import (
    ENDS,
    StatusQueue,
    Word,
    callbacks_heard,
    followed,
    is_news,
    keep_following,
    late_look_due,
    late_poll_every,
    read_budget,
)
from floodgate.jobs.events import event_kind
from floodgate.throttle import TokenBucket, partition_bucket

if TYPE_CHECKING:
    from streams.dispatcher import Dispatcher

log = logging.getLogger(__name__)

FOLLOW_CALLS = 8
"""Status calls at once (see the module docstring)."""
ASK_EVERY = 0.25
"""Seconds between two turns of the status calls a provider's read budget put off."""


class Poller:
    """The status calls of one provider's dispatcher: the poll tick (quiet jobs, unfinished
    submissions, timeouts; and the safety nets of the dispatcher's lines), the following of jobs,
    and the calls' turns within the read budget. ``register()`` adds its timers to the Faust app."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        # The dispatcher itself, not a dozen callbacks: the slots, the connector, the events, the
        # cancels and the poll tick's chores on the waiting lines are all the dispatcher's.
        self.dispatcher = dispatcher
        self.pipe, self.name, self.lane = dispatcher.pipe, dispatcher.name, dispatcher.lane
        self.settings, self.metrics = dispatcher.settings, dispatcher.metrics
        # Without a webhook base URL no provider can call us back, whatever its webhooks could tell.
        self.callbacks = callbacks_heard(getattr(dispatcher.connector, "callbacks", "all"),
                                         dispatcher.webhook_url is not None)
        """What the provider's webhooks tell us: every change, only the end, nothing (``floodgate.following``)."""
        self.follows = self.settings.provider_status_poll > 0 and followed(self.callbacks)
        """Whether its jobs are followed by status calls (see the module docstring)."""
        self.followed: set[bytes] = set()
        """Slot keys of the jobs followed."""
        self.told: dict[bytes, Word] = {}
        """Slot key → the last word a status call told about the job (followed, or by the late poll)."""
        self.asking: set[bytes] = set()
        """Slot keys with a status call made out of turn under way (``ask_again``)."""
        self.timing_out: dict[bytes, str] = {}
        """Slot key → the provider job its timeout is cancelling, until the failure is told
        (``check_slot``): a status call that hears of that job's cancel meanwhile hears our own."""
        self.poll_every = late_poll_every(self.settings.poll_after)
        """Seconds between two rounds of the late poll (``poll``)."""
        self.looked: dict[bytes, tuple[float, int]] = {}
        """Slot key → (when its slot was taken, how many times the late poll asked about the job
        since). Only where webhooks are on: without them the late poll is how ends are found, and
        asks every round."""
        spec = self.pipe.routing.providers[self.name]
        self.status_rate = read_budget(spec.status_rate_per_second, dispatcher.connector)
        """Status calls a second at most, over all workers (None: no budget)."""
        buckets: dict[int, TokenBucket] | None = None
        if self.status_rate:
            partitions = dispatcher.partitions
            buckets = {p: partition_bucket(self.status_rate, partitions) for p in range(partitions)}
        self.status_calls: StatusQueue[bytes] = StatusQueue(buckets)
        """The status calls due, waiting for their turn within the budget."""
        self.clock: Callable[[], float] = time.time
        """The status calls' clock (tests step it)."""

    def register(self, app: faust.App) -> None:
        """Add the poll timer, and where they apply the follow timer and the ask timer."""
        app.timer(interval=self.poll_every, name=f"poll-{self.name}")(self.poll)
        if self.follows:
            app.timer(interval=self.settings.provider_status_poll, name=f"follow-{self.name}")(self.follow)
        if self.status_calls.buckets is not None:
            app.timer(interval=ASK_EVERY, name=f"ask-{self.name}")(self.ask_due)

    def submitted(self, key: bytes, state: str) -> None:
        """``key``'s job was just accepted by the provider, in ``state``: followed from now on if
        no webhook will tell its start (one whose provider calls back at its end only, while it
        waits in the provider's own queue) or anything at all."""
        if self.follows and (self.callbacks == "none" or state == "queued"):
            self.followed.add(key)

    async def poll(self) -> None:
        lane = self.lane
        now = time.time()
        self.dispatcher.upkeep(now)
        known = {*self.told, *self.looked, *self.status_calls.keys()}
        for key in [key for key in known if lane.slots.get(key) is None]:
            self.told.pop(key, None)  # (its job ended or moved on: what was told of it is of no more use)
            self.looked.pop(key, None)
            self.status_calls.discard(key)
        overdue: list[tuple[bytes, Slot]] = []
        for key, slot in list(lane.slots.items()):
            if key in lane.submitting or key in lane.cancelling or parse_slot_key(key)[0] not in lane.generations:
                continue  # (the last: not this worker's partition, or not yet recovered)
            if now - slot.taken_at > self.settings.job_timeout:
                overdue.append((key, slot))  # (each asks the provider first: a few at once)
            else:
                await self.check_slot(key, slot, now)
        for start in range(0, len(overdue), FOLLOW_CALLS):
            group = overdue[start:start + FOLLOW_CALLS]
            await asyncio.gather(*(self.check_slot(key, slot, now) for key, slot in group))
        await self.ask_due()

    async def check_slot(self, key: bytes, slot: Slot, now: float) -> None:
        """Fail a job past ``job_timeout``, dispatch again one whose submission never finished, or
        queue a status call about a quiet one (made by ``ask_due``)."""
        age = now - slot.taken_at
        _, job_id = parse_slot_key(key)
        d, settings = self.dispatcher, self.settings
        if age > settings.job_timeout:
            if slot.provider_job_id and await self.ended_at_provider(key, slot, now):
                return  # its end is told: the job-state agent releases the slot
            self.metrics.timeouts.labels(self.name).inc()
            log.warning("%s: job %s (attempt %d, provider job %s) failed: no result after %.0f s",
                        self.name, job_id, slot.attempt, slot.provider_job_id, age)
            attempt = slot.attempt
            if slot.provider_job_id:
                self.timing_out[key] = slot.provider_job_id
            try:
                if slot.provider_job_id:
                    # Before the failure, whose release frees the slot: the provider must have let
                    # the job go before another takes its place (a failed cancel is logged, never
                    # raised).
                    await d.canceller.cancel_at_provider(job_id, slot.provider_job_id)
                    # (A later attempt may have taken the slot over during the cancel.)
                    attempt = timed_out_attempt(slot, self.lane.slots.get(key))
                await d.event(job_id, "failed", attempt,
                              error=f"no result from {self.name} after {settings.job_timeout:.0f}s")
            finally:
                self.timing_out.pop(key, None)
            return
        if age < settings.poll_after or key in self.followed:
            return  # (a followed job is asked about more often: ``follow``)
        if not slot.provider_job_id:
            # The submission never finished (the worker died mid-call): dispatch it again; the
            # provider's idempotency key makes the second call return the first job.
            await d.emit.send(d.names.dispatch(self.name), "DispatchOrder", job_id, slot.order.to_record())
            return
        if d.webhook_url is not None:
            taken, looks = self.looked.get(key, (slot.taken_at, 0))
            looks = looks if taken == slot.taken_at else 0  # (a slot taken again: a new render)
            if not late_look_due(age, looks, settings.poll_after, self.poll_every):
                return
            self.looked[key] = (slot.taken_at, looks + 1)
        self.status_calls.offer(key, parse_slot_key(key)[0])

    async def ended_at_provider(self, key: bytes, slot: Slot, now: float) -> bool:
        """Whether the provider says the job of a slot past ``job_timeout`` has ended, its end
        told as an event. Asked once before the timeout fails the job: a completion may have
        waited in Kafka, or been lost, while this worker stood still (a stop longer than the
        timeout, then the poll tick before the stream of webhooks). Asked again at each tick the
        slot is still held, as the late poll tells an end as often as it hears it (a word told
        may be lost). A status call that fails, or is refused for the rate, leaves the timeout to
        fail the job."""
        assert slot.provider_job_id is not None
        partition, job_id = parse_slot_key(key)
        try:
            status = await self.dispatcher.connector.status(self.pipe.session(), slot.provider_job_id)
        except Exception as exc:  # whatever the call met, the timeout still holds
            log.info("status call before the timeout of %s at %s failed: %s", job_id, self.name, exc)
            return False
        self.metrics.polls.labels(self.name).inc()
        self.status_calls.charge(partition, status.reads, self.clock())
        if self.lane.slots.get(key) != slot:
            return True  # released (or taken again) during the call: this check has no more to do
        if status.state not in ENDS:
            return False
        await self.tell(key, slot, status, now)
        return True

    async def follow(self) -> None:
        """Where each followed job stands now: a status call per job, in its turn (``ask_due``),
        told by ``tell``."""
        lane = self.lane
        for key in list(self.followed):
            slot = lane.slots.get(key)
            if slot is None or not slot.provider_job_id or parse_slot_key(key)[0] not in lane.generations:
                self.followed.discard(key)  # ended, moved on, or no longer this worker's partition
                self.status_calls.discard(key)
            elif key not in lane.submitting and key not in lane.cancelling:
                self.status_calls.offer(key, parse_slot_key(key)[0])
        await self.ask_due()

    async def ask_due(self) -> None:
        """Make the status calls whose turn it is (all of those due, without a budget),
        ``FOLLOW_CALLS`` at once; a 429 stops the rest until its Retry-After."""
        lane, calls = self.lane, self.status_calls
        now = self.clock()
        taken = calls.take(now)
        for start in range(0, len(taken), FOLLOW_CALLS):
            group, asked = taken[start:start + FOLLOW_CALLS], []
            for key, partition in group:
                slot = lane.slots.get(key)
                # (Its job ended, moved on or is being cancelled meanwhile: nothing to ask.)
                if slot is not None and slot.provider_job_id and key not in lane.submitting \
                        and key not in lane.cancelling:
                    asked.append(((key, partition), self.look(key, slot, now)))
            waits = await asyncio.gather(*(call for _, call in asked))
            refused = [(due, wait) for (due, _), wait in zip(asked, waits, strict=True) if wait is not None]
            if refused:
                # The refused calls are made again first, once the provider lets us.
                calls.refused(self.clock() + max(wait for _, wait in refused),
                              [due for due, _ in refused] + taken[start + FOLLOW_CALLS:])
                break
        self.metrics.status_calls_waiting.labels(self.name).set(len(calls))

    async def look(self, key: bytes, slot: Slot, now: float) -> float | None:
        """Ask the provider how the slot's job stands and tell what it says (a failed call is
        only logged: its job is due again at the next tick). Returns the seconds to wait before
        the next status call when the provider refused this one for its rate, else None."""
        assert slot.provider_job_id is not None
        try:
            status = await self.dispatcher.connector.status(self.pipe.session(), slot.provider_job_id)
            self.metrics.polls.labels(self.name).inc()
            if status.reads > 1:
                self.status_calls.charge(parse_slot_key(key)[0], status.reads - 1, self.clock())
            await self.tell(key, slot, status, now)
        except RateLimited as exc:
            self.metrics.status_rate_limited.labels(self.name).inc()
            log.info("status poll of %s at %s refused for the rate: %s", parse_slot_key(key)[1], self.name, exc)
            return exc.retry_after or 1.0
        except FloodgateError as exc:
            log.info("status poll of %s at %s failed: %s", parse_slot_key(key)[1], self.name, exc)
        except Exception:  # a timer's chore must not die
            log.exception("status poll of %s at %s failed", parse_slot_key(key)[1], self.name)
        return None

    async def tell(self, key: bytes, slot: Slot, status: ProviderStatus, now: float) -> None:
        """What a status call found, as an event if it is news (``floodgate.following``); whether to
        follow the job further."""
        _, job_id = parse_slot_key(key)
        word = Word(slot.attempt, status.state, status.queue_position, status.progress)
        if self.follows and keep_following(word, self.callbacks):
            self.followed.add(key)
        else:
            self.followed.discard(key)
        if not is_news(self.told.get(key), word):
            return
        told: dict[str, Any]
        if word.state == "queued":
            if word.place is None or not self.follows:
                return  # nothing to record: the job is submitted already
            kind, told = "submitted", {"queue_position": word.place}
        else:
            found = event_kind(status.state, status.progress)
            if found is None:
                return
            timing_out = self.timing_out.get(key)
            if found == "cancelled" and timing_out is not None and timing_out == slot.provider_job_id:
                # The echo of the timeout's own cancel, heard by a status call of the follow or
                # ask timer during it: told before the failure, it would end the job "cancelled
                # at" the provider, not saying it ran out of time. The failure comes next, on the
                # same partition of the events topic; the word, if heard again, after it.
                return
            kind, told = found, {"progress": status.progress, "video_url": status.video_url, "error": status.error}
        self.told[key] = word
        await self.dispatcher.event(job_id, kind, slot.attempt, provider_job_id=slot.provider_job_id,
                                    suffix=f":poll:{int(now * 1000)}", **told)

    def ask_again(self, key: bytes, partition: int) -> None:
        """The provider job of ``key``'s adopted slot ended, and its end may have been told as the
        earlier attempt's: a status call tells it as the slot's attempt's (``look``), and the jobs
        table's answer to that frees the slot. The call is made now, out of turn (as a timeout's
        is), and paid from the read budget all the same: the slot holds a share of the limit for a
        job that has ended, and in its turn (behind the calls the budget put off, or until the
        next tick without a budget) it would sit idle for a poll round or more. One call at a time
        per slot: one end is often heard twice (the bridge's release, and the jobs agent's answer
        to the same webhook told as the earlier attempt's). A call under way when its partition
        moves on is let finish: what it tells is true, and the next owner, which knows nothing of
        the end, has it soonest so."""
        if key in self.asking:
            return  # (its turn, if it has one, stays: the call under way may find the end not told yet)
        self.status_calls.discard(key)  # (asked now: not again in its turn)
        self.asking.add(key)
        self.lane.spawn(self.ask_now(key, partition), f"ask:{key.decode()}")

    async def ask_now(self, key: bytes, partition: int) -> None:
        """``ask_again``'s status call. While a 429 stops the status calls it waits its turn; one
        refused for the rate goes first once the provider lets us (``StatusQueue.refused``)."""
        calls = self.status_calls
        try:
            slot = self.lane.slots.get(key)
            if slot is None or not slot.provider_job_id:
                return  # freed meanwhile: nothing left to ask
            if self.clock() < calls.paused_until:
                calls.offer(key, partition)
                return
            calls.charge(partition, 1, self.clock())  # (``look`` charges only the reads past the first)
            wait = await self.look(key, slot, time.time())
            if wait is not None:
                calls.refused(self.clock() + wait, [(key, partition)])
        finally:
            self.asking.discard(key)
