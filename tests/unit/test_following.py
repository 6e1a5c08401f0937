"""What a followed job's status answers tell, and how long it is followed (floodgate.following)."""
from __future__ import annotations

import pytest

from floodgate.following import (
    PROGRESS_STEP,
    StatusQueue,
    Word,
    callbacks_heard,
    followed,
    followed_every,
    is_news,
    keep_following,
    late_look_due,
    late_poll_every,
    read_budget,
)
from floodgate.throttle import TokenBucket


def test_the_first_word_and_every_change_of_state_or_place_is_news() -> None:
    assert is_news(None, Word(0, "queued"))
    assert not is_news(Word(0, "queued", 3), Word(0, "queued", 3))
    assert is_news(Word(0, "queued", 3), Word(0, "queued", 2))
    assert is_news(Word(0, "queued", 2), Word(0, "queued", 3)), "a place may grow: it is news too"
    assert is_news(Word(0, "queued", 0), Word(0, "running"))
    assert is_news(Word(0, "running", None, 0.9), Word(0, "completed", None, 1.0))
    assert is_news(Word(0, "queued", 1), Word(1, "queued", 1)), "another attempt is another job"


def test_an_end_is_news_every_time_it_is_heard() -> None:
    """Hearing it again means the word was lost on its way: the end frees the job's slot."""
    for end in ("completed", "failed", "cancelled"):
        assert is_news(Word(0, end, None, 1.0), Word(0, end, None, 1.0))


def test_progress_is_news_only_in_steps() -> None:
    told = Word(0, "running", None, 0.40)
    assert not is_news(told, Word(0, "running", None, 0.40 + PROGRESS_STEP / 2))
    assert is_news(told, Word(0, "running", None, 0.40 + PROGRESS_STEP))
    assert not is_news(told, Word(0, "running", None, None))
    assert is_news(Word(0, "running"), Word(0, "running", None, PROGRESS_STEP)), "no progress yet counts as 0"


@pytest.mark.parametrize(("state", "callbacks", "again"), [
    ("queued", "end", True),  # fal, RunPod, WaveSpeed: until it starts
    ("running", "end", False),  # its end comes by webhook
    ("queued", "none", True),  # Runway: to the end
    ("running", "none", True),
    ("completed", "none", False),
    ("failed", "end", False),
    ("queued", "all", False),  # a provider that tells every change: the late poll only
])
def test_how_long_a_job_is_followed(state: str, callbacks: str, again: bool) -> None:
    assert keep_following(Word(0, state), callbacks) is again


def test_only_jobs_at_providers_that_say_little_are_followed_and_a_wrong_value_is_refused() -> None:
    assert [followed(c) for c in ("all", "end", "none")] == [False, True, True]
    with pytest.raises(ValueError, match="callbacks must be one of"):
        followed("sometimes")


def asked_at(render: float, first: float, every: float) -> list[float]:
    """When the late poll, a round every ``every`` seconds, asks about a job quiet for ``render`` seconds."""
    asked: list[float] = []
    for tick in range(int(render / every) + 1):
        quiet = tick * every
        if late_look_due(quiet, len(asked), first, every):
            asked.append(quiet)
    return asked


def test_the_late_poll_asks_about_a_quiet_job_less_and_less_often_up_to_every_poll_after() -> None:
    assert asked_at(180, 30, 10) == [30, 40, 60, 90, 120, 150, 180], "7 calls for a 3-minute render, not 16"
    assert asked_at(29, 30, 10) == [], "a job is quiet for poll_after before it is asked about"
    gaps = [b - a for a, b in zip(asked_at(600, 30, 10)[1:], asked_at(600, 30, 10)[2:], strict=False)]
    assert max(gaps) == 30, "a lost webhook's end is found at most poll_after late"
    assert asked_at(5, 1, 1) == [1, 2, 3, 4, 5], "a poll_after of one round asks every round"


# -- StatusQueue: whose status call is made when ----------------------------------------------------


def test_without_a_budget_every_call_due_is_made_at_once_in_the_order_offered() -> None:
    calls: StatusQueue[str] = StatusQueue()
    for key in ("a", "b", "c", "a"):
        calls.offer(key, 0)
    assert calls.take(0.0) == [("a", 0), ("b", 0), ("c", 0)], "a job offered again keeps its one place"
    assert calls.take(0.0) == [] and len(calls) == 0


