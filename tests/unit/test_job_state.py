from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate import codec
from floodgate.api.cancel import CANCEL_REASON
from floodgate.codec import SCHEMA_HEADER
from floodgate.dispatch import ENDED
from floodgate.errors import ValidationError
from floodgate.jobs import EVENT_KINDS, RECENT_EVENTS_LIMIT, TERMINAL, JobEvent, JobState, JobStatus, apply
from floodgate.jobs.events import Release, aim, queued_event, stray_end
from floodgate.jobs.record import JobRecord, snapshot
from floodgate.jobs.state import ENDING_KINDS, LEFT_JOBS_LIMIT, LeftJob
from schemas import SCHEMA_DIR

Q, S, R, C, F, X, E = (
    JobStatus.QUEUED,
    JobStatus.SUBMITTED,
    JobStatus.RUNNING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.EXPIRED,
)


def ev(kind: str, event_id: str = "e-new", **kw: Any) -> JobEvent:
    defaults: dict[str, Any] = {"at": 100.0, "attempt": 1, "provider": "sora"}
    if kind == "completed":
        defaults["video_url"] = "https://cdn/v.mp4"
    if kind == "progress":
        defaults["progress"] = 0.7
    if kind == "rerouted":
        defaults.update(attempt=2, provider="kling")
    return JobEvent(event_id=event_id, job_id="j1", kind=kind, **{**defaults, **kw})


def state_at(status: JobStatus, **kw: Any) -> JobState:
    """A job on attempt 1 at sora, half done, that has seen one event."""
    fields: dict[str, Any] = dict(
        job_id="j1",
        tenant="acme",
        model="sora-2",
        provider="sora",
        provider_job_id="sj-1",
        status=status,
        progress=1.0 if status is C else 0.5,
        video_url="https://cdn/old.mp4" if status is C else None,
        error="boom" if status is F else None,
        attempt=1,
        created_at=10.0,
        updated_at=50.0,
        recent_events=("e-prev",),
        version=3,
    )
    fields.update(kw)
    return JobState(**fields)


# (from status, event kind) -> (status after, changed, became_terminal)
TABLE = [
    (Q, "queued", Q, False, False),
    (Q, "submitted", S, True, False),
    (Q, "running", R, True, False),
    (Q, "progress", R, True, False),
    (Q, "completed", C, True, True),
    (Q, "failed", F, True, True),
    (Q, "cancelled", F, True, True),  # a provider's cancel (ev names sora); the owner's: user_cancel
    (Q, "rerouted", Q, True, False),
    (S, "queued", S, False, False),
    (S, "submitted", S, False, False),
    (S, "running", R, True, False),
    (S, "progress", R, True, False),
    (S, "completed", C, True, True),
    (S, "failed", F, True, True),
    (S, "cancelled", F, True, True),
    (S, "rerouted", Q, True, False),
    (R, "queued", R, False, False),
    (R, "submitted", R, False, False),
    (R, "running", R, False, False),
    (R, "progress", R, True, False),  # 0.5 -> 0.7
    (R, "completed", C, True, True),
    (R, "failed", F, True, True),
    (R, "cancelled", F, True, True),
    (R, "rerouted", Q, True, False),
    (C, "queued", C, False, False),
    (C, "submitted", C, False, False),
    (C, "running", C, False, False),
    (C, "progress", C, False, False),
    (C, "completed", C, False, False),
    (C, "failed", C, False, False),
    (C, "cancelled", C, False, False),
    (C, "rerouted", C, False, False),
    (F, "queued", F, False, False),
    (F, "submitted", F, False, False),
    (F, "running", F, False, False),
    (F, "progress", F, True, False),  # a late fact of the same attempt: progress rises, status stays
    (F, "completed", F, False, False),
    (F, "failed", F, False, False),
    (F, "cancelled", F, False, False),
    (F, "rerouted", F, False, False),
    (X, "queued", X, False, False),
    (X, "submitted", X, False, False),
    (X, "running", X, False, False),
    (X, "progress", X, True, False),
    (X, "completed", X, False, False),
    (X, "failed", X, False, False),
    (X, "cancelled", X, False, False),
    (X, "rerouted", X, False, False),
    (Q, "expired", E, True, True),
    (S, "expired", S, False, False),  # it left the line: too late to expire
    (R, "expired", R, False, False),
    (C, "expired", C, False, False),
    (F, "expired", F, False, False),
    (X, "expired", X, False, False),
    (E, "queued", E, False, False),
    (E, "submitted", E, False, False),
    (E, "running", E, False, False),
    (E, "progress", E, True, False),
    (E, "completed", E, False, False),
    (E, "failed", E, False, False),
    (E, "cancelled", E, False, False),
    (E, "rerouted", E, False, False),
    (E, "expired", E, False, False),
]


