"""How fast a waiting line moves: starts per second and render times of one provider, or of one
dispatch partition's share of it. Pure: clocks are arguments.

Two readers keep one each. The API's queue board (``floodgate.queueboard``) sees jobs start and
end in their snapshots, and turns the pace into a waiting job's ETA. A provider's dispatcher
(``streams.dispatcher``) sees its own slots taken and freed, and turns the pace into the wait that
spillover and the backlog guard weigh (``floodgate.spillover``). Both want the same thing from
the same kind of evidence, and both met the same traps, so the rules live here once:

* The *start rate* is what was seen (jobs leaving the line per second, over the line's last two
  rounds of its slots and at least 50 starts: ``RATE_ROUNDS``) once there is enough of it, else
  the capacity estimate ``limit ÷ mean hold time``. Only starts made while the line is saturated
  count as seen: after the start that takes its last free slot while jobs wait, until its line is
  empty again, each over the time since the latest one before it (the stamps may come out of
  order). Those follow slots freed by jobs' ends, the pace at which a waiting line moves; starts
  into free slots (a quiet period's jobs, a burst filling the slots) say how fast jobs arrived,
  and counting them made a burst's ETAs far too long after a quiet minute, or too short while the
  slots filled. Nor do the waits between spells, or from the start that filled the slots to the
  first end: after a burst that took the renders' shortest time, and counting it made the spike
  bench's first ETAs up to twice too long. Between ``MIN_STARTS`` starts and a full round of the
  slots (``limit`` starts) the observed pace and the capacity estimate are blended, the observed
  weighing in proportion to the round seen: the first starts after a busy worker caught up come in
  a bunch, and alone they made the spike bench's ETAs up to twice too short.
* *Hold times* (their mean for the capacity estimate, as Little's law wants with renders' long
  tails; their median for what a job is told its render takes) come from the *settled* ones: those
  of jobs that started before every job still running. A render that ended while others that
  started before it still run is a short one by selection: the first ends after a burst filled the
  slots are the shortest renders, and they once made the capacity estimate three times too fast.
  The configured figure (the routing file's ``render_time``), where there is one, weighs as
  ``PRIOR_HOLDS`` settled holds: a few settled ones move it a little, a round of the slots most
  of the way. Trusted alone, the three renders of a quiet spell before the spike bench's burst
  told kling's first 400 jobs a pace 1.4× too slow, the same in every run. With nothing settled
  and nothing configured, a floor from the holds ended and the time the running jobs have held
  their slots so far.

A window counted in starts, not in seconds: a minute held a handful of starts of 3-minute renders
(too few to say anything, so a dispatcher's estimated wait stayed unknown and nothing spilled),
and, with renders compressed 50× in the spike bench, a third of the drain with its slow start.
"""
from __future__ import annotations

import statistics
from collections import Counter, deque

RATE_ROUNDS = 2
"""The observed start rate is taken over the line's last ``RATE_ROUNDS × limit`` saturated starts
(its slots turned over twice), and at least ``MIN_RATE_STARTS``. At most ``MAX_RATE_STARTS``."""
MIN_RATE_STARTS = 50
"""Below this many starts a small limit's two rounds are too few: one slow render moves the rate."""
MAX_RATE_STARTS = 2_000
RATE_MAX_AGE = 900.0
"""Seconds after which a start no longer counts: after a quiet spell the old pace says nothing."""
MIN_STARTS = 5
"""Starts in the window below which the capacity estimate is used instead of the observed rate;
from there to a full round of the slots the two are blended."""
RENDER_SAMPLES = 200
"""Hold times kept (the most recent)."""
PRIOR_HOLDS = 10
"""The configured hold time counts as this many settled holds (a round of a typical 10-slot
line): blended with those seen, it keeps a handful of them from deciding the pace alone."""


