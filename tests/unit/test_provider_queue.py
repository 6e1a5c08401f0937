"""How fast a provider's own queue moves, from our jobs' places in it, and how long its runs take."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.pace import estimated_wait
from floodgate.provider_queue import MAX_AGE, ProviderQueue
from floodgate.queueboard import QueueBoard, Standing

T0 = 1_800_000_000.0


def enter(q: ProviderQueue, places: dict[str, int], at: float) -> None:
    """Each job enters ``q`` a place behind, and makes its first move (which does not count) at ``at``."""
    for job, place in places.items():
        q.observe(job, "submitted", place + 1, at - 0.5)
        q.observe(job, "submitted", place, at)


def test_the_queues_pace_is_the_places_its_jobs_moved_over_the_time_it_took() -> None:
    q = ProviderQueue()
    enter(q, {"a": 4, "b": 5}, T0)
    assert q.rate(T0 + 1) is None  # no move counted yet
    q.observe("a", "submitted", 2, T0 + 4)  # two places in four seconds
    assert q.rate(T0 + 4) is None  # one move may be a jump after a pause: not enough
    q.observe("b", "submitted", 3, T0 + 4)
    assert q.rate(T0 + 4) == pytest.approx(0.5)
    # "a" at place 2 since T0 + 4: two places ahead at two seconds each, and one second of its
    # current move's two left.
    assert q.wait("a", 2, T0 + 5) == pytest.approx(2 * 2 + 1)


def test_a_jobs_first_move_is_the_rest_of_a_move_and_does_not_count() -> None:
    # One runner, busy: 1.3 s a render. Four jobs are submitted at T0; the runner was idle and
    # picks up "a" 20 ms later, so "b", "c" and "d" move up a place at once, and a status call
    # made in those milliseconds saw their places before and after.
    q = ProviderQueue()
    for job, place in (("a", 0), ("b", 1), ("c", 2), ("d", 3)):
        q.observe(job, "submitted", place, T0)
    q.observe("a", "running", None, T0 + 0.02)
    for job, place in (("b", 0), ("c", 1), ("d", 2)):
        q.observe(job, "submitted", place, T0 + 0.2)
    assert not q.moves and q.rate(T0 + 0.2) is None, "four places in no time: no pace of the queue's"
    # The first render ends: each job moves a place, a whole move of the queue's this time.
    q.observe("b", "running", None, T0 + 1.4)
    for job, place in (("c", 0), ("d", 1)):
        q.observe(job, "submitted", place, T0 + 1.4)
    assert q.rate(T0 + 1.4) == pytest.approx(1 / 1.2)  # (from the calls that saw them: 1.2 s)
    # Counted, the pickup's moves made it twice as fast: "d" would have been told about 1.2 s
    # for a start 2.6 s away; it is told 2.4 (a place ahead and a whole move, each 1.2 s).
    assert q.wait("d", 1, T0 + 1.4) == pytest.approx(2.4)
    # A job that enters and runs from its first place moved only the rest of a move too.
    q.observe("e", "submitted", 0, T0 + 2)
    q.observe("e", "running", None, T0 + 2.1)
    assert len(q.moves) == 3 and not q.entered.intersection("abe")


def test_running_counts_as_the_move_from_its_place_to_the_front_and_out() -> None:
    q = ProviderQueue()
    enter(q, {"a": 0, "b": 1}, T0)
    q.observe("a", "running", None, T0 + 2)  # one place (0 → out) in 2 s
    q.observe("b", "submitted", 0, T0 + 2)  # one place in 2 s
    assert q.rate(T0 + 2) == pytest.approx(0.5)
    assert q.running_since("a") == T0 + 2


def test_a_place_that_grew_counts_as_time_without_a_move() -> None:
    q = ProviderQueue()
    enter(q, {"a": 3}, T0)
    q.observe("a", "submitted", 1, T0 + 2)  # two places in 2 s
    q.observe("a", "submitted", 4, T0 + 4)  # put back in line: 2 s, no place gained
    q.observe("a", "submitted", 2, T0 + 6)  # two places in 2 s
    assert q.rate(T0 + 6) == pytest.approx(4 / 6)


def test_old_news_and_the_same_place_told_again_change_nothing() -> None:
    q = ProviderQueue()
    q.observe("a", "submitted", 5, T0 + 10)
    q.observe("a", "submitted", 7, T0 + 5)  # older than what we hold
    q.observe("a", "submitted", 5, T0 + 12)  # the same place: it has been there since T0 + 10
    assert q.places["a"] == (5, T0 + 10) and not q.moves


def test_a_stalled_queue_slows_the_estimate_down() -> None:
    q = ProviderQueue()
    enter(q, {"a": 1, "b": 2, "c": 3}, T0)
    for job, place in (("a", 0), ("b", 1), ("c", 2)):
        q.observe(job, "submitted", place, T0 + 1)  # a place a second
    assert q.rate(T0 + 1.5) == pytest.approx(1.0)
    # Then nothing moves: 60 s later the pace is no longer a place a second.
    assert q.rate(T0 + 61) == pytest.approx(3 / (3 + 59))
    wait = q.wait("c", 2, T0 + 61)
    assert wait is not None and wait > 2 * 3  # far longer than the old pace's three seconds


def test_moves_older_than_the_window_say_nothing() -> None:
    q = ProviderQueue()
    enter(q, {"a": 2}, T0)
    q.observe("a", "submitted", 1, T0 + 1)
    q.observe("a", "running", None, T0 + 2)
    assert q.rate(T0 + 2) is not None
    assert q.rate(T0 + 2 + MAX_AGE + 1) is None


def test_run_times_count_from_the_running_word_to_the_completion() -> None:
    q = ProviderQueue()
    for job, ran_at, done_at in (("a", 10, 40), ("b", 12, 32), ("c", 15, 65)):
        q.observe(job, "submitted", 0, T0)
        q.observe(job, "running", None, T0 + ran_at)
        q.observe(job, "running", None, T0 + ran_at + 5)  # told again: it runs since the first word
        q.observe(job, "completed", None, T0 + done_at)
    assert q.run_time() == pytest.approx(30)
    q.observe("d", "running", None, T0 + 70)
    q.observe("d", "failed", None, T0 + 80)  # a failure says nothing of how long a render takes
    assert list(q.runs) == [30, 20, 50] and not q.running and not q.places
    assert q.run_time() == pytest.approx(30)
    q.observe("e", "running", None, T0 + 80)
    q.observe("e", "completed", None, T0 + 140)
    assert q.run_time() == pytest.approx(40), "the median follows a new run"


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["submitted", "running", "completed", "failed"]),
                          st.one_of(st.none(), st.integers(0, 50)), st.floats(0, 2000)), max_size=60),
       st.floats(0, 3000))
def test_estimates_are_never_negative_and_the_sums_match_the_moves_kept(
        words: list[tuple[str, str, int | None, float]], later: float) -> None:
    q = ProviderQueue()
    for job, status, place, at in words:
        q.observe(job, status, place, T0 + at)
    rate = q.rate(T0 + later)
    assert rate is None or rate > 0
    assert q._places_moved == sum(p for _, p, _ in q.moves)
    assert q._seconds == pytest.approx(sum(s for _, _, s in q.moves))
    assert q._earliest() == min((since for _, since in q.places.values()), default=None)
    for job, (place, _) in q.places.items():
        wait = q.wait(job, place, T0 + later)
        assert wait is None or wait >= 0


def snap(job_id: str, status: str, *, provider: str = "fal", place: int | None = None,
         updated: float = 0.0) -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "provider": provider, "tenant": "a", "created_at": int(T0 * 1000),
            "updated_at": int((T0 + updated) * 1000), "provider_queue_position": place}


def fal_board(**kw: Any) -> QueueBoard:
    """fal's queue moving a place every 3 s, a render of 10 s seen; "c" at place 0 since T0 + 16,
    "b" running since then."""
    b = QueueBoard({"fal": 4}, **kw)
    for job in "xabc":  # in Floodgate's line first: the board sees them arrive at fal's queue
        b.observe(snap(job, "queued"), T0)
    b.observe(snap("x", "submitted", place=0), T0)
    b.observe(snap("x", "running", updated=3), T0 + 3)
    b.observe(snap("x", "completed", updated=13), T0 + 13)  # ran 10 s
    for job, place in (("a", 0), ("b", 1), ("c", 2)):
        b.observe(snap(job, "submitted", place=place, updated=10), T0 + 10)
    # Their first moves (the rest of the move under way when they entered) do not count ...
    b.observe(snap("a", "running", updated=13), T0 + 13)
    b.observe(snap("b", "submitted", place=0, updated=13), T0 + 13)
    b.observe(snap("c", "submitted", place=1, updated=13), T0 + 13)
    # ... the next ones do: the queue moves a place every 3 s.
    b.observe(snap("b", "running", updated=16), T0 + 16)
    b.observe(snap("c", "submitted", place=0, updated=16), T0 + 16)
    return b


def test_the_board_gives_a_job_in_the_providers_queue_an_eta_to_its_start_and_to_its_video() -> None:
    b = fal_board()
    c = b.standing(snap("c", "submitted", place=0, updated=16), T0 + 17)
    assert c.queue_position is None  # not in Floodgate's line: its place is the provider's
    # Two seconds left of its current move of 3 s; then a 10-s run.
    assert c.eta_seconds == pytest.approx(2) and c.eta_ready_seconds == pytest.approx(2 + 10)
    running = b.standing(snap("b", "running", updated=16), T0 + 20)
    assert (running.queue_position, running.eta_seconds) == (None, None)
    assert running.eta_ready_seconds == pytest.approx(10 - 4)


def test_a_job_still_in_our_line_adds_the_wait_a_job_submitted_now_meets_in_the_providers_queue() -> None:
    b = fal_board(configured_render={"fal": 20.0})
    b.observe(snap("q", "queued", updated=17), T0 + 17)
    q = b.standing(snap("q", "queued", updated=17), T0 + 17)
    ours = estimated_wait(0, b.start_rate("fal", T0 + 17))  # next in our line
    assert ours is not None and ours > 0
    # Then fal's queue: its jobs entered at place 0 (median), a move of 3 s; then the 10-s run.
    assert q.queue_position == 0
    assert q.eta_seconds == pytest.approx(ours + 3, abs=0.06)
    assert q.eta_ready_seconds == pytest.approx(ours + 3 + 10, abs=0.06)


def test_the_wait_a_job_submitted_now_meets_is_where_the_recent_ones_entered_at_the_pace() -> None:
    q = ProviderQueue()
    assert q.entry_wait(T0) is None
    for job in "abc":
        q.arrive(job)
    q.observe("a", "running", None, T0)  # ran at once: it met no wait
    assert q.entry_wait(T0) == 0.0
    for job, place in (("b", 3), ("c", 4)):
        q.observe(job, "submitted", place, T0)
    assert q.entry_wait(T0 + 1) is None, "jobs had to wait, at a pace not seen yet"
    q.observe("b", "submitted", 2, T0 + 1)
    q.observe("c", "submitted", 3, T0 + 1)  # (first moves: they do not count)
    q.observe("b", "submitted", 1, T0 + 3)
    q.observe("c", "submitted", 2, T0 + 3)  # half a place a second
    assert list(q.entries) == [-1, 3, 4] and q.entry_wait(T0 + 3) == pytest.approx((3 + 1) / 0.5)


def test_only_jobs_seen_arriving_tell_where_a_job_enters_the_queue() -> None:
    # An API catching up after a restart meets each job at its latest word: "m" halfway up fal's
    # queue, "r" already running. Neither says where a job submitted now enters it.
    b = QueueBoard({"fal": 4})
    b.observe(snap("m", "submitted", place=2), T0)
    b.observe(snap("r", "running"), T0)
    own = b._own["fal"]
    assert not own.entries and own.entry_wait(T0) is None
    # Jobs seen leaving Floodgate's line do: at their first place, or running at once.
    for job in ("e", "f"):
        b.observe(snap(job, "queued", updated=1), T0 + 1)
    b.observe(snap("e", "submitted", updated=2), T0 + 2)  # submitted, its place not told yet
    b.observe(snap("e", "submitted", place=6, updated=3), T0 + 3)
    b.observe(snap("e", "submitted", place=5, updated=4), T0 + 4)  # a move, not an entry
    b.observe(snap("f", "running", updated=4), T0 + 4)
    assert list(own.entries) == [6, -1] and not own.arriving
    # A job seen arriving that ends or leaves before any word from the queue counts for nothing.
    b.observe(snap("g", "queued", updated=5), T0 + 5)
    b.observe(snap("g", "submitted", updated=6), T0 + 6)
    b.observe(snap("g", "cancelled", updated=7), T0 + 7)
    assert list(own.entries) == [6, -1] and not own.arriving


def test_a_jobs_first_place_counts_from_its_submission_not_from_the_call_that_told_it() -> None:
    # fal's queue moves a place every 3 s, as "p" showed. The job "a" is submitted at T0; a busy
    # worker's first status call tells its place (2) only at T0 + 2.5.
    q = ProviderQueue()
    enter(q, {"p": 8}, T0 - 6)
    q.observe("p", "submitted", 7, T0 - 3)
    q.observe("p", "submitted", 6, T0)
    q.observe("a", "submitted", None, T0)
    q.observe("a", "submitted", 2, T0 + 2.5)
    assert q.places["a"] == (2, T0) and not q.submitted
    # Two places ahead, and half a second left of its move (not all three seconds of one).
    assert q.wait("a", 2, T0 + 2.5) == pytest.approx(2 * 3 + 0.5)
    # A job whose first word is its place (the call came at once) keeps that word's time.
    q.observe("b", "submitted", 4, T0 + 3)
    assert q.places["b"] == (4, T0 + 3)
    # A job that runs, ends or leaves before its first place is told leaves nothing behind.
    for job, then in (("c", "running"), ("d", "completed"), ("e", "cancelled")):
        q.observe(job, "submitted", None, T0 + 7)
        q.observe(job, then, None, T0 + 8)
    assert not q.submitted


def test_jobs_that_left_our_line_before_the_provider_was_seen_keeping_a_queue_count_too() -> None:
    # The first jobs after a start leave Floodgate's line for fal before any word of a place
    # there: the board holds no queue for fal yet when they do.
    b = QueueBoard({"fal": 4})
    for job in "abcd":
        b.observe(snap(job, "queued"), T0)
    b.observe(snap("a", "running", updated=1), T0 + 1)  # ran at once
    b.observe(snap("d", "completed", updated=1), T0 + 1)  # gone before the queue is known: nothing
    for job in "bc":
        b.observe(snap(job, "submitted", updated=1), T0 + 1)  # no place told yet
    assert "fal" not in b._own
    b.observe(snap("b", "submitted", place=3, updated=2), T0 + 2)  # the first place: the queue is made
    own = b._own["fal"]
    b.observe(snap("c", "submitted", place=4, updated=2), T0 + 2)
    b.observe(snap("a", "running", updated=3), T0 + 3)  # running still: it ran without a wait
    b.observe(snap("b", "submitted", place=2, updated=4), T0 + 4)  # a move, not an entry
    assert sorted(own.entries) == [-1, 3, 4] and not own.arriving


def test_the_first_jobs_after_a_start_count_their_first_place_from_their_submission_too() -> None:
    # fal runs one job at a time, 1.3 s each. The first jobs after a start are submitted at T0,
    # before the board knows fal keeps a queue; a busy worker's first status call tells their
    # places only at T0 + 1, and the first render ends at T0 + 1.3.
    b = QueueBoard({"fal": 4})
    for job in "abcd":
        b.observe(snap(job, "queued"), T0)
        b.observe(snap(job, "submitted"), T0)  # no place told yet
    for job, place in (("b", 0), ("c", 1), ("d", 2)):
        b.observe(snap(job, "submitted", place=place, updated=1), T0 + 1)
    own = b._own["fal"]
    # They have held their first places since their submission, not since the late call.
    assert [own.places[job] for job in "bcd"] == [(0, T0), (1, T0), (2, T0)]
    b.observe(snap("b", "running", updated=1.3), T0 + 1.3)
    for job, place in (("c", 0), ("d", 1)):
        b.observe(snap(job, "submitted", place=place, updated=1.3), T0 + 1.3)
    assert own.rate(T0 + 1.3) is None  # (first moves: the rest of the render under way)
    b.observe(snap("c", "running", updated=2.6), T0 + 2.6)
    b.observe(snap("d", "submitted", place=0, updated=2.6), T0 + 2.6)
    assert own.rate(T0 + 2.6) == pytest.approx(1 / 1.3)
    d = b.standing(snap("d", "submitted", place=0, updated=2.6), T0 + 2.6)
    assert d.eta_seconds == pytest.approx(1.3, abs=0.06)


def test_without_a_pace_or_at_a_provider_without_a_queue_the_general_rule_holds() -> None:
    b = QueueBoard({"fal": 4, "kling": 4}, configured_render={"fal": 30.0, "kling": 20.0})
    b.observe(snap("a", "submitted", place=3), T0)
    assert b.standing(snap("a", "submitted", place=3), T0 + 1) == Standing(None, None, 30.0)
    b.observe(snap("k", "queued", provider="kling"), T0)
    b.observe(snap("k", "submitted", provider="kling"), T0)
    assert b.standing(snap("k", "submitted", provider="kling"), T0 + 5) == Standing(None, None, 15.0)


def test_a_job_rerouted_elsewhere_leaves_the_providers_queue() -> None:
    b = QueueBoard({"fal": 4, "wan": 4})
    b.observe(snap("a", "submitted", place=3), T0)
    b.observe(snap("a", "queued", provider="wan", updated=5), T0 + 5)
    b.observe(snap("b", "submitted", place=2), T0)
    own = b._own["fal"]
    assert "a" not in own.places and "b" in own.places
    b.observe(snap("b", "submitted", provider="wan", updated=6), T0 + 6)
    assert not own.places