@pytest.mark.parametrize(("before", "kind", "after", "changed", "became_terminal"), TABLE)
def test_transition_table(before: JobStatus, kind: str, after: JobStatus, changed: bool, became_terminal: bool) -> None:
    old = state_at(before)
    t = apply(old, ev(kind))
    assert t.state is not None
    assert (t.state.status, t.changed, t.became_terminal) == (after, changed, became_terminal), t.reason
    if changed:
        assert t.state.version == old.version + 1
        assert t.state.recent_events[-1] == "e-new"
        assert t.state.updated_at == 100.0
    else:
        assert t.state is old


def test_table_covers_every_status_and_kind() -> None:
    from floodgate.jobs import EVENT_KINDS

    assert {(row[0], row[1]) for row in TABLE} == {(s, k) for s in JobStatus for k in EVENT_KINDS}


@pytest.mark.parametrize("kind", ["queued", "submitted", "running", "progress", "completed", "failed", "cancelled"])
def test_event_from_an_older_attempt_is_stale(kind: str) -> None:
    old = state_at(R)
    t = apply(old, ev(kind, attempt=0))
    assert (t.changed, t.state) == (False, old)
    assert "stale" in t.reason


def test_duplicate_event_id_changes_nothing() -> None:
    first = apply(state_at(Q), ev("running"))
    assert first.state is not None
    again = apply(first.state, ev("completed"))  # same id "e-new", different content
    assert again.changed is False and again.state is first.state
    assert again.reason == "duplicate event"


def test_recent_events_window_is_bounded_and_keeps_the_newest() -> None:
    s: JobState | None = None
    for i in range(RECENT_EVENTS_LIMIT + 10):
        t = apply(s, JobEvent(f"e{i}", "j1", "progress", at=float(i), progress=i / 100))
        assert t.changed
        s = t.state
    assert s is not None
    assert len(s.recent_events) == RECENT_EVENTS_LIMIT
    assert s.recent_events[-1] == f"e{RECENT_EVENTS_LIMIT + 9}"
    assert s.version == RECENT_EVENTS_LIMIT + 10


def test_queued_event_creates_the_full_state() -> None:
    e = JobEvent(
        "e1",
        "j1",
        "queued",
        at=5.0,
        tenant="acme",
        user_id="u1",
        model="sora-2",
        webhook_url="https://hook",
        metadata={"k": "v"},
        provider="sora",
    )
    t = apply(None, e)
    assert t.changed and not t.became_terminal
    assert t.state == JobState(
        job_id="j1",
        tenant="acme",
        user_id="u1",
        model="sora-2",
        provider="sora",
        status=Q,
        created_at=5.0,
        updated_at=5.0,
        webhook_url="https://hook",
        metadata={"k": "v"},
        recent_events=("e1",),
        version=1,
    )


def test_unknown_job_created_by_a_webhook_keeps_its_facts_and_learns_the_rest_later() -> None:
    t = apply(
        None,
        JobEvent(
            "w1", "j1", "completed", at=90.0, provider="kling", provider_job_id="k-9", video_url="https://cdn/v.mp4"
        ),
    )
    assert t.state is not None and t.became_terminal
    assert (t.state.status, t.state.provider_job_id, t.state.progress) == (C, "k-9", 1.0)
    late = apply(t.state, JobEvent("q1", "j1", "queued", at=1.0, tenant="acme", model="kling-2"))
    assert late.changed and not late.became_terminal
    assert late.state is not None
    assert (late.state.status, late.state.tenant, late.state.model) == (C, "acme", "kling-2")
    assert late.state.created_at == 1.0
    assert late.state.updated_at == 90.0  # a late event does not move updated_at backwards


def test_completed_webhook_may_beat_submitted_and_submitted_then_only_fills_the_id() -> None:
    done = apply(state_at(Q, provider_job_id=None), ev("completed", event_id="w", provider_job_id=None))
    assert done.state is not None and done.state.status is C
    late = apply(done.state, ev("submitted", event_id="s", provider_job_id="sj-1"))
    assert late.state is not None and late.changed and not late.became_terminal
    assert (late.state.status, late.state.provider_job_id) == (C, "sj-1")