class Pace:
    """The pace of one line with ``limit`` slots (given per call: a dispatch partition's share can
    change). ``configured_hold``: typical seconds a job holds a slot, the prior of the holds seen
    (``PRIOR_HOLDS``)."""

    def __init__(self, configured_hold: float | None = None) -> None:
        self.configured_hold = configured_hold
        self.starts: deque[tuple[float, float]] = deque()
        """(time, seconds since the previous one) of starts made while the line was saturated, but
        the first two of each saturated spell."""
        self.saturated = False
        """The slots have all been taken since the line was last empty."""
        self.last_start: float | None = None
        """The latest start of the current saturated spell (the latest stamp: see ``started``)."""
        self.holds: deque[tuple[float, float]] = deque(maxlen=RENDER_SAMPLES)
        """(start, seconds) of the latest holds seen from start to end."""
        self.started_at: dict[str, tuple[float, str]] = {}
        """Job id → (start, tenant) of the jobs seen starting and not yet seen ending."""
        self.running_by: Counter[str] = Counter()
        """Per tenant, its jobs seen starting and not yet seen ending: the slots each holds."""
        self._oldest: float | None = None
        self._oldest_known = True
        self._settled: tuple[float, float, int] | None = None
        """(median, mean, count) of the settled holds, worked out when asked and kept until a job
        starts or ends: the board asks for them on a job's every message."""

    @property
    def running(self) -> int:
        """Jobs seen starting and not yet seen ending."""
        return len(self.started_at)

    def started(self, job_id: str, at: float, now: float, *, waiting: int, limit: int | None,
                tenant: str = "", full: bool | None = None) -> None:
        """``job_id`` took a slot at ``at``, leaving ``waiting`` others in line. ``full``: whether
        that was the last free slot (by default: as many jobs run as seen starting, ``limit``;
        a dispatcher knows better, as it counts slots it recovered too). A job started again
        (seen twice, or restarted without its end seen) counts once, from its latest start."""
        self.ended(job_id)
        self._began(job_id, at, tenant)
        if full is None:
            full = limit is None or self.running >= limit
        if not self.saturated:
            if waiting and full:  # it took the last free slot:
                self.saturated = True  # from the next start on, the line moves with ends
            return
        starts = self.starts
        # Each start's gap runs from the latest start seen before it, and a start stamped before
        # that one adds nothing: the API's board sees starts in snapshots from several partitions
        # of the jobs topic, a batch of one after a batch of another, so the stamps go back and
        # forth. Counting every forward step counted some seconds twice: a line told slower than
        # it moved (tests/unit/test_pace.py: 1.6× with two partitions' batches of a second).
        if self.last_start is None:
            self.last_start = at
        else:
            starts.append((at, max(0.0, at - self.last_start)))
            self.last_start = max(self.last_start, at)
        keep = min(MAX_RATE_STARTS, max(MIN_RATE_STARTS, RATE_ROUNDS * (limit or 0)))
        while len(starts) > keep or (starts and starts[0][0] < now - RATE_MAX_AGE):
            starts.popleft()

    def _began(self, job_id: str, at: float, tenant: str) -> None:
        self._settled = None
        self.started_at[job_id] = (at, tenant)
        self.running_by[tenant] += 1
        if self._oldest_known and (self._oldest is None or at < self._oldest):
            self._oldest = at

    def ended(self, job_id: str) -> float | None:
        """Forget ``job_id`` as running, if it was seen starting; returns its start (None if not)."""
        found = self.started_at.pop(job_id, None)
        if found is None:
            return None
        self._settled = None
        at, tenant = found
        if at == self._oldest:
            self._oldest_known = False  # worked out again when next asked
        self.running_by[tenant] -= 1
        if self.running_by[tenant] <= 0:
            del self.running_by[tenant]
        return at

    def held(self, start: float, seconds: float) -> None:
        """A job that started at ``start`` held its slot ``seconds``."""
        self._settled = None
        self.holds.append((start, seconds))

    def finished(self, job_id: str, at: float) -> None:
        """``job_id`` gave its slot back at ``at``: its hold counts (if its start was seen)."""
        start = self.ended(job_id)
        if start is not None:
            self.held(start, max(0.0, at - start))

    def emptied(self) -> None:
        """Nobody waits any more: the next starts take free slots."""
        self.saturated = False
        self.last_start = None

    def oldest_running(self) -> float | None:
        """When the longest-running job started (None: none runs)."""
        if not self._oldest_known:
            self._oldest = min((at for at, _ in self.started_at.values()), default=None)
            self._oldest_known = True
        return self._oldest

    def settled(self) -> tuple[float, float] | None:
        """(median, mean) of the holds of jobs that started before every job still running: a
        sample that no running job can make longer (the rest are short by selection); None while
        there is none."""
        found = self._settle()
        return None if found is None else found[:2]

    def _settle(self) -> tuple[float, float, int] | None:
        """``settled()`` and how many holds it is of."""
        if self._settled is None:
            oldest = self.oldest_running()
            holds = [seconds for start, seconds in self.holds if oldest is None or start < oldest]
            if holds:
                self._settled = (statistics.median(holds), statistics.fmean(holds), len(holds))
        return self._settled

    def hold_time(self, now: float | None = None, *, mean: bool = True) -> float | None:
        """Seconds a job holds a slot (the mean; the median with ``mean=False``): of the settled
        holds, blended with the configured figure if there is one (``PRIOR_HOLDS``); else
        configured; else (given ``now``) of the holds ended and the time the running jobs have held
        theirs so far, a floor; else of the holds ended; None if nothing is known."""
        if (settled := self._settle()) is not None:
            median, average, count = settled
            seen = average if mean else median
            if self.configured_hold is None:
                return seen
            # The configured figure weighs as PRIOR_HOLDS holds seen: a handful of settled ones
            # (a quiet spell's, before a spike) is too few to replace it.
            return (PRIOR_HOLDS * self.configured_hold + count * seen) / (PRIOR_HOLDS + count)
        if self.configured_hold is not None or not self.holds:
            return self.configured_hold
        so_far = [seconds for _, seconds in self.holds]
        if now is not None:
            so_far += [max(0.0, now - start) for start, _ in self.started_at.values()]
        return statistics.fmean(so_far) if mean else statistics.median(so_far)

    def capacity(self, limit: int | None, now: float) -> float | None:
        """Starts per second a saturated line of ``limit`` slots makes (Little's law)."""
        hold = self.hold_time(now)
        return limit / hold if hold and limit else None

    def rate(self, limit: int | None, now: float) -> float | None:
        """Jobs leaving the line per second: observed, else the capacity estimate, and a blend of
        the two until a round of the slots has been seen. None if nothing is known."""
        starts = self.starts
        while starts and starts[0][0] < now - RATE_MAX_AGE:
            starts.popleft()
        if len(starts) >= MIN_STARTS:
            # Starts over the time they took, counting only saturated spells. The gap still open
            # counts too, up to ``now`` (a line whose provider stopped starting jobs slows the
            # estimate down): the queue board passes the latest stamp it has heard, not its clock.
            open_gap = now - self.last_start if self.saturated and self.last_start is not None else 0.0
            observed = len(starts) / max(sum(gap for _, gap in starts) + max(0.0, open_gap), 1.0)
            seen = len(starts) / max(MIN_STARTS, limit or 0)
            if seen >= 1.0 or (capacity := self.capacity(limit, now)) is None:
                return observed
            # Blended as seconds per start, which is what a wait adds up.
            return 1.0 / (1.0 / capacity + (1.0 / observed - 1.0 / capacity) * seen)
        return self.capacity(limit, now)

    def keep_only(self, job_ids: set[str]) -> None:
        """Forget the running jobs not in ``job_ids`` (their slots went elsewhere unseen)."""
        for job_id in [job_id for job_id in self.started_at if job_id not in job_ids]:
            self.ended(job_id)


def estimated_wait(place: int, start_rate: float | None) -> float | None:
    """Seconds until the job at ``place`` (0: next) starts, or None while the rate is unknown."""
    if not start_rate:
        return None
    return (place + 1) / start_rate


__all__ = ["MIN_STARTS", "PRIOR_HOLDS", "RATE_MAX_AGE", "RENDER_SAMPLES", "Pace", "estimated_wait"]
