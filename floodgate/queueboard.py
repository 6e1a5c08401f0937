"""Place in line and ETA of queued jobs, as the job view sees them. Pure: clocks are arguments.

The API's job view hands every snapshot it keeps to ``QueueBoard.observe``. The board keeps, per
provider, the queued jobs of each (priority, tenant) class in acceptance order, and from those
answers:

* ``queue_position``: how many waiting jobs the provider serves before this one, by the waiting
  line's own rule (``floodgate.fairqueue.position_estimate``: higher priority classes first, then
  each tenant's weighted share); 0 means next. Jobs that have left the line have none.
* ``eta_seconds``: seconds until the provider starts the job: ``(position + 1)`` ÷ the provider's
  start rate. The start rate is what the board saw (jobs leaving the line per second, over the
  provider's last two rounds of its slots and at least 50 starts: ``RATE_ROUNDS``) once there is
  enough of it, else the capacity estimate ``limit ÷ mean render time``. Only starts made while
  the provider is saturated count as seen: after the start that takes its last free slot while
  jobs wait, until its line is empty again, each over the time since the previous one. Those
  follow slots freed by jobs' ends, the pace at which a waiting line moves; starts into free
  slots (a quiet period's jobs, a burst filling the slots) say how fast jobs arrived, and
  counting them made a burst's ETAs far too long after a quiet minute, or too short while the
  slots filled. Nor do the waits between spells, or from the start that filled the slots to the
  first end: after a burst that took the renders' shortest time, and counting it made the spike
  bench's first ETAs up to twice too long. Between ``MIN_STARTS`` starts and a full round of the
  slots (``limit`` starts) the observed pace and the capacity estimate are blended, the observed
  weighing in proportion to the round seen: the first starts after a busy worker caught up come
  in a bunch, and alone they made the spike bench's ETAs up to twice too short.
* Render times (their mean for the capacity estimate, as Little's law wants with renders' long
  tails; their median for ``eta_ready_seconds``) come from the *settled* renders: those of jobs
  that started before every job still running at the provider. A render that ended while others
  that started before it still run is a short one by selection: the first ends after a burst
  filled the slots are the shortest renders, and they once made the capacity estimate three
  times too fast. With nothing settled yet, the routing file's figure (``configured_render``),
  else a floor from the renders ended and the time the running ones have run so far.
* ``eta_ready_seconds``: seconds until the video should be ready: the wait above plus the
  median render time; for a running job, that median less the time it has run.

Estimates, not promises: a burst of a higher class arriving later moves a job back, and the
start rate follows the providers' render times.
"""
from __future__ import annotations

import bisect
import statistics
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from floodgate.fairqueue import ClassLoad, position_estimate

RATE_ROUNDS = 2
"""The observed start rate is taken over the provider's last ``RATE_ROUNDS × limit`` saturated
starts (its slots turned over twice), and at least ``MIN_RATE_STARTS``: a window in starts, not in
seconds, so it spans the same share of a drain whatever the render times (a minute held a handful
of starts of 3-minute renders, and, with renders compressed 50× in the spike bench, a third of the
drain including its slow start). At most ``MAX_RATE_STARTS``."""
MIN_RATE_STARTS = 50
"""Below this many starts a small limit's two rounds are too few: one slow render moves the rate."""
MAX_RATE_STARTS = 2_000
RATE_MAX_AGE = 900.0
"""Seconds after which a start no longer counts: after a quiet spell the old pace says nothing."""
MIN_STARTS = 5
"""Starts in the window below which the capacity estimate is used instead of the observed rate;
from there to a full round of the provider's slots the two are blended."""
RENDER_SAMPLES = 200
"""Render times kept per provider (the most recent)."""
MAX_STARTED = 100_000
"""Start times of running jobs kept (to measure their render time when they end)."""

_LEFT_THE_LINE = frozenset({"submitted", "running", "completed", "failed"})


@dataclass(frozen=True)
class Standing:
    """Where a job stands: its place in line and the two ETAs (None: not known or not queued)."""

    queue_position: int | None = None
    eta_seconds: float | None = None
    eta_ready_seconds: float | None = None