def test_completed_without_video_url_is_a_failure() -> None:
    t = apply(state_at(R), ev("completed", video_url=None))
    assert t.state is not None and t.changed and t.became_terminal
    assert t.state.status is F
    assert t.state.error == "completed without a video_url"
    assert "marked failed" in t.reason


def test_failed_keeps_the_provider_error() -> None:
    t = apply(state_at(R), ev("failed", error="content policy"))
    assert t.state is not None and t.state.error == "content policy"


def test_reroute_moves_to_the_new_provider_and_forgets_the_old_job() -> None:
    t = apply(state_at(R), ev("rerouted"))
    assert t.state is not None
    s = t.state
    assert (s.status, s.provider, s.provider_job_id, s.attempt, s.progress) == (Q, "kling", None, 2, 0.0)
    assert (s.tenant, s.model, s.created_at) == ("acme", "sora-2", 10.0)
    assert t.reason == "rerouted to kling (attempt 2)"


def test_a_spill_joins_the_equivalents_line_when_it_moves_and_a_later_fallback_keeps_that() -> None:
    from floodgate.jobs.record import JobRecord, snapshot

    queued = state_at(Q, attempt=1, provider="sora", provider_job_id=None)
    assert queued.lined_at is None and snapshot(queued)["lined_at"] is None  # by its acceptance
    spilled = apply(queued, ev("rerouted", at=123.4567, model="wan-2.6", error="spilled from sora-2")).state
    assert spilled is not None
    assert (spilled.serving_model, spilled.lined_at, spilled.created_at) == ("wan-2.6", 123.4567, 10.0)
    assert snapshot(spilled)["lined_at"] == 123457  # ms, as the order's
    assert JobRecord.decode(JobRecord(spilled).encode()).state == spilled
    fell_back = apply(spilled, ev("rerouted", event_id="fb", attempt=3, at=200.0, error="outage")).state
    assert fell_back is not None
    assert (fell_back.serving_model, fell_back.lined_at, fell_back.route_note) == ("wan-2.6", 123.4567, "outage")


def test_reroute_needs_a_higher_attempt() -> None:
    old = state_at(R)
    t = apply(old, ev("rerouted", attempt=1))
    assert (t.changed, t.state) == (False, old)


def test_event_of_a_new_attempt_opens_it_even_before_the_reroute_arrives() -> None:
    t = apply(state_at(R), ev("submitted", attempt=2, provider="kling", provider_job_id="k-1"))
    assert t.state is not None
    assert (t.state.status, t.state.attempt, t.state.provider, t.state.provider_job_id) == (S, 2, "kling", "k-1")
    late_reroute = apply(t.state, ev("rerouted", event_id="rr"))
    assert late_reroute.changed is False


def test_progress_only_rises() -> None:
    old = state_at(R, progress=0.8)
    assert apply(old, ev("progress", progress=0.3)).changed is False
    assert apply(old, ev("progress", progress=0.8)).changed is False


def test_event_for_another_job_is_a_bug() -> None:
    with pytest.raises(ValueError, match="not 'j1'"):
        apply(state_at(Q), JobEvent("e", "j2", "running", at=1.0))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "exploded"}, "kind"),
        ({"kind": "progress", "progress": 1.5}, "progress"),
        ({"kind": "progress", "progress": -0.1}, "progress"),
        ({"kind": "running", "attempt": -1}, "attempt"),
        ({"kind": "rerouted", "attempt": 1}, "provider"),
        ({"kind": "rerouted", "attempt": 0, "provider": "kling"}, "attempt"),
        ({"kind": "running", "event_id": ""}, "event_id"),
        ({"kind": "running", "at": float("nan")}, "at"),
    ],
)
def test_malformed_event_is_rejected(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"event_id": "e", "job_id": "j1", "at": 1.0, **kwargs}
    with pytest.raises(ValidationError) as info:
        JobEvent(**args)
    assert field in {p.field for p in info.value.problems}


def test_state_round_trips_through_json() -> None:
    s = state_at(C, metadata={"a": "1"}, webhook_url="https://hook", user_id="u")
    data = json.loads(json.dumps(s.to_dict()))
    assert JobState.from_dict(data) == s
    assert data["status"] == "completed"


def test_from_dict_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    s = JobState.from_dict({"job_id": "j1", "status": "running", "added_in_v9": True})
    assert s == JobState(job_id="j1", status=R)


def test_from_dict_names_every_bad_field() -> None:
    with pytest.raises(ValidationError) as info:
        JobState.from_dict({"job_id": "", "status": "exploded", "progress": 2, "metadata": {"a": 1}, "version": -1})
    assert {p.field for p in info.value.problems} == {"job_id", "status", "progress", "metadata", "version"}


