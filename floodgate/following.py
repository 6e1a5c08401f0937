"""Which status answers about a followed job are news, and how long a job is followed. Pure.

Some providers say little by themselves: fal, RunPod and WaveSpeed call back only when a job ends
(and fal keeps accepted jobs waiting in a queue of its own, telling the place only when asked);
Runway has no webhooks at all. The dispatcher asks such a provider for the status of each job it
holds, every ``FLOODGATE_PROVIDER_STATUS_POLL`` seconds (``streams.poller``). Any answer could
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

Both kinds of status call, following and the late poll, wait their turn in one ``StatusQueue`` per
provider, which spends the provider's read budget (``status_rate_per_second``) and nothing more.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from floodgate.throttle import TokenBucket

K = TypeVar("K", bound=Hashable)

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


def callbacks_heard(callbacks: str, webhooks: bool) -> str:
    """What a provider whose webhooks tell ``callbacks`` tells us: nothing where no webhook can
    reach us (``webhooks`` False: no ``FLOODGATE_WEBHOOK_BASE_URL``)."""
    return callbacks if webhooks else "none"


def read_budget(configured: float | None, connector: object) -> float | None:
    """Status calls a second at most for a provider: the routing file's ``status_rate_per_second``,
    else its connector's documented limit (a class attribute of that name), else None (no budget)."""
    documented: float | None = getattr(connector, "status_rate_per_second", None)
    return configured or documented


def late_poll_every(poll_after: float) -> float:
    """Seconds between two rounds of the late poll for ``FLOODGATE_POLL_AFTER`` = ``poll_after``:
    a third of it, within 1-10 s."""
    return max(1.0, min(10.0, poll_after / 3))


def followed_every(callbacks: str, status_poll: float, webhooks: bool, poll_after: float) -> float | None:
    """How often a job in flight at a provider whose webhooks tell ``callbacks`` is asked about at
    most: every ``status_poll`` seconds where it is followed (also every job where no webhook can
    reach us: ``webhooks`` False), else every late-poll round without webhooks; None where
    webhooks tell every change (only a quiet job is asked, less and less often: ``late_look_due``)."""
    if status_poll > 0 and followed(callbacks_heard(callbacks, webhooks)):
        return status_poll
    if not webhooks:
        return late_poll_every(poll_after)
    return None


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


class StatusQueue(Generic[K]):
    """The status calls due about a provider's jobs, made in turn within its read budget. Pure.

    The late poll and the following offer the jobs they would ask about; ``take`` says which to
    ask now. A job offered again while it waits keeps its place, so under a budget every job is
    asked in turn, the one waiting longest first, and a large set of followed jobs cannot starve
    a quiet job the late poll wants to look at. Without a budget ``take`` gives every job due.

    The budget is kept per dispatch partition (``buckets``: partition → its share of the rate,
    ``floodgate.throttle.partition_bucket``), as the slots are: a partition belongs to one worker
    at a time, so the shares hold the provider's rate whatever the number of workers (a
    partition without a bucket has no budget). A call
    refused for the rate anyway (a 429: another client on the same account) stops every call
    until its Retry-After (``refused``), and the calls not made keep their places.
    """

    def __init__(self, buckets: Mapping[int, TokenBucket] | None = None) -> None:
        self.buckets = dict(buckets) if buckets else None
        self._due: dict[K, int] = {}
        """Key → its partition, in the order the calls are to be made."""
        self.paused_until = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def keys(self) -> list[K]:
        return list(self._due)

    def offer(self, key: K, partition: int) -> None:
        """``key``'s job is due for a status call (a job already waiting keeps its place)."""
        self._due.setdefault(key, partition)

    def discard(self, key: K) -> None:
        self._due.pop(key, None)

    def take(self, now: float) -> list[tuple[K, int]]:
        """The calls to make at ``now`` (key, partition), in turn, each paid for from its
        partition's budget; the others wait for a later ``take``."""
        if now < self.paused_until or not self._due:
            return []
        if self.buckets is None:
            taken = list(self._due.items())
            self._due.clear()
            return taken
        taken, spent = [], set()
        for key, partition in self._due.items():
            if partition in spent:
                continue
            bucket = self.buckets.get(partition)
            if bucket is None or bucket.take_now(now, 1):
                taken.append((key, partition))
                continue
            spent.add(partition)
            if len(spent) == len(self.buckets):
                break  # (no partition can pay for another call)
        for key, _ in taken:
            del self._due[key]
        return taken

    def charge(self, partition: int, reads: int, now: float) -> None:
        """A call taken made ``reads`` more reads at the provider than the one it was paid for
        (fal's end: its status, then its result): they are paid from ``partition``'s budget too,
        in advance if it holds too little, so the calls after them wait that much longer."""
        if self.buckets is None or (bucket := self.buckets.get(partition)) is None:
            return
        for _ in range(reads):
            bucket.take(now)

    def refused(self, until: float, unasked: list[tuple[K, int]]) -> None:
        """A call was answered 429: no call before ``until``; ``unasked`` (taken but not made)
        go back to the front of the line, in their order."""
        self.paused_until = max(self.paused_until, until)
        if unasked:
            self._due = {**dict(unasked), **self._due}
