"""A provider's word that it cancelled a job is never its owner's cancel (``floodgate.jobs.state``).

The owner's cancel names no provider (``floodgate.api.cancel``) and ends the job ``cancelled``
before the dispatcher cancels the provider job. A provider saying it cancelled a job that has not
ended speaks of a cancel the owner never made (the dispatcher's timeout, whose ``failed`` event may
be read after the provider's word; the provider's own deadline; an operator): the job ends
``failed``, and its release only frees the slot (a ``cancelled`` one would have the dispatcher
cancel a provider job already cancelled). No Kafka: the state machine, the API's early word, and
the jobs agent with a dict for its table.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connectors.providers.base import ProviderEvent
from floodgate.api.cancel import CANCEL_REASON, cancel_event
from floodgate.api.heard import HEARD, Heard, as_heard
from floodgate.jobs.events import aim
from floodgate.jobs.record import snapshot
from floodgate.jobs.state import TERMINAL, JobEvent, JobState, JobStatus, apply, hold
from streams.jobs import JobDesk
from tests.unit.test_jobs_agent import JOB, NOW, Connector, event, open_desk, record_of, request, sends, told, webhook

LIVE = (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING)
TIMEOUT_ERROR = "no result from sora after 900s"


def state_at(status: JobStatus, **kw: Any) -> JobState:
    """A job at sora (attempt 0), whose provider job ``sj-1`` the table knows."""
    fields: dict[str, Any] = dict(job_id="j1", tenant="acme", model="sora-2", provider="sora", provider_job_id="sj-1",
                                  status=status, created_at=10.0, updated_at=50.0, recent_events=("e-prev",),
                                  version=3)
    if status is JobStatus.COMPLETED:
        fields.update(progress=1.0, video_url="https://cdn/old.mp4")
    return JobState(**{**fields, **kw})


def provider_cancel(by: str = "webhook", error: str | None = None, event_id: str | None = None) -> JobEvent:
    """sora's word that it cancelled the job: its webhook (attempt 0: it names none) or its
    dispatcher's status poll (the slot's attempt, 0 here)."""
    default_id = "wh:sora:w-cancel" if by == "webhook" else "j1:cancelled:sora:0:poll:1"
    return JobEvent(event_id=event_id or default_id, job_id="j1", kind="cancelled", at=100.0, provider="sora",
                    provider_job_id="sj-1", error=error)


def user_cancel(event_id: str = "j1:cancel:1") -> JobEvent:
    """What the API writes for the owner's cancel: no provider, attempt 0."""
    return JobEvent(event_id=event_id, job_id="j1", kind="cancelled", at=100.0, error=CANCEL_REASON)


def timeout_failure() -> JobEvent:
    """sora's dispatcher's timeout, told once its cancel of the provider job was answered."""
    return JobEvent(event_id="j1:failed:sora:0", job_id="j1", kind="failed", at=101.0, provider="sora",
                    error=TIMEOUT_ERROR)


def through_agent(state: JobState | None, e: JobEvent) -> Any:
    """``apply`` as the jobs agent calls it: on the event ``aim`` makes of it."""
    aimed = aim(state, e)
    assert aimed is not None, "the agent would ignore it"
    return apply(state, aimed)


# -- the state machine ------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["webhook", "poll"])
@pytest.mark.parametrize("status", LIVE)
@pytest.mark.parametrize(("said", "error"), [(None, "cancelled at sora"),
                                             ("deadline exceeded", "cancelled at sora: deadline exceeded")],
                         ids=["no-error", "its-error"])
def test_a_providers_cancel_of_a_live_job_fails_it_naming_the_provider(
        status: JobStatus, by: str, said: str | None, error: str) -> None:
    t = through_agent(state_at(status), provider_cancel(by, said))
    assert t.state is not None
    assert (t.state.status, t.changed, t.became_terminal) == (JobStatus.FAILED, True, True), t.reason
    assert t.state.error == error and t.state.video_url is None
    assert t.ended_by is not None and t.ended_by.provider == "sora"


@pytest.mark.parametrize("status", LIVE)
def test_the_owners_cancel_still_ends_a_live_job_cancelled(status: JobStatus) -> None:
    t = through_agent(state_at(status), user_cancel())
    assert t.state is not None
    assert (t.state.status, t.changed, t.became_terminal) == (JobStatus.CANCELLED, True, True), t.reason
    assert t.state.error == CANCEL_REASON


@pytest.mark.parametrize("by", ["webhook", "poll"])
def test_a_timeout_whose_cancel_the_provider_tells_first_fails_the_job_once(by: str) -> None:
    """The dispatcher cancels the provider job past FLOODGATE_JOB_TIMEOUT, then sends ``failed``;
    the provider's word of that cancel comes through another topic and may be read first."""
    cancelled = through_agent(state_at(JobStatus.RUNNING), provider_cancel(by))
    assert cancelled.state is not None and cancelled.became_terminal
    assert (cancelled.state.status, cancelled.state.error) == (JobStatus.FAILED, "cancelled at sora")
    failure = through_agent(cancelled.state, timeout_failure())
    assert failure.state is cancelled.state and not failure.changed and not failure.became_terminal


def test_a_timeout_read_before_the_providers_word_of_its_cancel_fails_the_job_once() -> None:
    failed = through_agent(state_at(JobStatus.RUNNING), timeout_failure())
    assert failed.state is not None and failed.became_terminal
    word = through_agent(failed.state, provider_cancel())
    assert word.state is failed.state and not word.changed and not word.became_terminal
    assert (word.state.status, word.state.error) == (JobStatus.FAILED, TIMEOUT_ERROR)