def test_a_budget_spreads_the_calls_and_a_job_offered_again_keeps_its_place() -> None:
    calls: StatusQueue[str] = StatusQueue({0: TokenBucket(2.0, 2.0)})
    for key in "abcdef":
        calls.offer(key, 0)
    assert [k for k, _ in calls.take(10.0)] == ["a", "b"]
    assert calls.take(10.4) == [], "not a whole call's worth of budget yet"
    for key in "abcdef":  # the next round finds them all due again
        calls.offer(key, 0)
    assert [k for k, _ in calls.take(11.0)] == ["c", "d"], "those waiting go before those asked"
    assert [k for k, _ in calls.take(12.0)] == ["e", "f"]
    assert [k for k, _ in calls.take(13.0)] == ["a", "b"]


def test_each_partition_spends_its_own_share() -> None:
    """A partition belongs to one worker at a time: its share is its own, and one partition
    whose share is spent does not hold up another's calls queued behind them."""
    calls: StatusQueue[str] = StatusQueue({0: TokenBucket(1.0), 1: TokenBucket(1.0)})
    for key, partition in (("a", 0), ("b", 0), ("c", 0), ("x", 1), ("y", 1)):
        calls.offer(key, partition)
    assert calls.take(5.0) == [("a", 0), ("x", 1)]
    assert calls.take(6.0) == [("b", 0), ("y", 1)]
    assert calls.take(7.0) == [("c", 0)]


def test_reads_beyond_the_call_paid_for_are_paid_in_advance_from_the_same_share() -> None:
    calls: StatusQueue[str] = StatusQueue({0: TokenBucket(1.0), 1: TokenBucket(1.0)})
    for key, partition in (("a", 0), ("b", 0), ("x", 1), ("y", 1)):
        calls.offer(key, partition)
    assert calls.take(5.0) == [("a", 0), ("x", 1)]
    calls.charge(0, 1, 5.0)  # a's answer took two reads
    assert calls.take(6.0) == [("y", 1)], "partition 0's next second went to a's second read"
    assert calls.take(7.0) == [("b", 0)]
    StatusQueue[str]().charge(0, 3, 5.0)  # without a budget there is nothing to pay


def test_a_refusal_stops_every_call_until_its_retry_after_and_the_unasked_go_first() -> None:
    calls: StatusQueue[str] = StatusQueue()
    for key in "abcd":
        calls.offer(key, 0)
    taken = calls.take(0.0)
    calls.refused(5.0, taken[2:])  # c refused, d never asked
    calls.offer("e", 0)
    assert calls.take(4.9) == [], "nothing before the Retry-After"
    assert [k for k, _ in calls.take(5.0)] == ["c", "d", "e"]
    calls.refused(8.0, [])
    calls.refused(7.0, [])
    assert calls.paused_until == 8.0, "a shorter Retry-After never shortens the pause"


def test_a_job_no_longer_due_is_dropped() -> None:
    calls: StatusQueue[str] = StatusQueue()
    calls.offer("a", 0)
    calls.offer("b", 0)
    calls.discard("a")
    calls.discard("ghost")
    assert "a" not in calls and calls.keys() == ["b"]


def test_how_often_a_job_in_flight_is_asked_about_at_most() -> None:
    assert late_poll_every(30.0) == 10.0 and late_poll_every(1.0) == 1.0 and late_poll_every(600.0) == 10.0
    assert followed_every("end", 5.0, True, 30.0) == 5.0, "followed: every status poll"
    assert followed_every("none", 5.0, False, 30.0) == 5.0
    assert followed_every("all", 5.0, False, 30.0) == 5.0, "no webhook can reach us: every job is followed"
    assert followed_every("all", 0.0, False, 30.0) == 10.0, "following off: the late poll asks every round"
    assert followed_every("all", 5.0, True, 30.0) is None, "webhooks tell every change: only quiet jobs"


def test_what_reaches_us_and_the_read_budget_a_provider_gets() -> None:
    class Documented:
        status_rate_per_second = 50.0

    assert callbacks_heard("end", True) == "end" and callbacks_heard("all", False) == "none"
    assert read_budget(None, Documented()) == 50.0, "the connector's documented limit"
    assert read_budget(5.0, Documented()) == 5.0, "the routing file's wins"
    assert read_budget(None, object()) is None, "no budget"
