"""A provider's word heard at the bridge, told to the job's watchers before the jobs table has it
(``floodgate.api.heard``, ``JobView.heard``): it says what the table will say, it never ends a
subscription, and the table's own copy of it is not told twice. No Kafka."""
from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from connectors.providers.base import ProviderEvent
from floodgate.api.heard import HEARD, Heard, Told, as_heard, face, final
from floodgate.api.view import JobView, Submission
from floodgate.jobs.events import aim, webhook_event
from floodgate.jobs.record import snapshot as snapshot_of
from floodgate.jobs.state import JobEvent, JobState, apply


def snap(version: int, status: str = "submitted", **fields: Any) -> dict[str, Any]:
    base = {"job_id": "j", "version": version, "status": status, "attempt": 0, "provider": "kling",
            "provider_job_id": "pj-1", "progress": 0.0, "video_url": None, "error": None, "tenant": "t",
            "created_at": 1_000, "updated_at": 1_000 + version}
    return {**base, **fields}


def word(state: str = "running", progress: float | None = None, *, provider: str = "kling",
         provider_job_id: str = "pj-1", video_url: str | None = None, webhook_id: str = "w1") -> Heard:
    return Heard(provider, "j", ProviderEvent(
        webhook_id=webhook_id, provider_job_id=provider_job_id, job_id="j", state=state, progress=progress,
        video_url=video_url, error=None, occurred_at=5.0))


# -- as_heard says what the table will say ---------------------------------------------------

STATES = ("queued", "running", "completed", "failed", "cancelled")


@st.composite
def states(draw: st.DrawFn) -> JobState:
    """A job's state as the jobs table reaches it: queued, then some events of one or two attempts."""
    state = apply(None, JobEvent(event_id="q", job_id="j", kind="queued", at=1.0, provider="kling",
                                 tenant="t", model="kling-2.1")).state
    assert state is not None
    kinds = st.sampled_from(["submitted", "running", "progress", "completed", "failed", "cancelled", "rerouted"])
    for n in range(draw(st.integers(0, 4))):
        kind = draw(kinds)
        # (Its dispatcher's words: they name the attempt, and one of an earlier attempt is old news.)
        attempt = state.attempt + 1 if kind == "rerouted" else state.attempt
        event = JobEvent(event_id=f"e{n}", job_id="j", kind=kind, at=2.0 + n,
                         provider=draw(st.sampled_from(["kling", "wan"])) if kind == "rerouted" else "kling",
                         provider_job_id=draw(st.sampled_from([None, "pj-1", "pj-2"])), attempt=attempt,
                         progress=draw(st.sampled_from([None, 0.3, 0.6])),
                         video_url="https://v/x.mp4" if kind == "completed" else None)
        aimed = aim(state, event)
        if aimed is not None:
            state = apply(state, aimed).state or state
    return state


@given(states(), st.sampled_from(STATES), st.sampled_from([None, 0.2, 0.5, 0.9]),
       st.sampled_from(["kling", "wan"]), st.sampled_from(["pj-1", "pj-2"]), st.booleans())
def test_a_heard_word_is_what_the_jobs_table_makes_of_the_webhook(
        state: JobState, said: str, progress: float | None, provider: str, provider_job_id: str,
        with_video: bool) -> None:
    heard = word(said, progress, provider=provider, provider_job_id=provider_job_id, webhook_id="w",
                 video_url="https://v/y.mp4" if with_video else None)
    before = snapshot_of(state)
    early = as_heard(before, heard)
    # What the jobs agent does with the same webhook (streams/jobs.py: on_webhook, on_event).
    event = webhook_event(provider, job_id="j", webhook_id="w", state=said, occurred_at=5.0,
                          provider_job_id=provider_job_id, progress=progress,
                          video_url=heard.event.video_url, error=None)
    aimed = None if event is None else aim(state, event)
    step = None if aimed is None else apply(state, aimed)
    table = snapshot_of(step.state) if step is not None and step.changed and step.state is not None else None
    if early is None:
        # Nothing told early: the table changes nothing a watcher sees, or the job had ended
        # (late facts on an ended job are the table's to tell), or the job moved and the word
        # names another provider job than its attempt's (perhaps one it left: the table's to tell),
        # or the word is a provider's cancel (the echo of the owner's, or one the owner never made:
        # only the table knows which).
        moved_elsewhere = state.attempt > 0 and provider_job_id != state.provider_job_id
        assert table is None or face(table) == face(before) or state.terminal or moved_elsewhere \
            or said == "cancelled"
    else:
        assert table is not None and face(early) == face(table)
        assert early[HEARD] and early["version"] == before["version"]


