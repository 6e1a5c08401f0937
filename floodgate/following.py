"""Which status answers about a followed job are news, and how long a job is followed. Pure.

Some providers say little by themselves: fal keeps accepted jobs waiting in a queue of its own and
calls back only when a job ends; Runway has no webhooks at all. The dispatcher asks such a provider
for the status of each job it holds, every ``FLOODGATE_PROVIDER_STATUS_POLL`` seconds
(``streams.dispatcher``). Any answer could become an event, and an event costs two Kafka records
(the event and the job's state change), so only news is told:

* the first word about a job's attempt, and any change of its state;
* a new place in the provider's queue;
* progress that rose by ``PROGRESS_STEP`` since the last word told (some providers report it in
  small steps; a progress bar shows no finer).

A job is followed while it waits in the provider's queue, at a provider that tells the place there
or tells nothing else, and while it runs at a provider that never calls back; never once it ended.
"""
from __future__ import annotations

from dataclasses import dataclass

PROGRESS_STEP = 0.05


@dataclass(frozen=True)
class Word:
    """What one status answer said about a job's attempt: the part that decides whether it is news."""

    attempt: int
    state: str
    """The connector's state: queued, running, completed, failed or cancelled."""
    place: int | None = None
    """Jobs ahead of it in the provider's own queue, when the provider says."""
    progress: float | None = None


def is_news(last: Word | None, word: Word) -> bool:
    """Whether ``word`` tells more than ``last``, the last word told about the job (None: none yet)."""
    if last is None or (last.attempt, last.state, last.place) != (word.attempt, word.state, word.place):
        return True
    return word.progress is not None and word.progress >= (last.progress or 0.0) + PROGRESS_STEP


def keep_following(word: Word, *, places: bool, to_the_end: bool) -> bool:
    """Whether to ask about the job again after ``word``. ``places``: the provider tells a waiting
    job's place (and nothing until the end); ``to_the_end``: it never calls back at all."""
    if word.state == "queued":
        return places or to_the_end
    return to_the_end and word.state == "running"
