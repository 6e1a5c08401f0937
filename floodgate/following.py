"""Which status answers about a followed job are news, and how long a job is followed. Pure.

Some providers say little by themselves: fal, RunPod and WaveSpeed call back only when a job ends
(and fal keeps accepted jobs waiting in a queue of its own, telling the place only when asked);
Runway has no webhooks at all. The dispatcher asks such a provider for the status of each job it
holds, every ``FLOODGATE_PROVIDER_STATUS_POLL`` seconds (``streams.dispatcher``). Any answer could
become an event, and an event costs two Kafka records (the event and the job's state change), so
only news is told:

* the first word about a job's attempt, and any change of its state;
* a job's end, every time it is heard: until its slot is freed, which that end causes, hearing
  it again means the word was lost on its way (a send that never landed);
* a new place in the provider's queue;
* progress that rose by ``PROGRESS_STEP`` since the last word told (some providers report it in
  small steps; a progress bar shows no finer).

The same rule keeps the late poll (``FLOODGATE_POLL_AFTER``, for lost webhooks) from telling that
a long render is still running every ten seconds. And where webhooks are on, the late poll asks
less and less often about a job that stays quiet (``late_look_due``): a lost webhook is rare,
and every job of a long render would otherwise cost a status call every tick. A provider's read
limits are its own (Replicate: 3,000 a minute beside creation's 600), and at a tier of thousands
of slots with renders of minutes, a call per job every ten seconds is hundreds a second.

How long a job is followed depends on what its provider's webhooks tell (the connector's
``callbacks``): ``"end"``, until it starts (its end comes by webhook); ``"none"``, until it ends;
``"all"`` (the default: every change comes by webhook), not at all.
"""
from __future__ import annotations

from dataclasses import dataclass

PROGRESS_STEP = 0.05
ENDS = frozenset({"completed", "failed", "cancelled"})
CALLBACKS = ("all", "end", "none")
"""What a provider's webhooks tell: every change, only the end, nothing."""


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
    if last is None or word.state in ENDS:
        return True
    if (last.attempt, last.state, last.place) != (word.attempt, word.state, word.place):
        return True
    return word.progress is not None and word.progress >= (last.progress or 0.0) + PROGRESS_STEP


def followed(callbacks: str) -> bool:
    """Whether jobs at a provider whose webhooks tell ``callbacks`` are followed at all. Raises
    ``ValueError`` for a value not in ``CALLBACKS`` (a connector's mistake, found at start)."""
    if callbacks not in CALLBACKS:
        raise ValueError(f"callbacks must be one of {', '.join(CALLBACKS)}, not {callbacks!r}")
    return callbacks != "all"


def keep_following(word: Word, callbacks: str) -> bool:
    """Whether to ask about the job again after ``word``, at a provider whose webhooks tell
    ``callbacks``."""
    if word.state == "queued":
        return followed(callbacks)
    return callbacks == "none" and word.state == "running"


def late_look_due(quiet: float, looks: int, first: float, every: float) -> bool:
    """Whether the late poll should ask about a job whose slot was taken ``quiet`` seconds ago and
    which it has asked about ``looks`` times since: first at ``first`` seconds, then after gaps of
    ``every`` seconds that double up to ``first`` (a 3-minute render with the defaults, 30 s and
    10 s: asked at 30, 40, 60, 90, 120, 150 and 180 s, 7 calls instead of 16; a lost webhook's
    end is found at most ``first`` seconds late)."""
    due, gap, longest = first, every, max(first, every)
    for _ in range(looks):
        due += gap
        gap = min(gap * 2, longest)
    return quiet >= due