def test_from_dict_requires_job_id_and_status() -> None:
    with pytest.raises(ValidationError) as info:
        JobState.from_dict({})
    assert {p.field for p in info.value.problems} == {"job_id", "status"}


# --- properties -------------------------------------------------------------------------

PROVIDERS = ["sora", "kling", "veo"]


@st.composite
def job_history(draw: st.DrawFn) -> list[JobEvent]:
    """One job's events in the order they happened: attempts, each maybe rerouted, ending in one terminal event."""
    attempts = draw(st.integers(1, 3))
    raw: list[dict[str, Any]] = []
    for a in range(attempts):
        provider = draw(st.sampled_from(PROVIDERS))
        pjid = f"{provider}-{a}"
        if a == 0:
            raw.append(
                dict(
                    kind="queued",
                    tenant="acme",
                    user_id="u1",
                    model="m",
                    webhook_url="https://h",
                    metadata={"k": "v"},
                    provider=draw(st.sampled_from([provider, None])),
                )
            )
        else:
            raw.append(dict(kind="rerouted", provider=provider))
        if draw(st.booleans()):
            raw.append(dict(kind="submitted", provider=provider, provider_job_id=pjid))
        for place in draw(st.lists(st.integers(0, 5), max_size=3)):  # its place in the provider's queue
            raw.append(dict(kind="submitted", provider=provider, provider_job_id=pjid, queue_position=place))
        if draw(st.booleans()):
            raw.append(dict(kind="running", provider=provider, provider_job_id=pjid))
        for p in sorted(draw(st.lists(st.floats(0, 1), max_size=3))):
            raw.append(dict(kind="progress", provider=provider, provider_job_id=pjid, progress=p))
        for kw in raw:
            kw.setdefault("attempt", a)
    last = attempts - 1
    provider = raw[-1].get("provider") or "sora"
    terminal = draw(st.sampled_from(["completed", "completed-no-url", "failed", "cancelled"]))
    end: dict[str, Any] = dict(kind=terminal.removesuffix("-no-url"), attempt=last, provider=provider)
    if draw(st.booleans()):
        end["provider_job_id"] = f"{provider}-{last}"
    if terminal == "completed":
        end["video_url"] = "https://cdn/v.mp4"
    if terminal == "failed":
        end["error"] = "boom"
    raw.append(end)
    return [JobEvent(event_id=f"e{i}", job_id="j1", at=float(i), **kw) for i, kw in enumerate(raw)]


def fold(events: list[JobEvent]) -> JobState:
    s: JobState | None = None
    for e in events:
        s = apply(s, e).state
    assert s is not None
    return s


def semantic(s: JobState) -> dict[str, Any]:
    """Everything but the bookkeeping that depends on arrival order by design."""
    d = s.to_dict()
    del d["version"], d["recent_events"]
    return d


@settings(max_examples=200)
@given(history=job_history(), data=st.data())
def test_any_order_with_duplicates_converges_to_the_in_order_state(
    history: list[JobEvent], data: st.DataObject
) -> None:
    shuffled = list(data.draw(st.permutations(history)))
    for e in data.draw(st.lists(st.sampled_from(history), max_size=5)):
        shuffled.insert(data.draw(st.integers(0, len(shuffled))), e)
    expected = fold(history)
    assert expected.status in TERMINAL
    assert semantic(fold(shuffled)) == semantic(expected)


events_any = st.builds(
    JobEvent,
    event_id=st.sampled_from([f"e{i}" for i in range(12)]),
    job_id=st.just("j1"),
    kind=st.sampled_from(["queued", "submitted", "running", "progress", "completed", "failed", "cancelled"]),
    at=st.floats(0, 1000),
    provider=st.sampled_from([None, *PROVIDERS]),
    provider_job_id=st.sampled_from([None, "a", "b"]),
    attempt=st.integers(0, 3),
    progress=st.none() | st.floats(0, 1),
    video_url=st.sampled_from([None, "https://cdn/v.mp4"]),
) | st.builds(
    JobEvent,
    event_id=st.sampled_from([f"r{i}" for i in range(4)]),
    job_id=st.just("j1"),
    kind=st.just("rerouted"),
    at=st.floats(0, 1000),
    provider=st.sampled_from(PROVIDERS),
    attempt=st.integers(1, 3),
)