def test_a_word_from_a_provider_the_job_left_or_on_an_ended_job_is_not_heard() -> None:
    assert as_heard(snap(3, "queued", attempt=1, provider="wan", provider_job_id=None), word("completed")) is None
    assert as_heard(snap(3, "cancelled"), word("completed", video_url="https://v/x.mp4")) is None
    assert as_heard(snap(3, "failed", progress=0.1), word("running", 0.5)) is None  # a late fact: the table's
    assert as_heard(snap(3, "running", progress=0.5), word("running", 0.4)) is None  # old news
    assert as_heard(snap(3), word("queued")) is None  # nothing the table records


def test_completed_without_a_video_is_heard_as_the_table_will_have_it() -> None:
    got = as_heard(snap(2), word("completed"))
    assert got is not None and got["status"] == "failed" and got["error"] == "completed without a video_url"


# -- Told: what one subscriber hears -----------------------------------------------------------

def test_a_subscriber_hears_the_word_then_not_the_tables_copy_of_it() -> None:
    told = Told()
    queued = snap(1, "queued", provider_job_id=None)
    assert told.news(queued)
    told.sent(queued)
    submitted = {**queued, "status": "submitted", "provider_job_id": "pj-1"}  # the slot log's word, same version
    assert told.news(submitted), "submitted is told although the version did not move"
    told.sent(submitted)
    running = as_heard(submitted, word("running", 0.4))
    assert running is not None and told.news(running)
    told.sent(running)
    assert not told.news(running)
    table = snap(2, "running", progress=0.4)  # the table's copy: nothing new to say
    assert not told.news(table)
    later = snap(3, "running", progress=0.7)
    assert told.news(later)


def test_a_heard_end_does_not_end_the_subscription_and_the_tables_word_wins_a_race() -> None:
    told = Told()
    running = snap(2, "running", progress=0.5)
    told.sent(running)
    done = as_heard(running, word("completed", video_url="https://v/x.mp4"))
    assert done is not None and told.news(done) and not final(done)
    told.sent(done)
    cancelled = snap(3, "cancelled", error="cancelled by the user")  # a cancel reached the worker first
    assert told.news(cancelled) and final(cancelled)
    same = snap(3, "completed", progress=1.0, video_url="https://v/x.mp4")
    assert told.news(same) and final(same), "the end told early, recorded: news that it is final"


def test_the_tables_copy_of_an_end_told_early_is_told_once() -> None:
    told = Told()
    running = snap(2, "running", progress=0.5)
    told.sent(running)
    done = as_heard(running, word("completed", video_url="https://v/x.mp4"))
    assert done is not None
    told.sent(done)
    recorded = snap(3, "completed", progress=1.0, video_url="https://v/x.mp4")
    assert told.news(recorded)
    told.sent(recorded)
    assert not told.news(recorded) and not told.news(done)


def test_a_resumed_sse_stream_hears_only_newer_versions() -> None:
    told = Told.resumed(2)
    assert not told.news(snap(2, "running"))
    assert told.news(snap(3, "running"))


# -- JobView.heard -----------------------------------------------------------------------------