@dataclass
class _Provider:
    classes: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)
    """(priority, tenant) → sorted (created_at ms, job id) of queued jobs."""
    starts: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, seconds since the previous one) of starts made while the provider was saturated,
    but the first of each saturated spell (see the module docstring)."""
    saturated: bool = False
    """Its slots have all been taken since its line was last empty."""
    last_start: float | None = None
    """The latest start of the current saturated spell."""
    renders: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RENDER_SAMPLES))
    """(start, seconds) of the latest renders seen from start to completion."""
    started_at: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Job id → (start, tenant) of the jobs seen starting here and not yet seen ending."""
    _oldest: float | None = None
    _oldest_known: bool = True
    _settled: tuple[float, float] | None = None
    """(median, mean) of the settled renders, worked out when asked and kept until a job starts or
    ends here: a job's every message asks for them."""
    running_by: Counter[str] = field(default_factory=Counter)
    """Per tenant, its jobs seen starting here and not yet seen ending: the slots each holds,
    which the line's rule weighs."""

    @property
    def running(self) -> int:
        """Jobs seen starting here and not yet seen ending."""
        return sum(self.running_by.values())

    def began(self, job_id: str, at: float, tenant: str) -> None:
        self._settled = None
        self.started_at[job_id] = (at, tenant)
        self.running_by[tenant] += 1
        if self._oldest_known and (self._oldest is None or at < self._oldest):
            self._oldest = at

    def ended(self, job_id: str) -> float:
        """Forget the running job ``job_id`` (seen starting here); returns its start."""
        self._settled = None
        at, tenant = self.started_at.pop(job_id)
        if at == self._oldest:
            self._oldest_known = False  # worked out again when next asked
        self.running_by[tenant] -= 1
        if self.running_by[tenant] <= 0:
            del self.running_by[tenant]
        return at

    def oldest_running(self) -> float | None:
        """When the longest-running job here started (None: none runs)."""
        if not self._oldest_known:
            self._oldest = min((at for at, _ in self.started_at.values()), default=None)
            self._oldest_known = True
        return self._oldest

    def rendered(self, start: float, seconds: float) -> None:
        self._settled = None
        self.renders.append((start, seconds))

    def settled(self) -> tuple[float, float] | None:
        """(median, mean) of the renders of jobs that started before every job still running here:
        a sample that no still-running render can make longer (the rest are short by selection);
        None while there is none."""
        if self._settled is None:
            oldest = self.oldest_running()
            renders = [seconds for start, seconds in self.renders if oldest is None or start < oldest]
            if renders:
                self._settled = (statistics.median(renders), statistics.fmean(renders))
        return self._settled


_Place = tuple[str, tuple[str, str], tuple[int, str]]
"""Where a queued job is on the board: (provider, its class (priority, tenant), its entry in that
class's line (created_at ms, job id)). A plain tuple of strings and numbers, not a record: the
garbage collector untracks those, so a full collection does not walk one per waiting job (an
API holds 100,000 of them under a backlog; see ``floodgate.api.view.untracked``)."""