@given(st.lists(events_any, min_size=1, max_size=20))
def test_invariants_hold_for_arbitrary_event_streams(events: list[JobEvent]) -> None:
    s: JobState | None = None
    for e in events:
        t = apply(s, e)
        assert t.state is not None
        if s is not None:
            assert t.state.version == s.version + (1 if t.changed else 0)
            assert t.state.attempt >= s.attempt
            assert t.state.updated_at >= s.updated_at
            if s.status in TERMINAL:
                assert t.state.status == s.status
                assert not t.became_terminal
        reached_terminal = t.state.status in TERMINAL and (s is None or s.status not in TERMINAL)
        assert t.became_terminal == (t.changed and reached_terminal)
        assert 0.0 <= t.state.progress <= 1.0
        s = t.state


@settings(max_examples=50)
@given(st.lists(events_any, max_size=8), events_any)
def test_reapplying_an_event_outside_the_dedupe_window_is_harmless(prefix: list[JobEvent], e: JobEvent) -> None:
    before = dataclasses.replace(fold(prefix), recent_events=()) if prefix else None
    s = apply(before, e).state
    assert s is not None
    forgotten = dataclasses.replace(s, recent_events=())
    assert apply(forgotten, e).changed is False


# --- user cancels (POST /v1/jobs/{id}/cancel), as the job-state agent applies them -------------


def user_cancel(event_id: str = "cancel-1") -> JobEvent:
    """What the API writes: no provider, attempt 0 (it cannot know either)."""
    return JobEvent(event_id=event_id, job_id="j1", kind="cancelled", at=100.0, error=CANCEL_REASON)


def through_agent(state: JobState | None, event: JobEvent) -> Any:
    aimed = aim(state, event)
    assert aimed is not None
    return apply(state, aimed)


@pytest.mark.parametrize("attempt", [0, 1, 3])
@pytest.mark.parametrize("status", [Q, S, R])
def test_a_user_cancel_ends_a_live_job_on_whatever_attempt_it_is(status: JobStatus, attempt: int) -> None:
    before = state_at(status, attempt=attempt)
    t = through_agent(before, user_cancel())
    assert t.state is not None
    assert (t.state.status, t.changed, t.became_terminal) == (X, True, True), t.reason
    # The job stays on its attempt and provider, so the release goes where its slot is.
    assert (t.state.attempt, t.state.provider, t.state.provider_job_id) == (attempt, "sora", "sj-1")
    assert t.state.error == CANCEL_REASON and t.state.video_url is None


def test_without_aiming_a_user_cancel_would_be_stale_on_a_later_attempt() -> None:
    t = apply(state_at(R, attempt=2), user_cancel())
    assert not t.changed and "stale" in t.reason


@pytest.mark.parametrize("status", [C, F])
def test_a_user_cancel_does_not_undo_a_result(status: JobStatus) -> None:
    before = state_at(status)
    t = through_agent(before, user_cancel())
    assert t.state is before and not t.changed and not t.became_terminal


@pytest.mark.parametrize("late", [ev("completed", event_id="late-done"), ev("failed", event_id="late-fail"),
                                  ev("running", event_id="late-run"), ev("submitted", event_id="late-sub"),
                                  ev("cancelled", event_id="late-cancel")])
def test_provider_news_after_a_user_cancel_changes_nothing(late: JobEvent) -> None:
    cancelled = through_agent(state_at(R), user_cancel()).state
    t = through_agent(cancelled, late)
    assert t.state is cancelled and not t.changed and not t.became_terminal
    assert t.state.status is X and t.state.video_url is None and t.state.error == CANCEL_REASON


def test_a_second_user_cancel_is_no_news() -> None:
    cancelled = through_agent(state_at(S), user_cancel("cancel-1")).state
    t = through_agent(cancelled, user_cancel("cancel-2"))
    assert t.state is cancelled and not t.changed


def test_a_cancel_that_overtakes_the_queued_event_still_wins_and_the_job_gets_its_fields() -> None:
    first = apply(None, user_cancel())
    assert first.state is not None and first.state.status is X and first.became_terminal
    queued = JobEvent(event_id="j1:queued", job_id="j1", kind="queued", at=90.0, provider="sora",
                      tenant="acme", user_id="u", model="sora-2")
    t = through_agent(first.state, queued)
    assert t.state is not None and t.state.status is X and not t.became_terminal
    assert (t.state.provider, t.state.model, t.state.created_at) == ("sora", "sora-2", 90.0)