def test_only_a_subscribed_job_hears_early_and_the_table_catching_up_clears_the_word() -> None:
    view = JobView()
    view.apply(snap(1))
    assert not view.heard(word("running", 0.3)), "nobody watches: nothing kept"
    assert view.get("j")["status"] == "submitted"  # type: ignore[index]
    queue = view.subscribe("j")
    assert view.heard(word("running", 0.3))
    assert queue.get_nowait()["progress"] == 0.3
    got = view.get("j")
    assert got is not None and (got["status"], got["progress"], got["version"]) == ("running", 0.3, 1)
    assert not view.heard(word("running", 0.3, webhook_id="w2")), "the same news again tells nobody"
    assert view.heard(word("completed", video_url="https://v/x.mp4", webhook_id="w3"))
    assert queue.get_nowait()["status"] == "completed"
    view.apply(snap(2, "running", progress=0.3))  # the table has the first word: the second still shows
    shown = queue.get_nowait()
    assert (shown["status"], shown["version"], shown[HEARD]) == ("completed", 2, True)
    view.apply(snap(3, "completed", progress=1.0, video_url="https://v/x.mp4"))
    table = queue.get_nowait()
    assert table["status"] == "completed" and HEARD not in table
    assert not view._words, "every word is in the table now"


def test_a_heard_end_is_not_counted_until_the_table_has_it() -> None:
    view = JobView()
    view.apply(snap(1, "running"))
    view.subscribe("j")
    assert view.open_jobs.open_for("t") == 1
    assert view.heard(word("completed", video_url="https://v/x.mp4"))
    assert view.open_jobs.open_for("t") == 1, "quotas follow the table, not a word that may lose a race"
    view.apply(snap(2, "completed", progress=1.0, video_url="https://v/x.mp4"))
    assert view.open_jobs.open_for("t") == 0


def test_a_word_heard_before_the_submission_was_read_still_holds() -> None:
    view = JobView()
    view.apply(snap(1, "queued", provider_job_id=None))
    queue = view.subscribe("j")
    assert view.heard(word("running", 0.2))
    assert queue.get_nowait()["status"] == "running"
    view.submitted(Submission(job_id="j", provider="kling", attempt=0, provider_job_id="pj-1", at_ms=4_000))
    got = view.get("j")
    assert got is not None and (got["status"], got["progress"]) == ("running", 0.2)


# -- a job that moved: the snapshot does not say which provider jobs it left -------------------


def test_a_word_on_a_job_that_moved_is_heard_only_when_it_names_the_attempts_own_provider_job() -> None:
    """The table takes a word naming a provider job of an attempt the job left as old news, even
    from the provider the job is back at (kling → wan → kling); a snapshot does not say which
    provider jobs those are, so a job that moved hears early only a word naming its attempt's own
    provider job (or none); the table tells the rest, if it takes it."""
    back = snap(3, "submitted", attempt=2, provider_job_id="pj-3")
    assert as_heard(back, word("failed", provider_job_id="pj-1")) is None, "perhaps the job it left"
    told = as_heard(back, word("running", 0.3, provider_job_id="pj-3"))
    assert told is not None and (told["status"], told["progress"]) == ("running", 0.3)
    unknown = snap(3, "queued", attempt=2, provider_job_id=None)
    assert as_heard(unknown, word("completed", provider_job_id="pj-1", video_url="https://v/x.mp4")) is None
    never_moved = snap(3, "queued", provider_job_id=None)
    assert as_heard(never_moved, word("running", provider_job_id="pj-1")) is not None, "nothing left: as before"


def test_the_late_word_of_a_provider_job_the_job_left_is_not_heard_because_the_table_ignores_it() -> None:
    def at(event_id: str, kind: str, **kw: Any) -> JobEvent:
        return JobEvent(event_id=event_id, job_id="j", kind=kind, at=2.0, **kw)

    state: JobState | None = None
    for event in (at("q", "queued", provider="kling", tenant="t"),
                  at("wh:kling:r", "running", provider="kling", provider_job_id="pj-1"),
                  at("r1", "rerouted", provider="wan", attempt=1), at("r2", "rerouted", provider="kling", attempt=2)):
        state = apply(state, event).state
    assert state is not None and (state.provider, state.attempt, state.provider_job_id) == ("kling", 2, None)
    late = webhook_event("kling", job_id="j", webhook_id="late", state="failed", occurred_at=5.0,
                         provider_job_id="pj-1", progress=None, video_url=None, error="boom")
    assert late is not None and aim(state, late) is None, "the table ignores it"
    assert as_heard(snapshot_of(state), word("failed", provider_job_id="pj-1")) is None
