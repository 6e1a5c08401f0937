"""What a followed job's status answers tell, and how long it is followed (floodgate.following)."""
from __future__ import annotations

import pytest

from floodgate.following import PROGRESS_STEP, Word, is_news, keep_following


def test_the_first_word_and_every_change_of_state_or_place_is_news() -> None:
    assert is_news(None, Word(0, "queued"))
    assert not is_news(Word(0, "queued", 3), Word(0, "queued", 3))
    assert is_news(Word(0, "queued", 3), Word(0, "queued", 2))
    assert is_news(Word(0, "queued", 2), Word(0, "queued", 3)), "a place may grow: it is news too"
    assert is_news(Word(0, "queued", 0), Word(0, "running"))
    assert is_news(Word(0, "running", None, 0.9), Word(0, "completed", None, 1.0))
    assert is_news(Word(0, "queued", 1), Word(1, "queued", 1)), "another attempt is another job"


def test_progress_is_news_only_in_steps() -> None:
    told = Word(0, "running", None, 0.40)
    assert not is_news(told, Word(0, "running", None, 0.40 + PROGRESS_STEP / 2))
    assert is_news(told, Word(0, "running", None, 0.40 + PROGRESS_STEP))
    assert not is_news(told, Word(0, "running", None, None))
    assert is_news(Word(0, "running"), Word(0, "running", None, PROGRESS_STEP)), "no progress yet counts as 0"


@pytest.mark.parametrize(("state", "places", "to_the_end", "followed"), [
    ("queued", True, False, True),  # fal: while it waits
    ("running", True, False, False),  # fal calls back at the end
    ("queued", False, True, True),  # Runway: to the end
    ("running", False, True, True),
    ("completed", False, True, False),
    ("failed", True, True, False),
    ("queued", False, False, False),  # a provider that calls back: the late poll only
])
def test_how_long_a_job_is_followed(state: str, places: bool, to_the_end: bool, followed: bool) -> None:
    assert keep_following(Word(0, state), places=places, to_the_end=to_the_end) is followed