@pytest.mark.parametrize("status", sorted(TERMINAL))
@pytest.mark.parametrize("cancel", [provider_cancel(), provider_cancel("poll"), user_cancel()],
                         ids=["provider-webhook", "provider-poll", "owner"])
def test_a_job_that_ended_is_not_changed_by_any_cancel(status: JobStatus, cancel: JobEvent) -> None:
    before = state_at(status, error="boom" if status is JobStatus.FAILED else None)
    t = through_agent(before, cancel)
    assert t.state is before and not t.changed and not t.became_terminal, t.reason


def test_a_providers_cancel_kept_for_the_reroute_fails_the_job_once_the_reroute_is_read() -> None:
    """kling's word read before the ``rerouted`` event that sends the job there (``hold``)."""
    at_wan = apply(None, JobEvent(event_id="j1:queued", job_id="j1", kind="queued", at=1.0, provider="wan",
                                  tenant="acme", model="wan-2.6")).state
    early = JobEvent(event_id="wh:kling:k-cancel", job_id="j1", kind="cancelled", at=3.0, provider="kling",
                     provider_job_id="pk")
    assert aim(at_wan, early) is None
    kept = hold(at_wan, early)
    assert kept is not None and kept.state is not None and kept.state.status is JobStatus.QUEUED
    moved = apply(kept.state, JobEvent(event_id="j1:rerouted:wan:1", job_id="j1", kind="rerouted", at=2.0,
                                       provider="kling", attempt=1, error="wan unavailable"))
    assert moved.state is not None and moved.became_terminal
    assert (moved.state.status, moved.state.provider, moved.state.error) == (JobStatus.FAILED, "kling",
                                                                            "cancelled at kling")
    assert moved.ended_by == early


# -- the API's early word -----------------------------------------------------------------------------


def heard(state: str, progress: float | None = None) -> Heard:
    """sora's webhook of the job, as the bridge hands it to this process's view."""
    return Heard("sora", "j1", ProviderEvent(webhook_id=f"w-{state}", provider_job_id="sj-1", job_id="j1",
                                             state=state, progress=progress, video_url=None, error=None,
                                             occurred_at=100.0))


@pytest.mark.parametrize("status", LIVE)
def test_the_api_leaves_a_providers_cancel_to_the_table(status: JobStatus) -> None:
    """Told early, a provider's cancel could be wrong either way: the echo of the owner's cancel
    (recorded ``cancelled``, not yet read by this view) or one the owner never made (``failed``).
    Told as ``failed`` during the echo, a repeated cancel would meet 409 where 202 is promised."""
    assert as_heard(snapshot(state_at(status)), heard("cancelled")) is None


def test_the_api_still_tells_other_words_early() -> None:
    told = as_heard(snapshot(state_at(JobStatus.SUBMITTED)), heard("running", progress=0.5))
    assert told is not None and told[HEARD] and (told["status"], told["progress"]) == ("running", 0.5)


# -- the jobs agent: what it sends -------------------------------------------------------------------


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[JobDesk]:
    async with open_desk(tmp_path) as jobs:
        yield jobs


PROVIDER_CANCELS = {
    # wan's webhook: the bridge released its slot (by provider job), so the agent's first release
    # is the one it makes sure of when the timeout's failure comes.
    "webhook": (lambda: webhook("wan", id="w-cancel", state="cancelled", provider_job_id="pw"),
                "cancelled at wan", ["failed"]),
    # wan's status poll: the agent releases the end itself, then again for the timeout's failure.
    "poll": (lambda: told("cancelled", "wan", 0, suffix=":poll:2", provider_job_id="pw", error="canceled"),
             "cancelled at wan: canceled", ["failed", "failed"]),
}


@pytest.mark.parametrize("by", sorted(PROVIDER_CANCELS))
async def test_the_agent_fails_a_job_its_provider_cancelled_and_never_asks_for_a_cancel(
        desk: JobDesk, by: str) -> None:
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["wan"] = Connector()
    word, error, releases = PROVIDER_CANCELS[by]
    await desk.on_record(request(offset=7))
    await desk.on_record(told("running", "wan", 0, suffix=":poll:1", provider_job_id="pw"))
    await desk.on_record(word())
    ended = record_of(desk)
    assert (ended.state.status.value, ended.state.error) == ("failed", error)
    await desk.on_record(told("failed", "wan", 0, error="no result from wan after 900s"))
    assert record_of(desk) == ended, "the timeout's failure changes nothing"
    result, = out.to(names.results)
    assert (result["status"], result["error"], result["provider"]) == ("failed", error, "wan")
    assert [(r["attempt"], r["status"]) for r in out.to(names.release("wan"))] == [(0, s) for s in releases]


async def test_the_owners_cancel_still_has_the_provider_job_cancelled(desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    await desk.on_record(request(offset=7))
    await desk.on_record(told("running", "wan", 0, suffix=":poll:1", provider_job_id="pw"))
    await desk.on_record(event(cancel_event(JOB, NOW + 1500)))
    assert record_of(desk).state.status.value == "cancelled"
    result, = out.to(names.results)
    assert (result["status"], result["error"]) == ("cancelled", CANCEL_REASON)
    assert [(r["attempt"], r["status"]) for r in out.to(names.release("wan"))] == [(0, "cancelled")]