def test_only_a_job_that_ended_before_any_request_admitted_it_owes_its_result_again() -> None:
    cancelled = apply(None, user_cancel()).state
    assert cancelled is not None
    assert JobRecord.decode(JobRecord(cancelled, "cancel-1").encode()).ended_unadmitted
    queued = queued_event({"job_id": "j1", "tenant": "acme", "user_id": "u", "model": "sora-2",
                           "accepted_at": 90_000}, "sora")
    filled = through_agent(cancelled, queued).state
    assert filled.tenant == "acme"
    assert not JobRecord(filled, queued.event_id, (0, 7)).ended_unadmitted, "once admitted, never again"
    assert not JobRecord(state_at(X), "cancel-1", (0, 7)).ended_unadmitted, "admitted, then cancelled"
    live = apply(None, ev("running", event_id="wh-1")).state  # a webhook that overtook the request
    assert live is not None and not JobRecord(live, "wh-1").ended_unadmitted


def test_news_from_a_provider_the_job_left_is_ignored_and_user_events_are_lifted_to_its_attempt() -> None:
    at_kling = state_at(R, provider="kling", attempt=2)
    assert aim(at_kling, ev("completed", provider="sora", attempt=2)) is None
    lifted = aim(at_kling, user_cancel())
    assert lifted is not None and lifted.attempt == 2
    rerouted = ev("rerouted", attempt=3, provider="wan")
    assert aim(at_kling, rerouted) is rerouted


AT_KLING = state_at(R, provider="kling", provider_job_id="kj-2", attempt=2)


@pytest.mark.parametrize(("before", "event", "owed"), [
    # An end at the provider the job left: its slot there is freed, by provider job when named.
    (AT_KLING, ev("completed", provider_job_id="sj-1"), Release("sora", 1, ENDED, "sj-1")),
    (AT_KLING, ev("cancelled", attempt=0, provider_job_id="sj-1"), Release("sora", 0, ENDED, "sj-1")),
    (AT_KLING, ev("failed", error="no result from sora after 900s"), Release("sora", 1, "failed")),
    (AT_KLING, ev("expired"), Release("sora", 1, "expired")),
    # A cancel there without its provider job only frees: a "cancelled" release would mark the job.
    (AT_KLING, ev("cancelled", attempt=0), Release("sora", 0, "failed")),
    (state_at(C, provider="kling", attempt=2), ev("failed"), Release("sora", 1, "failed")),
    # Anything else owes nothing.
    (AT_KLING, ev("running", provider_job_id="sj-1"), None),  # not an end
    (AT_KLING, ev("progress"), None),
    (AT_KLING, ev("submitted"), None),
    (AT_KLING, ev("completed", provider="kling", attempt=2), None),  # the job's own provider: applied
    (AT_KLING, ev("completed", attempt=3), None),  # an attempt the table has not heard of yet
    (AT_KLING, user_cancel(), None),  # no provider: applied to the current attempt
    (None, ev("completed"), None),  # nothing known yet: applied
])
def test_an_end_at_a_provider_the_job_left_owes_that_provider_a_release(
        before: JobState | None, event: JobEvent, owed: Release | None) -> None:
    assert stray_end(before, event) == owed
    if owed is not None:
        assert aim(before, event) is None, "only news the agent ignores"


def test_the_ending_kinds_are_those_that_end_a_job() -> None:
    ending = {kind for kind in EVENT_KINDS if apply(None, ev(kind)).became_terminal}
    assert ending == ENDING_KINDS


def test_the_request_hash_travels_from_request_to_snapshot_and_fills_a_job_a_cancel_created() -> None:
    request: dict[str, Any] = {"job_id": "j1", "tenant": "t", "user_id": "u", "model": "m",
                               "input": {"prompt": "p", "image_url": None, "params": {}}, "webhook_url": None,
                               "metadata": {}, "idempotency_key": "k", "request_hash": "c" * 64,
                               "accepted_at": 1_700_000_000_000, "source": "http", "notify": None}
    state = apply(None, queued_event(request, "sim")).state
    assert state is not None and state.request_hash == "c" * 64
    state = JobRecord.decode(JobRecord(state).encode()).state  # the jobs table's changelog form
    assert codec.decode("JobSnapshot", *codec.encode("JobSnapshot", snapshot(state)))["request_hash"] == "c" * 64
    # A cancel that overtook the request made the job without a hash: the request fills it.
    cancelled = apply(None, user_cancel()).state
    assert cancelled is not None and cancelled.request_hash is None
    assert "request_hash" not in cancelled.to_dict()  # no hash, no bytes in the changelog
    filled = apply(cancelled, queued_event(request, "sim")).state
    assert filled is not None and filled.request_hash == "c" * 64


