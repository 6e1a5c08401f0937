"""News from the provider a job is moving to, read before the job's ``rerouted`` event: the jobs
agent's rules (``aim``, ``hold``, ``apply``, ``stray_end``) keep it in the job's state and take it in
once the reroute is read, whatever the order the worker reads ``webhooks`` and ``events`` in."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.dispatch import ENDED
from floodgate.errors import ValidationError
from floodgate.jobs.events import Release, aim, stray_end
from floodgate.jobs.record import JobRecord, snapshot
from floodgate.jobs.state import (
    EARLY_NEWS_LIMIT,
    TERMINAL,
    JobEvent,
    JobState,
    JobStatus,
    LeftJob,
    apply,
    from_webhook,
    hold,
    is_early,
    is_state_dict,
)

JOB = "j1"


def queued(provider: str = "wan") -> JobEvent:
    return JobEvent(event_id=f"{JOB}:queued", job_id=JOB, kind="queued", at=1.0, provider=provider, tenant="acme",
                    user_id="u1", model="wan-2.6")


def rerouted(to: str, attempt: int, by: str = "wan", at: float = 2.0, *, model: str | None = None) -> JobEvent:
    """As the dispatcher of ``by`` writes it, before it sends the order to ``to`` (a spill names
    the equivalent ``model``)."""
    return JobEvent(event_id=f"{JOB}:rerouted:{by}:{attempt}", job_id=JOB, kind="rerouted", at=at, provider=to,
                    attempt=attempt, model=model, error=f"spilled from {by}" if model else f"{by} unavailable")


def said(by: str, kind: str, *, hook: str | None = None, attempt: int = 0, at: float = 5.0, **kw: Any) -> JobEvent:
    """A provider's word: a webhook (``hook``: its id; attempt 0, it names none) or its dispatcher's
    poll (the slot's attempt)."""
    if kind == "completed":
        kw.setdefault("video_url", f"https://cdn/{by}.mp4")
    event_id = f"wh:{by}:{hook}" if hook else f"{JOB}:{kind}:{by}:{attempt}:poll:{at}"
    return JobEvent(event_id=event_id, job_id=JOB, kind=kind, at=at, provider=by, attempt=attempt, **kw)


def agent(state: JobState | None, event: JobEvent) -> JobState | None:
    """What the jobs agent makes of ``event`` (``streams.jobs.JobDesk.on_event``), state only."""
    aimed = aim(state, event)
    if aimed is not None:
        return apply(state, aimed).state
    held = hold(state, event)
    return state if held is None else held.state


def through(events: list[JobEvent]) -> JobState:
    state: JobState | None = None
    for event in events:
        state = agent(state, event)
    assert state is not None
    return state


AT_WAN = through([queued()])
AT_KLING = through([queued(), rerouted("kling", 1)])
LEFT_PW0 = through([queued(), said("wan", "running", hook="w0-run", provider_job_id="pw0", at=1.5),
                    rerouted("kling", 1)])
"""At kling, having left wan's provider job ``pw0`` (a job wan had for the first attempt)."""
WRITTEN_BEFORE_LEFT_JOBS = JobState.from_dict({k: v for k, v in AT_KLING.to_dict().items() if k != "left_jobs"})
"""AT_KLING as the version before ``left_jobs`` wrote it."""


@pytest.mark.parametrize("done", [said("kling", "completed", hook="k-done", provider_job_id="pk"),
                                  said("kling", "completed", attempt=1, provider_job_id="pk")],
                         ids=["webhook", "poll"])
def test_an_end_at_the_provider_the_job_is_moving_to_is_kept_until_the_reroute_then_ends_the_job(
        done: JobEvent) -> None:
    assert aim(AT_WAN, done) is None, "not the current attempt's news"
    assert stray_end(AT_WAN, done) is None, "no stray: kling's slot is the job's next attempt's"
    step = hold(AT_WAN, done)
    assert step is not None and step.changed and not step.became_terminal
    kept = step.state
    assert kept is not None and kept.early_news == (done,)
    assert snapshot(kept) == snapshot(AT_WAN), "nothing shows, not even a new version: watchers are told nothing"
    moved = apply(kept, rerouted("kling", 1))
    assert moved.state is not None and moved.became_terminal, moved.reason
    assert (moved.state.status, moved.state.provider, moved.state.attempt) == (JobStatus.COMPLETED, "kling", 1)
    assert (moved.state.provider_job_id, moved.state.video_url) == ("pk", "https://cdn/kling.mp4")
    assert (moved.state.route_note, moved.state.moved_from, moved.state.early_news) == ("wan unavailable",
                                                                                       ("wan",), ())


def test_without_the_news_kept_the_reroute_would_leave_the_job_waiting_for_good() -> None:
    """What the table did before: the completion was dropped, and the reroute opened an attempt
    that nothing would ever end (the bridge had freed kling's slot, so no poll looks again)."""
    lost = apply(AT_WAN, rerouted("kling", 1)).state
    assert lost is not None and lost.status is JobStatus.QUEUED
    kept = through([queued(), said("kling", "completed", hook="k-done"), rerouted("kling", 1)])
    assert kept.status is JobStatus.COMPLETED


@pytest.mark.parametrize(("state", "event", "early"), [
    (AT_WAN, said("kling", "running", hook="h"), True),  # a webhook from where the job goes next
    (AT_WAN, said("kling", "failed", attempt=1), True),  # its dispatcher's, of the next attempt
    (AT_WAN, said("wan", "running", hook="h"), False),  # the job's own provider: applied
    (AT_WAN, said("wan", "running", attempt=2), False),  # (an attempt it opens: apply's to say)
    (AT_WAN, JobEvent(event_id="c", job_id=JOB, kind="cancelled", at=5.0), False),  # a user's: no provider
    (AT_WAN, rerouted("kling", 1), False),  # the reroute itself
    (None, said("kling", "running", hook="h"), False),  # nothing known yet: applied
    (AT_KLING, said("wan", "completed", hook="h"), False),  # left, and names no provider job: old news
    (AT_KLING, said("wan", "failed", attempt=0), False),  # wan's dispatcher, of the attempt the job left
    (AT_KLING, said("wan", "completed", attempt=0, provider_job_id="pw0"), False),
    (AT_KLING, said("veo", "running", hook="h"), True),  # kling's fallback
    (AT_KLING, said("veo", "running", attempt=1), False),  # names an old attempt
    (AT_KLING, said("wan", "running", attempt=2), True),  # wan again, later
    # wan again (A → B → A): a webhook names no attempt, but a provider job none the job left there.
    (AT_KLING, said("wan", "completed", hook="h", provider_job_id="pw2"), True),
    (LEFT_PW0, said("wan", "completed", hook="h", provider_job_id="pw2"), True),
    (LEFT_PW0, said("wan", "completed", hook="h", provider_job_id="pw0"), False),  # the job it left there
    # A moved job written before states kept the provider jobs they left: as that version did.
    (WRITTEN_BEFORE_LEFT_JOBS, said("wan", "completed", hook="h", provider_job_id="pw2"), False),
    (WRITTEN_BEFORE_LEFT_JOBS, said("veo", "running", hook="h"), True),
    # A job at kling written before states said where they had been: wan's word is old news, and
    # wan's timeout (attempt 0) frees wan's slot as it did (stray_end), rather than being kept.
    (JobState(job_id=JOB, provider="kling", attempt=1), said("wan", "failed", attempt=0), False),
    (JobState(job_id=JOB, provider="kling", attempt=1), said("veo", "running", hook="h"), False),
    (through([queued(), JobEvent(event_id="c", job_id=JOB, kind="cancelled", at=3.0)]),
     said("kling", "running", hook="h"), False),  # the job ended: its later attempts are ignored
])
def test_news_from_the_future_is_from_another_provider_than_the_jobs_and_none_it_left(
        state: JobState | None, event: JobEvent, early: bool) -> None:
    assert is_early(state, event) is early
    assert (hold(state, event) is not None) is early
    if early:
        assert aim(state, event) is None, "the agent holds only what aim does not apply"


def test_a_dispatchers_word_from_a_provider_the_job_left_is_still_old_news_and_its_slot_freed() -> None:
    assert AT_KLING.moved_from == ("wan",)
    late = said("wan", "completed", attempt=0, provider_job_id="pw")  # its poll of the slot it still held
    assert hold(AT_KLING, late) is None
    assert stray_end(AT_KLING, late) == Release("wan", 0, ENDED, "pw")
    assert through([queued(), rerouted("kling", 1), late]) == AT_KLING


SPILL = rerouted("kling", 1, model="kling-2.1")
BACK = rerouted("wan", 2, by="kling", at=3.0)
"""wan → kling → wan: wan-2.6 spills from wan's line to kling-2.1, kling's submission fails, and
kling-2.1's fallback is wan (a spill leaves the providers tried as they were)."""


def test_a_webhook_from_the_provider_a_job_goes_back_to_is_kept_until_the_reroute_that_sends_it_back() -> None:
    """kling's dispatcher writes ``rerouted`` and sends the order straight to wan, whose webhook
    may be read while the table still has the job at kling. Dropped as old news (wan is a provider
    the job left), it left the job waiting at wan for good: the bridge had freed wan's slot."""
    at_kling = through([queued(), SPILL])
    done = said("wan", "completed", hook="w-done", provider_job_id="pw2", at=4.0)
    assert aim(at_kling, done) is None and stray_end(at_kling, done) is None, "no stray: the next attempt's"
    kept = hold(at_kling, done)
    assert kept is not None and kept.changed and kept.state is not None and kept.state.early_news == (done,)
    back = apply(kept.state, BACK)
    assert back.state is not None and back.became_terminal, back.reason
    assert back.ended_by == done, "the agent releases the end as the webhook's"
    assert (back.state.status, back.state.provider, back.state.attempt, back.state.provider_job_id) == (
        JobStatus.COMPLETED, "wan", 2, "pw2")
    assert (back.state.moved_from, back.state.serving_model, back.state.route_note) == (
        ("kling",), "kling-2.1", "kling unavailable")
    assert semantic(back.state) == semantic(through([queued(), SPILL, BACK, done]))


def by_request_id(provider: str, a: str, b: str) -> bool:
    """As fal's connector compares provider job ids: by the request id after the app path."""
    return a.rpartition("/")[2] == b.rpartition("/")[2]


def test_a_webhook_of_a_provider_job_the_job_left_is_old_news_and_frees_only_that_jobs_slot() -> None:
    """wan had a job for the first attempt (``pw0``) and the table learned it: its word read while
    the job is elsewhere is not kept for the job's next attempt at wan, whose webhooks are; its
    end frees only the slot that holds that provider job."""
    assert LEFT_PW0.left_jobs == (LeftJob(0, "wan", "pw0"),) and LEFT_PW0.provider_job_id is None
    stale = said("wan", "failed", hook="w0-fail", provider_job_id="pw0", at=6.0, error="boom")
    assert hold(LEFT_PW0, stale) is None and stray_end(LEFT_PW0, stale) == Release("wan", 0, ENDED, "pw0")
    run = said("wan", "running", hook="w2-run", provider_job_id="pw2", at=7.0)
    back = through([queued(), said("wan", "running", hook="w0-run", provider_job_id="pw0", at=1.5),
                    rerouted("kling", 1), stale, run, rerouted("wan", 2, by="kling", at=3.0)])
    assert (back.status, back.attempt, back.provider_job_id, back.error) == (JobStatus.RUNNING, 2, "pw2", None)
    # A provider that names one job two ways (fal): compared as its connector compares them.
    fal = dataclasses.replace(LEFT_PW0, left_jobs=(LeftJob(0, "wan", "workflows/acme/video/req-0"),))
    renamed = said("wan", "failed", hook="w0-fail", provider_job_id="workflows/acme/req-0", at=6.0)
    assert is_early(fal, renamed), "exactly compared, another job"
    assert not is_early(fal, renamed, by_request_id) and hold(fal, renamed, by_request_id) is None
    assert stray_end(fal, renamed, by_request_id) == Release("wan", 0, ENDED, "workflows/acme/req-0")


def test_a_second_reroute_read_first_takes_in_its_providers_news_and_lets_the_skipped_ones_go() -> None:
    """wan → kling → veo: kling's fallback and veo's word are both read before wan's reroute."""
    to_veo = rerouted("veo", 2, by="kling", at=3.0)
    run = said("veo", "running", hook="v-run", provider_job_id="pv", at=4.0)
    kling_run = said("kling", "running", hook="k-run", at=2.5)  # (a word kling never should have said)
    state = through([queued(), kling_run, run, to_veo])
    assert (state.status, state.provider, state.attempt, state.provider_job_id) == (JobStatus.RUNNING, "veo", 2,
                                                                                     "pv")
    assert state.early_news == (kling_run,), "kling's attempt has not been read yet: it is kept"
    after = agent(state, rerouted("kling", 1))
    assert after is not None
    assert (after.attempt, after.provider, after.moved_from, after.early_news) == (2, "veo", ("kling", "wan"), ())


def test_news_kept_goes_when_the_job_ends_first() -> None:
    kept = through([queued(), said("kling", "running", hook="k-run")])
    assert kept.early_news
    cancelled = agent(kept, JobEvent(event_id="c", job_id=JOB, kind="cancelled", at=6.0))
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED and cancelled.early_news == ()
    assert "early_news" not in cancelled.to_dict()
    assert agent(cancelled, rerouted("kling", 1)) == cancelled, "a job that ended takes no reroute"


def test_news_kept_again_is_a_duplicate() -> None:
    done = said("kling", "completed", hook="k-done")
    kept = through([queued(), done])
    again = hold(kept, done)
    assert again is not None and not again.changed and again.state is kept
    forgotten = dataclasses.replace(kept, recent_events=())  # past the dedupe window: still kept once
    again = hold(forgotten, done)
    assert again is not None and not again.changed


def test_at_most_the_limit_is_kept_and_an_end_is_never_let_go() -> None:
    words = [said("kling", "progress", hook=f"p{i}", at=10.0 + i, progress=i / 40) for i in range(3 * EARLY_NEWS_LIMIT)]
    done = said("kling", "completed", hook="k-done", at=9.0, provider_job_id="pk")  # (its clock was behind)
    state = through([queued(), done, *words])
    assert len(state.early_news) == EARLY_NEWS_LIMIT and done in state.early_news
    assert state.early_news == tuple(sorted(state.early_news, key=lambda e: e.at)), "taken in by time"
    ended = agent(state, rerouted("kling", 1))
    assert ended is not None and ended.status is JobStatus.COMPLETED and ended.progress == 1.0


def test_a_job_that_never_moved_writes_what_it_wrote_before() -> None:
    """The happy path's changelog records carry no new field."""
    state = through([queued(), said("wan", "running", hook="r"), said("wan", "completed", hook="d")])
    assert state.status is JobStatus.COMPLETED
    assert not {"moved_from", "early_news", "left_jobs"} & set(state.to_dict())


def test_a_state_with_news_kept_round_trips_and_bad_news_is_named() -> None:
    kept = through([queued(), said("kling", "submitted", attempt=1, provider_job_id="pk", queue_position=3),
                    said("kling", "failed", hook="k-fail", error="content policy")])
    moved = through([queued(), rerouted("kling", 1)])
    for state in (kept, moved):
        assert JobState.from_dict(state.to_dict()) == state
        assert JobRecord.decode(JobRecord(state, "e").encode()).state == state
        assert is_state_dict(state.to_dict())
    for bad in ([{"event_id": "x", "kind": "exploded", "at": 1.0, "provider": "kling", "attempt": 0}],
                [{"event_id": "x", "kind": "running", "at": 1.0, "attempt": 0}],  # no provider
                [{"event_id": "x", "kind": "running", "at": 1.0, "provider": "kling", "attempt": 0, "odd": 1}],
                [{"event_id": "x", "kind": "running", "at": 1.0, "provider": "kling", "attempt": 0,
                  "metadata": "ab"}],  # (JobEvent's own check: a ValueError)
                ["x"], "x"):
        doc = {**kept.to_dict(), "early_news": bad}
        assert not is_state_dict(doc)
        with pytest.raises(ValidationError) as err:
            JobState.from_dict(doc)
        assert [p.field for p in err.value.problems] == ["early_news"]


@pytest.mark.parametrize("first", ["completed", "cancelled"])
def test_an_end_taken_in_is_not_left_for_a_later_end_kept_with_it(first: str) -> None:
    """Two ends kept from kling, the later without its video: taken in at the reroute, the first
    ends the job and the second is late news, as in the order they happened (an end without its
    video would otherwise turn the job failed)."""
    one = said("kling", first, hook="k-one", at=10.0, provider_job_id="pk",
               video_url="https://cdn/v.mp4" if first == "completed" else None)
    bare = said("kling", "completed", hook="k-bare", at=11.0, provider_job_id="pk")
    in_order = through([queued(), rerouted("kling", 1), one, bare])
    early = through([queued(), one, bare, rerouted("kling", 1)])
    # (kling's cancel, a provider's, fails the job: the first end's error says which end won.)
    ended = {"completed": ("completed", None), "cancelled": ("failed", "cancelled at kling")}[first]
    assert (in_order.status.value, in_order.error) == (early.status.value, early.error) == ended
    assert semantic(early) == semantic(in_order)


# --- any read order converges ------------------------------------------------------------------

ROUTES = (("wan", "kling"), ("wan", "kling", "veo"), ("wan", "kling", "wan"))
"""Where a job's attempts are: moved on once or twice, or on to kling and back to wan (A → B → A:
wan-2.6 spills from wan's line to kling-2.1, whose fallback is wan)."""


@st.composite
def moving_job(draw: st.DrawFn) -> list[JobEvent]:
    """A job's events in the order they happened: admitted at wan, moved on along one of
    ``ROUTES`` (each move before the provider took the job), then at its last provider words by
    webhook and by poll, and an end; wan may still say it runs (a duplicate dispatch), but never
    that it ended, by webhook (a webhook names no attempt). Its dispatcher names the attempt: back
    at wan, it may say anything of the first attempt's slot (``first_slots_word``)."""
    route = draw(st.sampled_from(ROUTES))
    events = [queued()]
    if draw(st.booleans()):
        events.append(said("wan", "running", hook="w-run", at=1.5))
    for attempt in range(1, len(route)):
        spill = attempt == 1 and route[-1] == route[0]
        events.append(rerouted(route[attempt], attempt, by=route[attempt - 1], at=1.0 + attempt,
                               model="kling-2.1" if spill else None))
    last, moves, at = route[-1], len(route) - 1, 10.0
    words = draw(st.lists(st.sampled_from(["running", "progress", "place"]), max_size=5))
    for i, word in enumerate(words):
        at += 1
        by_hook = draw(st.booleans())
        kw: dict[str, Any] = {"hook": f"{last}-{i}"} if by_hook else {"attempt": moves}
        if word == "place":
            events.append(said(last, "submitted", at=at, provider_job_id="pj", queue_position=len(words) - i,
                               attempt=moves))  # (places come from polls)
        else:
            events.append(said(last, word, at=at, provider_job_id="pj",
                               progress=(i + 1) / 10 if word == "progress" else None, **kw))
    if route[-1] == route[0]:
        # Back at wan, wan's dispatcher may still tell of the slot of the first attempt (a
        # duplicate dispatch): its timeout, or a poll of a provider job the table never learned.
        for kind in draw(st.lists(st.sampled_from(["failed", "completed", "running"]), max_size=2, unique=True)):
            at += 1
            kw = {"error": "no result from wan after 900s"} if kind == "failed" else {"provider_job_id": "pw0"}
            events.append(said("wan", kind, attempt=0, at=at, **kw))
    end = draw(st.sampled_from(["completed", "failed"]))
    end_kw: dict[str, Any] = {"hook": f"{last}-end"} if draw(st.booleans()) else {"attempt": moves}
    events.append(said(last, end, at=at + 1, provider_job_id="pj", **end_kw))
    return events


def first_slots_word(event: JobEvent, history: list[JobEvent]) -> bool:
    """Whether ``event`` is the dispatcher's word of the first attempt's slot at a provider the job
    went back to (``moving_job``): old news, whenever it is read."""
    return (event.provider == history[0].provider and event.attempt == 0 and event.kind != "queued"
            and not from_webhook(event) and history[-1].provider == history[0].provider)


def semantic(state: JobState) -> dict[str, Any]:
    """Everything but the bookkeeping that depends on arrival order by design."""
    doc = state.to_dict()
    del doc["version"], doc["recent_events"]
    return doc


@settings(max_examples=300)
@given(history=moving_job(), data=st.data())
def test_any_read_order_with_duplicates_ends_the_job_as_the_order_it_happened_in(
        history: list[JobEvent], data: st.DataObject) -> None:
    expected = through([e for e in history if not first_slots_word(e, history)])  # (old news, read anywhere)
    moves = max(e.attempt for e in history if e.kind == "rerouted")
    assert expected.status in TERMINAL and (expected.provider, expected.attempt) == (history[-1].provider, moves)
    # The request is read first (its order is what sends the job anywhere); the rest in any order,
    # but for a job that goes back to wan, whose spill is read before the rest: a webhook names no
    # attempt, so wan's word read while the job is still at wan's first attempt counts for that
    # attempt (only an attempt in the webhook would tell). The order that sends the job back is
    # sent once the spill is written and kling failed the job: only an `events` partition lagging
    # by all of that lets wan's word come first.
    goes_back = history[-1].provider == history[0].provider
    head = [history[0], *(e for e in history if goes_back and e.kind == "rerouted" and e.attempt == 1)]
    shuffled = [*head, *data.draw(st.permutations([e for e in history if e not in head]))]
    for again in data.draw(st.lists(st.sampled_from(history), max_size=4)):
        shuffled.insert(data.draw(st.integers(len(head), len(shuffled))), again)
    assert semantic(through(shuffled)) == semantic(expected)


# --- back at a provider the job left: a word of the provider job it left there ------------------

BACK_AT_WAN = through([queued(), said("wan", "running", hook="w0-run", provider_job_id="pw0", at=1.5), SPILL, BACK])
"""wan → kling → wan, having left wan's provider job ``pw0`` (the first attempt's); wan's job of
the attempt now (the third) is not known yet."""


@pytest.mark.parametrize("late", [
    said("wan", "failed", hook="w0-fail", provider_job_id="pw0", at=6.0, error="boom"),
    said("wan", "completed", hook="w0-done", provider_job_id="pw0", at=6.0),
    said("wan", "cancelled", hook="w0-cancel", provider_job_id="pw0", at=6.0),
    said("wan", "failed", attempt=0, provider_job_id="pw0", at=6.0),  # wan's dispatcher, of the first attempt
], ids=["failed", "completed", "cancelled", "poll"])
def test_an_end_of_the_provider_job_a_job_left_is_old_news_once_the_job_is_back_at_that_provider(
        late: JobEvent) -> None:
    """A webhook names no attempt: it is wan's, the job is at wan, but it names the provider job of
    an attempt the job left there. It does not end the attempt now at wan (``pw2``'s, which runs);
    it frees only the slot that holds ``pw0``, if one still does."""
    assert (BACK_AT_WAN.provider, BACK_AT_WAN.attempt, BACK_AT_WAN.provider_job_id) == ("wan", 2, None)
    assert LeftJob(0, "wan", "pw0") in (BACK_AT_WAN.left_jobs or ())
    assert aim(BACK_AT_WAN, late) is None, "not the current attempt's word"
    assert not is_early(BACK_AT_WAN, late) and hold(BACK_AT_WAN, late) is None
    assert stray_end(BACK_AT_WAN, late) == Release("wan", 0, ENDED, "pw0")
    assert agent(BACK_AT_WAN, late) == BACK_AT_WAN
    run = said("wan", "running", hook="w2-run", provider_job_id="pw2", at=7.0)
    running = through([queued(), said("wan", "running", hook="w0-run", provider_job_id="pw0", at=1.5), SPILL, BACK,
                       run, late])
    assert (running.status, running.attempt, running.provider_job_id, running.error) == (JobStatus.RUNNING, 2,
                                                                                          "pw2", None)


def test_a_word_of_the_provider_job_a_job_left_never_becomes_the_attempts_provider_job() -> None:
    """A late ``running`` of ``pw0`` read before wan's job of the attempt now is known would fill
    the attempt's provider job id (ids are filled once): every later word of ``pw2`` would then
    name another job than the attempt's."""
    late = said("wan", "running", hook="w0-run-again", provider_job_id="pw0", at=6.0)
    assert aim(BACK_AT_WAN, late) is None and stray_end(BACK_AT_WAN, late) is None, "not an end: frees nothing"
    assert agent(BACK_AT_WAN, late) == BACK_AT_WAN


def test_a_provider_job_the_job_left_is_named_as_its_provider_names_it() -> None:
    """fal names one job two ways: compared as the connector compares them (``same``), the word is
    of the provider job the job left; compared exactly, of another job, which is the attempt's."""
    fal = dataclasses.replace(BACK_AT_WAN, left_jobs=(LeftJob(0, "wan", "workflows/acme/video/req-0"),))
    renamed = said("wan", "failed", hook="w0-fail", provider_job_id="workflows/acme/req-0", at=6.0)
    assert aim(fal, renamed, by_request_id) is None
    assert stray_end(fal, renamed, by_request_id) == Release("wan", 0, ENDED, "workflows/acme/req-0")
    assert aim(fal, renamed) is not None and stray_end(fal, renamed) is None


def test_a_job_that_never_moved_takes_every_word_of_its_provider_as_before() -> None:
    """The check costs a job that never moved nothing: it has left no provider job."""
    at_wan = through([queued(), said("wan", "running", hook="w-run", provider_job_id="pw0", at=1.5)])
    assert at_wan.left_jobs == ()
    other = said("wan", "failed", hook="w-fail", provider_job_id="pw9", at=6.0)
    aimed = aim(at_wan, other)
    assert aimed is other


@st.composite
def back_with_late_words(draw: st.DrawFn) -> list[JobEvent]:
    """wan → kling → wan, in the order it happened: wan's first provider job ``pw0`` runs and the
    table learns it, the job spills to kling and comes back to wan, whose job ``pw2`` runs and ends;
    meanwhile ``pw0``, which wan never stopped, goes on speaking (a webhook names no attempt)."""
    events = [queued(), said("wan", "running", hook="w0-run", provider_job_id="pw0", at=1.5), SPILL, BACK]
    late_kinds = draw(st.lists(st.sampled_from(["running", "progress", "completed", "failed", "cancelled"]),
                               min_size=1, max_size=4))
    for i, kind in enumerate(late_kinds):
        events.append(said("wan", kind, hook=f"w0-{i}", provider_job_id="pw0", at=4.0 + i,
                           progress=0.9 if kind == "progress" else None))
    words = draw(st.lists(st.sampled_from(["running", "progress"]), max_size=3))
    for i, kind in enumerate(words):
        events.append(said("wan", kind, hook=f"w2-{i}", provider_job_id="pw2", at=10.0 + i,
                           progress=(i + 1) / 10 if kind == "progress" else None))
    end = draw(st.sampled_from(["completed", "failed"]))
    events.append(said("wan", end, hook="w2-end", provider_job_id="pw2", at=20.0))
    return events


@settings(max_examples=200, deadline=None)  # (a check of what is read, not of how fast)
@given(history=back_with_late_words(), data=st.data())
def test_the_provider_job_a_job_left_never_speaks_for_its_attempt_back_there_in_any_read_order(
        history: list[JobEvent], data: st.DataObject) -> None:
    """The table learned ``pw0`` and the job left wan before anything else is read (the spill is
    read after wan's word of ``pw0``: a word of ``pw0`` read while the job is at its first attempt
    is that attempt's); the rest in any order."""
    late = [e for e in history if e.provider_job_id == "pw0" and e.event_id != "wh:wan:w0-run"]
    expected = through([e for e in history if e not in late])
    assert expected.status in TERMINAL and (expected.attempt, expected.provider_job_id) == (2, "pw2")
    head = history[:3]
    shuffled = [*head, *data.draw(st.permutations(history[3:]))]
    assert semantic(through(shuffled)) == semantic(expected)


def test_the_dispatcher_of_the_current_attempt_gives_it_a_provider_job_the_job_left() -> None:
    """A crash kept wan's slot of attempt 0 (holding ``pw0``, which the table learned) past the
    reroute; back at wan, attempt 2 takes the slot over and its dispatcher says ``pw0`` is attempt
    2's (``streams.dispatcher``'s ``take_over``). A dispatcher's word names its slot's attempt, so
    it is the attempt's own: taken, and ``pw0``'s words count for attempt 2 from then on. A
    webhook naming ``pw0`` before that word is read stays old news (it names no attempt)."""
    taken_over = said("wan", "submitted", attempt=2, provider_job_id="pw0", at=6.0)
    assert LeftJob(0, "wan", "pw0") in (BACK_AT_WAN.left_jobs or ())
    aimed = aim(BACK_AT_WAN, taken_over)
    assert aimed is not None and aimed.attempt == 2
    after = agent(BACK_AT_WAN, taken_over)
    assert after is not None and (after.attempt, after.provider_job_id) == (2, "pw0")
    done = said("wan", "completed", hook="w0-done", provider_job_id="pw0", at=7.0)
    assert aim(BACK_AT_WAN, done) is None, "before the takeover is read: of the attempt left"
    ended = agent(after, done)
    assert ended is not None and (ended.status, ended.attempt) == (JobStatus.COMPLETED, 2)
    stale = said("wan", "failed", attempt=0, provider_job_id="pw0", at=8.0)
    assert aim(after, stale) is None, "the dispatcher's word of attempt 0 is still old news"


def test_the_current_attempts_own_provider_job_is_never_old_news() -> None:
    """Should a provider make one job of two attempts (a later attempt taking over a slot an
    earlier one still holds), a word naming it is the current attempt's: the API tells such a word
    early."""
    one_job = dataclasses.replace(BACK_AT_WAN, provider_job_id="pw0")
    run = said("wan", "running", hook="w-run", provider_job_id="pw0", at=6.0)
    aimed = aim(one_job, run)
    assert aimed is not None and aimed.attempt == 2
    assert stray_end(one_job, dataclasses.replace(run, kind="failed")) is None


# --- back at a provider the job left: its dispatcher's word of the attempt it left there ----------

TWICE_AT_KLING = through([queued(), rerouted("kling", 1), rerouted("wan", 2, by="kling", at=3.0),
                          rerouted("kling", 3, by="wan", at=4.0, model="kling-2.1")])
"""wan → kling → wan → kling: kling's slot of attempt 1 may still be held when attempt 3 comes."""
ENDED_TWICE_AT_KLING = agent(TWICE_AT_KLING, said("kling", "completed", attempt=3, provider_job_id="pk3", at=9.0))


@pytest.mark.parametrize(("state", "stale", "owed"), [
    # Its slot's timeout: no provider job in the event, so the slot of that attempt (or an earlier
    # one) is freed, never the attempt now there.
    (BACK_AT_WAN, said("wan", "failed", attempt=0, error="no result from wan after 900s"), Release("wan", 0, "failed")),
    (TWICE_AT_KLING, said("kling", "failed", attempt=1, error="no result from kling after 900s"),
     Release("kling", 1, "failed")),
    (TWICE_AT_KLING, said("kling", "expired", attempt=1), Release("kling", 1, "expired")),
    # A cancel without its provider job only frees: a "cancelled" release would mark the job.
    (TWICE_AT_KLING, said("kling", "cancelled", attempt=1), Release("kling", 1, "failed")),
    # A poll of a provider job the table never learned: only the slot holding that job is freed.
    (BACK_AT_WAN, said("wan", "completed", attempt=0, provider_job_id="pw0-dup"), Release("wan", 0, ENDED, "pw0-dup")),
    (TWICE_AT_KLING, said("kling", "cancelled", attempt=1, provider_job_id="pk1"), Release("kling", 1, ENDED, "pk1")),
    (TWICE_AT_KLING, said("kling", "running", attempt=1, provider_job_id="pk1"), None),  # not an end
    (TWICE_AT_KLING, said("kling", "submitted", attempt=1, provider_job_id="pk1", queue_position=4), None),
    (ENDED_TWICE_AT_KLING, said("kling", "failed", attempt=1), Release("kling", 1, "failed")),
], ids=["timeout-0", "timeout-1", "expired", "cancel", "poll-end-0", "poll-cancel-1", "poll-run", "poll-place",
        "timeout-after-the-end"])
def test_a_dispatchers_word_of_an_attempt_the_job_left_is_old_news_once_the_job_is_back_at_that_provider(
        state: JobState, stale: JobEvent, owed: Release | None) -> None:
    """A dispatcher names its slot's attempt, unlike a webhook: a word of an earlier one is of a
    slot the job left there, however the job came back, and whether or not it names a provider
    job the table learned. It never speaks for the attempt now at that provider."""
    assert stale.attempt < state.attempt and stale.provider == state.provider
    assert aim(state, stale) is None, "not the current attempt's word"
    assert not is_early(state, stale) and hold(state, stale) is None
    assert stray_end(state, stale) == owed
    assert agent(state, stale) == state


def test_the_attempt_back_at_a_provider_goes_on_whenever_its_old_slots_timeout_is_read() -> None:
    """The timeout of kling's slot of attempt 1, read anywhere after kling's next attempt opened,
    neither fails that attempt nor fills it: it runs, then completes, as without the timeout."""
    head = [queued(), rerouted("kling", 1), rerouted("wan", 2, by="kling", at=3.0),
            rerouted("kling", 3, by="wan", at=4.0, model="kling-2.1")]
    words = [said("kling", "running", attempt=3, provider_job_id="pk3", at=6.0),
             said("kling", "completed", hook="k3-done", provider_job_id="pk3", at=9.0)]
    timeout = said("kling", "failed", attempt=1, at=7.0, error="no result from kling after 900s")
    expected = through([*head, *words])
    assert (expected.status, expected.attempt, expected.provider_job_id) == (JobStatus.COMPLETED, 3, "pk3")
    for at in range(len(words) + 1):
        read = through([*head, *words[:at], timeout, *words[at:]])
        assert semantic(read) == semantic(expected), at


@pytest.mark.parametrize(("state", "word"), [
    (TWICE_AT_KLING, said("kling", "running", hook="k3-run", provider_job_id="pk3")),  # a webhook names no attempt
    (TWICE_AT_KLING, JobEvent(event_id="c", job_id=JOB, kind="cancelled", at=5.0)),  # a user's cancel: no provider
    (BACK_AT_WAN, said("wan", "completed", hook="w2-done", provider_job_id="pw2")),
    (BACK_AT_WAN, JobEvent(event_id="c", job_id=JOB, kind="cancelled", at=5.0)),
], ids=["webhook-3", "cancel-3", "webhook-2", "cancel-2"])
def test_a_word_that_names_no_attempt_still_speaks_for_the_current_one(state: JobState, word: JobEvent) -> None:
    """Only a word naming no attempt (attempt 0 in a webhook or a user's cancel) is lifted to the
    job's attempt: the dispatcher's words name theirs, and the current attempt's pass as they are."""
    aimed = aim(state, word)
    assert aimed is not None and aimed.attempt == state.attempt
    own = said(state.provider or "", "running", attempt=state.attempt, provider_job_id="p-now")
    assert aim(state, own) is own
