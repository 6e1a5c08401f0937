"""A job's later attempt reaching a provider whose slot for the job an earlier attempt still holds
(A → B → A, after a crash or a duplicate dispatch): the later attempt takes the slot over. Its
provider job, if the slot has one, becomes the later attempt's (the jobs table is told; nothing is
submitted again); else the later attempt is submitted under the slot. Either way the slot names the
later attempt from then on, in its polls' words and its timeout, which the jobs table would
otherwise take as old news of an attempt the job left.

Broker-free, with the fakes of ``test_dispatcher``."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.providers.base import SubmitOrder, SubmitResult
from floodgate.dispatch import ENDED, Slot, slot_key, timed_out_attempt, unsubmitted
from floodgate.errors import ProviderGone
from floodgate.jobs.events import Release, aim, event_from_record, stray_end, webhook_event
from floodgate.jobs.state import JobEvent, JobState, JobStatus, apply
from floodgate.settings import Settings
from streams.dispatcher import Dispatcher
from tests.unit.test_dispatcher import (
    QueueingProvider,
    ReadLimitedProvider,
    Writes,
    emitter,
    held,
    log_writes,
    message,
    one_dispatcher,
    order,
    settle,
    unit_settings,
    until_calling,
)

FIRST, BACK = 0, 2
"""wan's attempt of the job before it went elsewhere (attempt 1), and its attempt back at wan."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return unit_settings(tmp_path)


@pytest.fixture
async def wan(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Dispatcher, QueueingProvider]]:
    """wan's dispatcher, whose provider answers status calls (``QueueingProvider``: webhooks only at
    the end, so its jobs are followed too)."""
    provider = QueueingProvider()
    async with one_dispatcher(settings, provider, tmp_path / "wan") as d:
        yield d, provider


def left_by_a_crash(d: Dispatcher, job_id: str, attempt: int, provider_job_id: str | None = None) -> bytes:
    """A slot of ``attempt`` as the table holds it after a crash (recovered from its changelog),
    counted in its pool as the partition's sync counts it."""
    key = slot_key(0, job_id)
    d.lane.slots.put_in(0, key, Slot(attempt=attempt, taken_at=time.time(), order=order(job_id, attempt),
                                     provider_job_id=provider_job_id))
    d.lane.reconcile(0)
    return key


def attempts_told(d: Dispatcher, kind: str) -> list[tuple[int, str | None]]:
    return [(r["attempt"], r.get("provider_job_id")) for r in emitter(d).events(kind)]


# -- the record ----------------------------------------------------------------------------------


def test_a_slot_taken_over_keeps_its_provider_job_and_the_order_that_made_it() -> None:
    first = Slot(attempt=FIRST, taken_at=5.0, order=order("a", FIRST), provider_job_id="pj-a")
    taken = first.taken_over(order("a", BACK), now=9.0)
    assert (taken.attempt, taken.taken_at, taken.order, taken.provider_job_id) == (BACK, 5.0, first.order, "pj-a")
    assert taken.adopted and not first.adopted
    assert Slot.decode(taken.encode()) == taken


def test_a_slot_taken_over_before_its_submission_finished_is_the_later_order_s_from_then() -> None:
    first = Slot(attempt=FIRST, taken_at=5.0, order=order("a", FIRST))
    taken = first.taken_over(order("a", BACK), now=9.0)
    assert taken == Slot(attempt=BACK, taken_at=9.0, order=order("a", BACK)) and not taken.adopted
    assert unsubmitted(taken.encode()), "the API's job view still skips it unread"
    assert taken.submitted("pj-a").adopted is False
    assert taken.submitted("pj-a", by=first.order).adopted, "made by the earlier attempt's call, still running"


EARLIER = Slot(attempt=FIRST, taken_at=5.0, order=order("a", FIRST), provider_job_id="pj-a")


@pytest.mark.parametrize(("now", "failed"), [
    (EARLIER, FIRST),
    (None, FIRST),
    (EARLIER.taken_over(order("a", BACK), now=9.0), BACK),
    (Slot(attempt=BACK, taken_at=9.0, order=order("a", BACK), provider_job_id="pj-b"), FIRST),
    (Slot(attempt=BACK, taken_at=9.0, order=order("a", BACK)), FIRST),
], ids=["unchanged", "freed", "taken-over", "another-provider-job", "taken-again-unsubmitted"])
def test_a_timeout_fails_the_attempt_that_holds_its_provider_job_once_it_is_cancelled(
        now: Slot | None, failed: int) -> None:
    assert timed_out_attempt(EARLIER, now) == failed