def test_a_snapshot_written_before_request_hashes_still_decodes() -> None:
    old: dict[str, Any] = {
        "job_id": "j1", "tenant": "t", "user_id": "u", "model": "m", "provider": None, "provider_job_id": None,
        "status": "queued", "progress": 0.0, "video_url": None, "error": None, "attempt": 0,
        "created_at": 1, "updated_at": 1, "webhook_url": None, "metadata": {}, "version": 1, "push": None}
    schema = fastavro.schema.load_schema(str(SCHEMA_DIR / "history" / "job_snapshot.v2.avsc"))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, old)
    decoded = codec.decode("JobSnapshot", out.getvalue(), [(SCHEMA_HEADER, b"JobSnapshot/2")])
    assert decoded == {**old, "request_hash": None, "priority": None, "serving_model": None, "route_note": None,
                       "provider_queue_position": None, "lined_at": None}


# -- the place in the provider's own queue -----------------------------------------------------------


def placed(place: int, at: float, event_id: str | None = None, **kw: Any) -> JobEvent:
    return ev("submitted", event_id or f"q{place}@{at}", at=at, provider_job_id="sj-1", queue_position=place, **kw)


def test_a_place_in_the_providers_queue_shows_while_the_job_waits_there_and_goes_once_it_runs() -> None:
    waiting = apply(state_at(Q, provider_job_id=None), placed(4, 101.0)).state
    assert waiting is not None
    assert (waiting.status, waiting.provider_queue_position, waiting.provider_queue_at) == (S, 4, 101.0)
    assert snapshot(waiting)["provider_queue_position"] == 4
    moved = apply(waiting, placed(1, 106.0)).state
    assert moved is not None and moved.provider_queue_position == 1
    running = apply(moved, ev("running", "r", at=110.0)).state
    assert running is not None and running.status is R
    assert (running.provider_queue_position, running.provider_queue_at) == (None, None)
    assert "provider_queue_position" not in running.to_dict(), "no place, no bytes in the changelog"
    assert apply(running, placed(0, 108.0)).state == running, "a place polled before the start is old news"


def test_the_newest_word_on_the_place_wins_even_when_it_is_a_step_back() -> None:
    """fal puts requests over its limit back in line: a later poll may give a larger place."""
    s = fold([ev("queued", "q", attempt=1), placed(2, 101.0), placed(5, 105.0)])
    assert s.provider_queue_position == 5
    older = apply(s, placed(0, 103.0)).state
    assert older is not None and older.provider_queue_position == 5


def test_a_reroute_forgets_the_place_at_the_old_provider() -> None:
    s = fold([ev("queued", "q", attempt=1), placed(3, 101.0), ev("rerouted", "rr", at=102.0)])
    assert (s.provider, s.status, s.provider_queue_position) == ("kling", Q, None)


def test_a_negative_place_is_a_malformed_event() -> None:
    with pytest.raises(ValidationError) as err:
        placed(-1, 100.0)
    assert [p.field for p in err.value.problems] == ["queue_position"]


def test_a_state_with_a_place_round_trips_and_a_bad_one_is_named() -> None:
    s = fold([ev("queued", "q", attempt=1), placed(7, 101.5)])
    assert JobState.from_dict(s.to_dict()) == s
    with pytest.raises(ValidationError) as err:
        JobState.from_dict({**s.to_dict(), "provider_queue_position": "7"})
    assert [p.field for p in err.value.problems] == ["provider_queue_position"]


@st.composite
def waiting_history(draw: st.DrawFn) -> list[JobEvent]:
    """A job submitted to sora that waits in sora's queue: polls at times that may repeat, maybe a start."""
    events = [ev("queued", "q", attempt=1, at=0.0)]
    for i, (at, place) in enumerate(draw(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 9)), max_size=6))):
        events.append(placed(place, float(at), event_id=f"p{i}"))
    if draw(st.booleans()):
        events.append(ev("running", "r", at=float(draw(st.integers(1, 7)))))
    return events


@given(history=waiting_history(), data=st.data())
def test_the_place_converges_whatever_order_the_polls_arrive_in(history: list[JobEvent], data: st.DataObject) -> None:
    def facts(s: JobState) -> dict[str, Any]:
        # updated_at is when the job last changed, and news that changes nothing (a poll older than
        # the start) does not count: unlike the histories above, these need not end with the news
        # that has the latest time, so it may differ by arrival order.
        return {k: v for k, v in semantic(s).items() if k != "updated_at"}

    expected = fold(history)
    assert facts(fold(list(data.draw(st.permutations(history))))) == facts(expected)
    if expected.status is R:
        assert expected.provider_queue_position is None
    elif len(history) > 1:
        newest = max((e.at, -(e.queue_position or 0)) for e in history[1:])
        assert (expected.provider_queue_at, expected.provider_queue_position) == (newest[0], -newest[1])


