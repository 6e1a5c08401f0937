"""What a followed job's status answers tell, and how long it is followed (floodgate.following)."""
from __future__ import annotations

import pytest

from floodgate.following import PROGRESS_STEP, Word, followed, is_news, keep_following, late_look_due


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