# -- the slot holds a provider job: it becomes the later attempt's ----------------------------------


async def test_a_later_attempt_takes_over_the_provider_job_of_the_slot_and_submits_nothing(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = wan
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    assert len(provider.submitted) == 1
    log = log_writes(d, Writes())
    durable = await d.intake(message(1), order("a", BACK))
    assert durable is not None, "the order is acknowledged once the slot's new record is on Kafka"
    await durable
    await settle(d)
    assert len(provider.submitted) == 1, "no second provider job: the provider's limit holds"
    key, slot = held(d, "a")
    assert (slot.attempt, slot.provider_job_id) == (BACK, "pj-a")
    assert len(d.lane.pools[0]) == 1
    assert attempts_told(d, "submitted") == [(BACK, "pj-a")], "the jobs table learns it is the attempt's job"
    assert log == ["put 0:a", "durable JobEvent submitted"], "the slot says so before anything is awaited"
    assert await d.intake(message(1), order("a", BACK)) is None, "redelivered: as any submitted job's order"
    await settle(d)
    told = emitter(d).events("submitted")
    assert len(provider.submitted) == 1 and len(told) == 2, "and told again: a crash may have come in between"
    assert len({event_from_record(record).event_id for record in told}) == 1, "the same event: a duplicate"


async def test_a_release_read_while_the_takeover_is_told_leaves_the_slot_to_the_later_attempt(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """The likeliest release to come in while the takeover's event is written: the end of the slot's
    provider job, told by a poll as the earlier attempt's just before, which the jobs table takes
    as old news and answers with an ``ended`` release. The slot is already the later attempt's: it
    is held, the provider asked again, and the end told for the later attempt."""
    d, provider = wan
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    provider.say_completed("a")
    await d.poller.follow()
    (word,) = emitter(d).events("completed")
    assert event_from_record(word).attempt == FIRST
    send_durably = d.emit.send_durably

    async def release_meanwhile(topic: str, schema: str, key: Any, record: dict[str, Any]) -> None:
        if record.get("kind") == "submitted":
            await d.release({"job_id": "a", "attempt": FIRST, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
        await send_durably(topic, schema, key, record)

    d.emit.send_durably = release_meanwhile  # type: ignore[method-assign]
    durable = await d.intake(message(1), order("a", BACK))
    assert durable is not None
    await settle(d)
    key, slot = held(d, "a")
    assert (slot.attempt, slot.provider_job_id) == (BACK, "pj-a"), "still the later attempt's"
    assert attempts_told(d, "completed") == [(FIRST, "pj-a"), (BACK, "pj-a")], "its end told for attempt 2"
    assert len(provider.submitted) == 1


def job_event(event_id: str, kind: str, **kw: Any) -> JobEvent:
    return JobEvent(event_id=event_id, job_id="a", kind=kind, at=1.0, **kw)


async def test_the_jobs_table_takes_the_taken_over_provider_job_as_the_attempt_back_at_wan_s(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """The event told is one the jobs rules (``floodgate.jobs``) take: wan → kling → wan, the job
    now at wan's second attempt learns its provider job, and the slot's later words end it."""
    d, provider = wan
    state: JobState | None = None
    for event in (job_event("q", "queued", provider="wan", tenant="t"),
                  job_event("r1", "rerouted", provider="kling", attempt=1),
                  job_event("r2", "rerouted", provider="wan", attempt=BACK)):
        state = apply(state, event).state
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    (told,) = emitter(d).events("submitted")
    event = event_from_record(told)
    aimed = aim(state, event)
    assert aimed is not None
    state = apply(state, aimed).state
    assert state is not None and (state.status, state.attempt, state.provider_job_id) == (
        JobStatus.SUBMITTED, BACK, "pj-a")
    provider.say_completed("a")
    await d.poller.follow()
    (done,) = emitter(d).events("completed")
    aimed = aim(state, event_from_record(done))
    assert aimed is not None and apply(state, aimed).became_terminal


async def test_the_taken_over_slot_s_polls_and_timeout_name_the_later_attempt(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = wan
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    key, slot = held(d, "a")
    provider.say("a", "running")
    await d.poller.follow()  # (the provider answered the submission "queued": the job is followed)
    assert attempts_told(d, "running") == [(BACK, "pj-a")]
    await d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 1)
    assert [r["attempt"] for r in emitter(d).events("failed")] == [BACK]
    assert provider.cancelled == ["pj-a"]


# -- the slot holds no provider job: the later attempt is submitted under it ------------------------


async def test_a_later_attempt_is_submitted_under_a_slot_whose_submission_never_finished(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = wan
    d.sync(0, 1)  # the partition was synced before: nothing took the slot's submission up again
    key = left_by_a_crash(d, "a", FIRST)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    assert [o.idempotency_key for o in provider.submitted] == [f"a:{BACK}"]
    key, slot = held(d, "a")
    assert (slot.attempt, slot.provider_job_id, slot.order.attempt) == (BACK, "pj-a", BACK)
    assert len(d.lane.pools[0]) == 1
    assert not emitter(d).events("submitted"), "its own submission: the slot's record says it, as for any"
    provider.say("a", "running")
    await d.poller.follow()
    await d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 1)
    assert attempts_told(d, "running") == [(BACK, "pj-a")]
    assert [r["attempt"] for r in emitter(d).events("failed")] == [BACK]


async def test_after_a_crash_the_earlier_attempt_s_submission_taken_up_again_serves_the_later_one(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """The first record read in the new generation syncs the partition, which takes up the slot's
    own submission (the earlier attempt's order) before the later order is looked at. That call
    may already be under way: it goes on, once, and its provider job is the later attempt's (under
    the earlier attempt's key, a provider gives back the job it made before the crash)."""
    d, provider = wan
    left_by_a_crash(d, "a", FIRST)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    assert len(provider.submitted) == 1
    key, slot = held(d, "a")
    assert (slot.attempt, slot.provider_job_id) == (BACK, "pj-a")
    assert attempts_told(d, "submitted") == [(BACK, "pj-a")]


class RefusingOnce(QueueingProvider):
    """Refuses the first submission for good (a retired model: 410), then accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    async def submit(self, session: Any, order: SubmitOrder) -> SubmitResult:
        if not self.refused:
            self.refused.append(order.idempotency_key)
            raise ProviderGone("HTTP 410: model retired", status=410)
        return await super().submit(session, order)


async def test_an_earlier_attempt_s_failed_submission_submits_the_later_attempt_instead_of_moving_on(
        settings: Settings, tmp_path: Path) -> None:
    """The earlier attempt's failure is not the job's to act on (a reroute of an attempt the job
    left, and the slot given back): the slot is the later attempt's, which is submitted."""
    provider = RefusingOnce()
    async with one_dispatcher(settings, provider, tmp_path / "refusing") as d:
        left_by_a_crash(d, "a", FIRST)
        await d.intake(message(1), order("a", BACK))
        await settle(d)
        assert provider.refused == [f"a:{FIRST}"]
        assert [o.idempotency_key for o in provider.submitted] == [f"a:{BACK}"]
        assert not emitter(d).events("rerouted") and not emitter(d).events("failed")
        assert not [r for _, s, r in emitter(d).sent if s == "DispatchOrder"], "no order elsewhere"
        _, slot = held(d, "a")
        assert (slot.attempt, slot.provider_job_id) == (BACK, "pj-a")


# -- releases after the takeover --------------------------------------------------------------------


@pytest.mark.parametrize("provider_job_id", ["pj-a", None], ids=["submitted", "never-submitted"])
async def test_a_late_release_of_the_earlier_attempt_frees_nothing(
        wan: tuple[Dispatcher, QueueingProvider], provider_job_id: str | None) -> None:
    """The earlier attempt's own end (its timeout, a poll's word of it: the jobs table releases a
    word of an attempt the job left) is not the end of the attempt the slot now serves."""
    d, provider = wan
    d.sync(0, 1)
    left_by_a_crash(d, "a", FIRST, provider_job_id)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    for status in ("failed", "cancelled"):
        await d.release({"job_id": "a", "attempt": FIRST, "status": status}, 0, 1)
        await settle(d)
    _, slot = held(d, "a")
    assert slot.attempt == BACK and len(d.lane.pools[0]) == 1 and not provider.cancelled
    await d.release({"job_id": "a", "attempt": BACK, "status": "completed"}, 0, 1)
    assert d.lane.slots.get(slot_key(0, "a")) is None and len(d.lane.pools[0]) == 0


async def test_the_end_of_a_taken_over_provider_job_is_told_for_the_later_attempt_before_its_slot_goes(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """An ``ended`` release naming the provider job may answer a word told for the earlier attempt
    (a poll's end just before the takeover), which the jobs table takes as old news: freed then,
    the later attempt would never hear of its end, nor time out. So its end is asked for and told
    for the later attempt, and the jobs table's answer to that frees the slot. The end is often
    heard twice (the bridge's release, and the jobs agent's answer to the same webhook told as the
    earlier attempt's): one status call answers both, where a second would tell the end twice."""
    d, provider = wan
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    provider.say_completed("a")
    ended = {"job_id": "a", "attempt": FIRST, "status": ENDED, "provider_job_id": "pj-a"}
    await d.release(ended, 0, 1)
    await d.release(ended, 0, 2)
    assert d.lane.slots.get(slot_key(0, "a")) is not None, "held until the later attempt's end is told"
    await settle(d)  # (the status call it asked for)
    assert provider.asked == ["pj-a"], "one status call for the two"
    assert attempts_told(d, "completed") == [(BACK, "pj-a")]
    assert not d.poller.asking, "and none left under way"
    await d.release({"job_id": "a", "attempt": BACK, "status": "completed"}, 0, 1)  # the jobs table's answer
    assert d.lane.slots.get(slot_key(0, "a")) is None and len(d.lane.pools[0]) == 0


async def test_an_ended_release_of_the_later_attempt_frees_the_taken_over_slot(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """Released for the slot's own attempt (the jobs table answered a word of it): its end was told
    as the later attempt's, and asking again would only tell it again."""
    d, provider = wan
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    await d.intake(message(1), order("a", BACK))
    await settle(d)
    await d.release({"job_id": "a", "attempt": BACK, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
    assert d.lane.slots.get(slot_key(0, "a")) is None and len(d.lane.pools[0]) == 0
    await settle(d)
    assert not provider.asked


async def test_the_provider_job_a_job_made_under_its_own_attempt_is_freed_by_the_bridge_as_before(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = wan
    d.sync(0, 1)
    left_by_a_crash(d, "a", FIRST)
    await d.intake(message(1), order("a", BACK))  # submitted under the slot: its own provider job
    await settle(d)
    await d.release({"job_id": "a", "attempt": 0, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
    assert d.lane.slots.get(slot_key(0, "a")) is None and not provider.asked


# -- unchanged: an order of an earlier attempt, or of the slot's own ---------------------------------


async def test_an_order_of_an_earlier_attempt_than_the_slot_s_is_dropped(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = wan
    await d.intake(message(0), order("a", BACK))
    await settle(d)
    assert await d.intake(message(1), order("a", FIRST)) is None
    await settle(d)
    _, slot = held(d, "a")
    assert (slot.attempt, len(provider.submitted)) == (BACK, 1) and not emitter(d).events("submitted")


async def test_an_order_of_the_slot_s_own_attempt_finishes_a_submission_that_never_did(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = wan
    d.sync(0, 1)
    left_by_a_crash(d, "a", BACK)
    assert await d.intake(message(1), order("a", BACK)) is None, "no write: its slot is durable already"
    await settle(d)
    _, slot = held(d, "a")
    assert (slot.attempt, slot.provider_job_id) == (BACK, "pj-a")
    assert [o.idempotency_key for o in provider.submitted] == [f"a:{BACK}"]


# -- what the jobs table makes of it ------------------------------------------------------------------


def wan_webhook(webhook_id: str, state: str) -> JobEvent:
    """wan's webhook about ``pj-a`` (a webhook names no attempt)."""
    video = "https://cdn.example/v.mp4" if state == "completed" else None
    event = webhook_event("wan", job_id="a", webhook_id=webhook_id, state=state, occurred_at=1.0,
                          provider_job_id="pj-a", progress=None, video_url=video, error=None)
    assert event is not None
    return event


def jobs_table(state: JobState | None, *events: JobEvent) -> JobState:
    """``state`` once the jobs rules have read ``events`` in turn (one they ignore changes nothing)."""
    for event in events:
        aimed = aim(state, event)
        if aimed is not None:
            state = apply(state, aimed).state
    assert state is not None
    return state


def told(d: Dispatcher) -> list[JobEvent]:
    """Every event the dispatcher told the jobs table, in order."""
    return [event_from_record(record) for _, schema, record in emitter(d).sent if schema == "JobEvent"]


BACK_AT_WAN = (job_event("q", "queued", provider="wan", tenant="t"),
               job_event("r1", "rerouted", provider="kling", attempt=1),
               job_event("r2", "rerouted", provider="wan", attempt=BACK))
"""wan → kling → wan, as the jobs table reads it."""


# -- an end heard while the earlier attempt's submission still ran ------------------------------------


async def test_an_end_heard_during_the_earlier_attempt_s_call_is_told_for_the_later_attempt_before_its_slot_goes(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """The earlier attempt's submission, taken up again after a crash, is under way when the later
    attempt takes the slot over; the provider job it makes (the one made before the crash, under
    the earlier attempt's key) has ended by then. The jobs table knew that job as the earlier
    attempt's, so its end is a stray there, answered with an ``ended`` release read before the call
    returns. Freed then, the later attempt would never hear of its provider job or its end, and
    would wait for good, with no slot, poll or timeout here to end it."""
    d, provider = wan
    state = jobs_table(None, BACK_AT_WAN[0], wan_webhook("w-run", "running"), *BACK_AT_WAN[1:])
    provider.gate = asyncio.Event()
    key = left_by_a_crash(d, "a", FIRST)
    await d.intake(message(1), order("a", BACK))  # (its sync takes up the earlier submission)
    await until_calling(d, key)
    ended = wan_webhook("w-end", "completed")
    assert aim(state, ended) is None, "the jobs table takes the end as the earlier attempt's"
    owed = stray_end(state, ended)
    assert owed == Release("wan", FIRST, ENDED, "pj-a")
    await d.release({"job_id": "a", "attempt": owed.attempt, "status": owed.status,
                     "provider_job_id": owed.provider_job_id}, 0, 1)
    provider.say_completed("a")
    provider.gate.set()
    await settle(d)
    _, slot = held(d, "a")
    assert (slot.attempt, slot.provider_job_id, slot.adopted) == (BACK, "pj-a", True), "held, its provider job kept"
    assert attempts_told(d, "submitted") == [(BACK, "pj-a")], "the later attempt learns its provider job"
    assert attempts_told(d, "completed") == [(BACK, "pj-a")], "and its end"
    state = jobs_table(state, *told(d))
    assert (state.status, state.attempt, state.provider_job_id) == (JobStatus.COMPLETED, BACK, "pj-a")
    assert len(provider.submitted) == 1 and not provider.cancelled
    await d.release({"job_id": "a", "attempt": BACK, "status": "completed"}, 0, 1)  # the jobs table's answer
    assert d.lane.slots.get(key) is None and len(d.lane.pools[0]) == 0


async def test_an_end_heard_during_a_call_of_the_slot_s_own_attempt_frees_it_at_once(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """Not taken over: the end was told as the slot's attempt's, and asking again would only tell
    it again."""
    d, provider = wan
    provider.gate = asyncio.Event()
    await d.intake(message(0), order("a", BACK))
    key = slot_key(0, "a")
    await until_calling(d, key)
    await d.release({"job_id": "a", "attempt": 0, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
    provider.gate.set()
    await settle(d)
    assert d.lane.slots.get(key) is None and len(d.lane.pools[0]) == 0
    await settle(d)
    assert not provider.asked and not emitter(d).events("submitted")


# -- a timeout whose cancel a takeover overtook -------------------------------------------------------


class SlowToCancel(QueueingProvider):
    """Holds every cancel until ``let_go`` is set; ``cancelling`` is set once one is held."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelling, self.let_go = asyncio.Event(), asyncio.Event()

    async def cancel(self, session: Any, provider_job_id: str) -> None:
        self.cancelling.set()
        await self.let_go.wait()
        await super().cancel(session, provider_job_id)


async def test_a_timeout_overtaken_by_a_takeover_during_its_cancel_fails_the_later_attempt_not_cancels_it(
        settings: Settings, tmp_path: Path) -> None:
    """The earlier attempt's provider job renders past FLOODGATE_JOB_TIMEOUT; while the timeout
    cancels it, the later attempt takes the slot over, and the provider job with it. The timeout's
    failure is the later attempt's: told as the earlier attempt's, the jobs table takes it as old
    news, and only the provider's word of the cancel (its webhook, and the status call that the
    webhook's ``ended`` release asks for, the slot being adopted) ends the job: failed, "cancelled
    at" the provider, not saying why."""
    provider = SlowToCancel()
    async with one_dispatcher(settings, provider, tmp_path / "slow-cancel") as d:
        await d.intake(message(0), order("a", FIRST))
        await settle(d)
        key, slot = held(d, "a")
        provider.say("a", "running")
        timeout = asyncio.ensure_future(d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 1))
        await asyncio.wait_for(provider.cancelling.wait(), timeout=30)  # (a bound, not a wait)
        await d.intake(message(1), order("a", BACK))
        provider.let_go.set()
        await timeout
        assert provider.cancelled == ["pj-a"]
        assert [r["attempt"] for r in emitter(d).events("failed")] == [BACK]
        state = jobs_table(None, *BACK_AT_WAN, *told(d))
        assert (state.status, state.attempt) == (JobStatus.FAILED, BACK)
        provider.say("a", "cancelled")  # the provider's word of the cancel, by webhook and when asked
        await d.release({"job_id": "a", "attempt": 0, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
        await settle(d)
        assert attempts_told(d, "cancelled") == [(BACK, "pj-a")]
        state = jobs_table(state, wan_webhook("w-cancel", "cancelled"), *told(d))
        assert (state.status, state.attempt) == (JobStatus.FAILED, BACK)
        assert state.error is not None and "no result" in state.error


async def test_an_adopted_slot_times_out_from_when_its_provider_job_began(
        wan: tuple[Dispatcher, QueueingProvider]) -> None:
    """The provider job has rendered since the earlier attempt took the slot: a later attempt that
    adopts it is failed once that job is past FLOODGATE_JOB_TIMEOUT, not given a timeout of its own
    on top (the provider would hold a job that never ends twice as long)."""
    d, provider = wan
    await d.intake(message(0), order("a", FIRST))
    await settle(d)
    _, first = held(d, "a")
    await d.intake(message(1), order("a", BACK))
    key, slot = held(d, "a")
    assert slot.taken_at == first.taken_at
    provider.say("a", "running")
    await d.poller.check_slot(key, slot, first.taken_at + d.settings.job_timeout + 1)
    assert [r["attempt"] for r in emitter(d).events("failed")] == [BACK] and provider.cancelled == ["pj-a"]


# -- the status call an adopted slot's end asks for ---------------------------------------------------


async def test_the_status_call_an_adopted_slot_s_end_asks_for_goes_ahead_of_those_waiting_their_turn(
        settings: Settings, tmp_path: Path) -> None:
    """Under a read budget the status calls due wait their turn, the newest last: the one asked for
    by an ``ended`` release of an adopted slot would leave the slot, held for a job that has ended,
    idle until every call before it had been made. It is made at once, paid from the budget all the
    same (the calls waiting wait one call longer)."""
    provider = ReadLimitedProvider()  # two status calls a second
    provider.callbacks = "all"  # nothing followed: the calls due are the late poll's, below
    clock = SimpleNamespace(now=1000.0)
    async with one_dispatcher(settings, provider, tmp_path / "adopted-budget", jobs=5) as d:
        d.poller.clock = lambda: clock.now
        for i in range(5):
            provider.say(f"job-{i}", "running")
            key, slot = held(d, f"job-{i}")
            await d.poller.check_slot(key, slot, slot.taken_at + d.settings.poll_after)
        await d.intake(message(5), order("a", FIRST))
        await settle(d)
        await d.intake(message(6), order("a", BACK))
        await d.poller.ask_due()
        assert len(provider.asked) == 2 and len(d.poller.status_calls) == 3, "a second's worth of the budget"
        provider.say_completed("a")
        await d.release({"job_id": "a", "attempt": FIRST, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
        await settle(d)
        assert provider.asked[2:] == ["pj-a"], "asked at once, ahead of the three waiting"
        assert attempts_told(d, "completed") == [(BACK, "pj-a")]
        clock.now += 1.0
        await d.poller.ask_due()
        assert len(provider.asked) == 4 and len(d.poller.status_calls) == 2, "a second's budget, less the call it took"