# -- the provider jobs of attempts the job left ----------------------------------------------------


def test_a_job_remembers_the_provider_job_of_an_attempt_it_left_in_whatever_order_it_learns_it() -> None:
    moved = apply(state_at(R), ev("rerouted")).state  # sora's sj-1 (attempt 1), then kling
    assert moved is not None and moved.left_jobs == (LeftJob(1, "sora", "sj-1"),)
    unknown = apply(state_at(Q, provider_job_id=None), ev("rerouted")).state
    assert unknown is not None and unknown.left_jobs == ()
    late = apply(unknown, ev("running", "late", provider_job_id="sj-1")).state  # sora's word of attempt 1
    assert late is not None and late.left_jobs == moved.left_jobs
    webhook = ev("running", "wh:sora:1", attempt=0, provider_job_id="sj-0")  # names no attempt: not one it left
    assert apply(unknown, webhook).state == unknown


def test_the_transition_names_the_event_that_ended_the_job() -> None:
    done = ev("completed")
    assert apply(state_at(R), done).ended_by == done
    assert apply(state_at(R), ev("progress")).ended_by is None
    assert apply(state_at(C), ev("failed")).ended_by is None, "it had ended already"


def test_left_jobs_round_trip_and_a_moved_job_written_before_them_keeps_that_versions_reading() -> None:
    moved = apply(state_at(R), ev("rerouted")).state
    assert moved is not None
    assert moved.to_dict()["left_jobs"] == [{"attempt": 1, "provider": "sora", "provider_job_id": "sj-1"}]
    learned_none = apply(state_at(Q, provider_job_id=None), ev("rerouted")).state
    assert learned_none is not None and learned_none.to_dict()["left_jobs"] == []
    for state in (moved, learned_none):
        assert JobState.from_dict(state.to_dict()) == state
        assert JobRecord.decode(JobRecord(state, "e").encode()).state == state
    # The previous version wrote a moved job without the field: which jobs it left is unknown, and
    # stays so (its record is rewritten as that version wrote it), after a later move too.
    old_doc = {k: v for k, v in learned_none.to_dict().items() if k != "left_jobs"}
    old = JobState.from_dict(old_doc)
    assert old.left_jobs is None and old.to_dict() == old_doc
    again = apply(old, ev("rerouted", "rr3", attempt=3, provider="veo")).state
    assert again is not None and again.left_jobs is None and "left_jobs" not in again.to_dict()
    # A job that never moved writes no such field, and reads back as one that left nothing.
    assert "left_jobs" not in state_at(R).to_dict() and JobState.from_dict(state_at(R).to_dict()).left_jobs == ()


@pytest.mark.parametrize("bad", [
    "x", ["x"], [{"attempt": 1, "provider": "sora"}], [{"attempt": -1, "provider": "sora", "provider_job_id": "p"}],
    [{"attempt": 1, "provider": "", "provider_job_id": "p"}], [{"attempt": 1, "provider": "s", "provider_job_id": 7}],
    [{"attempt": 1, "provider": "s", "provider_job_id": "p", "odd": 1}],
])
def test_a_bad_left_job_is_named(bad: Any) -> None:
    doc = {**state_at(R).to_dict(), "moved_from": ["veo"], "left_jobs": bad}
    with pytest.raises(ValidationError) as err:
        JobState.from_dict(doc)
    assert [p.field for p in err.value.problems] == ["left_jobs"]


def test_the_left_jobs_of_the_latest_attempts_are_kept() -> None:
    events = [ev("queued", "q", attempt=0, provider="sora")]
    for attempt in range(LEFT_JOBS_LIMIT + 4):
        provider = PROVIDERS[attempt % len(PROVIDERS)]
        events += [ev("rerouted", f"r{attempt}", attempt=attempt, provider=provider)] if attempt else []
        events.append(ev("running", f"run{attempt}", attempt=attempt, provider=provider,
                         provider_job_id=f"{provider}-{attempt}"))
    in_order, backwards = fold(events), fold([events[0], *reversed(events[1:])])
    assert [job.attempt for job in in_order.left_jobs or ()] == list(range(3, LEFT_JOBS_LIMIT + 3))
    assert backwards.left_jobs == in_order.left_jobs