class QueueBoard:
    def __init__(self, limits: Mapping[str, int], *, weight_of: Callable[[str], float] = lambda tenant: 1.0,
                 configured_render: Mapping[str, float] | None = None,
                 route: Callable[[str], str | None] | None = None) -> None:
        """``limits``: provider → concurrency limit. ``configured_render``: provider → typical
        render seconds from the routing file, used until render times are observed. ``route``:
        model → the provider admission will queue a job for (its first available one), which
        places the jobs this API accepted before their admission says where they wait."""
        self.limits = dict(limits)
        self.weight_of = weight_of
        self.configured_render = dict(configured_render or {})
        self.route = route
        self._providers: dict[str, _Provider] = {}
        self._places: dict[str, _Place] = {}
        self._started: dict[str, str] = {}
        """Job id → provider of the jobs seen starting and not yet ending (their start and tenant:
        the provider's ``started_at``), oldest first."""

    def __len__(self) -> int:
        """Queued jobs on the board."""
        return len(self._places)

    def _provider(self, name: str) -> _Provider:
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = _Provider()
        return found

    def observe(self, snapshot: Mapping[str, Any], now: float) -> None:
        """Take in a job's newest snapshot. Its change is dated by its ``updated_at`` (``now``,
        epoch seconds, if it has none), so that a view catching up on old snapshots after a
        restart does not count them as starts of this minute."""
        job_id = snapshot["job_id"]
        stamp = snapshot.get("updated_at")
        at = stamp / 1000 if stamp else now
        status, provider = snapshot.get("status"), snapshot.get("provider")
        if status == "queued" and not provider and self.route is not None:
            provider = self.route(snapshot.get("model") or "")  # accepted here, not admitted yet
        was = self._places.pop(job_id, None)
        if was is not None and status in _LEFT_THE_LINE:
            self._start(was[0], job_id, at, now, was[1][1])  # while the line still holds it
        if was is not None:
            self._remove(was)
        if status == "queued" and provider:
            self._ended(job_id)  # (back in a line: a reroute after its start)
            klass = (snapshot.get("priority") or "standard", snapshot.get("tenant") or "default")
            entry = (int(snapshot.get("created_at") or 0), job_id)
            bisect.insort(self._provider(provider).classes.setdefault(klass, []), entry)
            self._places[job_id] = (provider, klass, entry)
            return
        if status in ("completed", "failed", "cancelled", "expired"):
            started = self._ended(job_id)
            if started is not None and status == "completed":
                provider, began = started
                self._providers[provider].rendered(began, max(0.0, at - began))

    def _ended(self, job_id: str) -> tuple[str, float] | None:
        """Forget ``job_id`` as running, if it was: (its provider, its start)."""
        provider = self._started.pop(job_id, None)
        if provider is None:
            return None
        return provider, self._providers[provider].ended(job_id)

    def _remove(self, place: _Place) -> None:
        provider, klass, entry = place
        line = self._providers[provider].classes[klass]
        at = bisect.bisect_left(line, entry)
        if at < len(line) and line[at] == entry:
            del line[at]
        if not line:
            state = self._providers[provider]
            del state.classes[klass]
            if not state.classes:
                state.saturated = False  # nobody waits: the next starts take free slots
                state.last_start = None

    def _start(self, provider: str, job_id: str, at: float, now: float, tenant: str) -> None:
        state = self._provider(provider)
        self._ended(job_id)  # (started again: counted once)
        state.began(job_id, at, tenant)
        limit = self.limits.get(provider)
        if not state.saturated:
            waiting = sum(len(jobs) for jobs in state.classes.values()) > 1  # others than this job
            if waiting and (limit is None or state.running >= limit):  # it took the last free slot:
                state.saturated = True  # from the next start on, the line moves with ends
        else:
            starts = state.starts
            if state.last_start is not None:
                starts.append((at, max(0.0, at - state.last_start)))
            state.last_start = at
            keep = min(MAX_RATE_STARTS, max(MIN_RATE_STARTS, RATE_ROUNDS * (limit or 0)))
            while len(starts) > keep or (starts and starts[0][0] < now - RATE_MAX_AGE):
                starts.popleft()
        if len(self._started) >= MAX_STARTED:
            self._ended(next(iter(self._started)))  # the oldest: a job whose end was never seen
        self._started[job_id] = provider

    def render_time(self, provider: str, now: float | None = None) -> float | None:
        """Median render seconds at ``provider`` (what a job is told it takes): of the settled
        renders, else configured, else (given ``now``) the median of the renders ended and the time
        the running jobs have run, a floor; else that of the renders ended; None if nothing is
        known."""
        return self._render_figure(provider, now, mean=False)

    def hold_time(self, provider: str, now: float | None = None) -> float | None:
        """Mean seconds a job holds a slot at ``provider``, from the same renders as
        ``render_time``: the capacity estimate is ``limit ÷`` this (Little's law wants the mean;
        with the long tail real renders have, the median made the pace too fast)."""
        return self._render_figure(provider, now, mean=True)

    def _render_figure(self, provider: str, now: float | None, *, mean: bool) -> float | None:
        state = self._providers.get(provider)
        if state is not None and (settled := state.settled()) is not None:
            return settled[1] if mean else settled[0]
        configured = self.configured_render.get(provider)
        if configured is not None or state is None or not state.renders:
            return configured
        so_far = [seconds for _, seconds in state.renders]
        if now is not None:
            so_far += [max(0.0, now - start) for start, _ in state.started_at.values()]
        return statistics.fmean(so_far) if mean else statistics.median(so_far)

    def start_rate(self, provider: str, now: float) -> float | None:
        """Jobs leaving ``provider``'s line per second: observed, else its capacity estimate, and
        a blend of the two until a round of the provider's slots has been seen."""
        state = self._providers.get(provider)
        limit = self.limits.get(provider)
        if state is not None:
            starts = state.starts
            while starts and starts[0][0] < now - RATE_MAX_AGE:
                starts.popleft()
            if len(starts) >= MIN_STARTS:
                # Starts over the time they took, counting only saturated spells: the wait from a
                # burst filling the slots to the first end, or a quiet spell between two spells, is
                # not the pace of a waiting line. The gap still open counts too (a provider that
                # stopped starting jobs slows the estimate down).
                open_gap = now - state.last_start if state.saturated and state.last_start is not None else 0.0
                observed = len(starts) / max(sum(gap for _, gap in starts) + max(0.0, open_gap), 1.0)
                seen = len(starts) / max(MIN_STARTS, limit or 0)
                if seen >= 1.0 or (capacity := self._capacity(provider, limit, now)) is None:
                    return observed
                # Blended as seconds per start, which is what an ETA adds up.
                return 1.0 / (1.0 / capacity + (1.0 / observed - 1.0 / capacity) * seen)
        return self._capacity(provider, limit, now)

    def _capacity(self, provider: str, limit: int | None, now: float) -> float | None:
        hold = self.hold_time(provider, now)
        return limit / hold if hold and limit else None

    def position(self, job_id: str) -> int | None:
        place = self._places.get(job_id)
        if place is None:
            return None
        provider, (priority, tenant), entry = place
        state = self._providers[provider]
        index = bisect.bisect_left(state.classes[(priority, tenant)], entry)
        loads = (ClassLoad(p, t, len(jobs)) for (p, t), jobs in state.classes.items())
        return position_estimate(priority, tenant, index, loads, self.weight_of, held=state.running_by,
                                 limit=self.limits.get(provider))

    def standing(self, snapshot: Mapping[str, Any], now: float) -> Standing:
        """Where the job of ``snapshot`` stands at ``now``."""
        job_id, provider = snapshot["job_id"], snapshot.get("provider")
        status = snapshot.get("status")
        if status == "queued" and not provider and job_id in self._places:
            provider = self._places[job_id][0]  # (placed by its model's route)
        if status == "queued":
            position = self.position(job_id)
            if position is None or not provider:
                return Standing()
            rate = self.start_rate(provider, now)
            wait = (position + 1) / rate if rate else None
            render = self.render_time(provider, now)
            ready = wait + render if wait is not None and render is not None else None
            return Standing(position, _round(wait), _round(ready))
        if status in ("submitted", "running") and provider:
            render = self.render_time(provider, now)
            if render is None:
                return Standing()
            started = self._started.get(job_id)
            ran = now - self._providers[started].started_at[job_id][0] if started is not None else 0.0
            return Standing(None, None, _round(max(0.0, render - ran)))
        return Standing()

    def queued_at(self, provider: str) -> int:
        """Jobs waiting for ``provider``."""
        state = self._providers.get(provider)
        return 0 if state is None else sum(len(jobs) for jobs in state.classes.values())

    def estimated_wait(self, provider: str, now: float) -> float | None:
        """Seconds a job joining ``provider``'s line now would wait (standard class)."""
        rate = self.start_rate(provider, now)
        return (self.queued_at(provider) + 1) / rate if rate else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def update_due(last: tuple[int, float] | None, position: int, now: float, *, every: float = 5.0,
               step: float = 0.05) -> bool:
    """Whether a subscriber should hear of a job's new ``position`` (``last``: the position it was
    told and when): once the position moved by ``step`` of itself, or ``every`` seconds after the
    last update if it moved at all; never twice for the same position."""
    if last is None:
        return True
    told, at = last
    if position == told:
        return False
    return abs(position - told) >= max(1.0, step * told) or now - at >= every


__all__ = ["QueueBoard", "Standing", "update_due"]
