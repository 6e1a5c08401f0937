"""Place in line and ETA of queued jobs, as the job view sees them. Pure: clocks are arguments.

The API's job view hands every snapshot it keeps to ``QueueBoard.observe``. The board keeps, per
provider, the queued jobs of each (priority, tenant) class in the order they joined the line (their
acceptance; a job spilled from another model's line, its move: it joins at the back, as the
dispatcher puts its order), and from those answers:

* ``queue_position``: how many waiting jobs the provider serves before this one, by the waiting
  line's own rule (``floodgate.fairqueue.position_estimate``: higher priority classes first, then
  each tenant's weighted share); 0 means next. Jobs that have left the line have none.
* ``eta_seconds``: seconds until the provider starts the job: ``(position + 1)`` ÷ the provider's
  start rate (``floodgate.pace``: the starts seen while its line was saturated, blended with its
  capacity, ``limit ÷`` the mean render time, until a round of its slots has been seen).
* Render times come from the *settled* renders (``floodgate.pace``): those of jobs that started
  before every job still running at the provider, so the first, shortest ends after a burst do not
  make the pace too fast. The routing file's figure (``configured_render``), where there is one,
  weighs as ``PRIOR_HOLDS`` of them (a quiet spell's few renders do not decide a spike's pace
  alone); with nothing settled and nothing configured, a floor from the renders ended and the
  time the running ones have run so far.
* ``eta_ready_seconds``: seconds until the video should be ready: the wait above plus the
  median render time; for a running job, that median less the time it has run.
* A job submitted to a provider that keeps a queue of its own (fal) and waiting there
  (``provider_queue_position``) has an ``eta_seconds`` too: until the provider runs it, from how
  fast that queue was seen to move (``floodgate.provider_queue``); its ``eta_ready_seconds`` adds
  the provider's median run time, and once it runs, that median less the time it has run. A job
  still queued for such a provider adds the wait a job submitted now meets in that queue to its
  ``eta_seconds``, and the median run time to that for its ``eta_ready_seconds``.

* **Spillover** (``floodgate.spillover``): a job whose wait exceeds its model's ``max_wait_s``
  may move to an equivalent model's provider, so it is told no more than the pooled line: the jobs
  ahead of it here and the whole of the equivalent's line (it moves only once that line is short),
  at both providers' start rates together (the better equivalent, if several). Jobs at the
  equivalent are told their own line's pace, and hold to it: a job that moves in joins the line
  behind them (its ``lined_at``), so it takes only the room they leave.

Estimates, not promises: a burst of a higher class arriving later moves a job back, and the
start rate follows the providers' render times.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from floodgate.fairqueue import ClassLoad, position_estimate
from floodgate.pace import Pace, estimated_wait
from floodgate.provider_queue import ProviderQueue
from floodgate.routing import Spillover

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
    pace: Pace
    """Its start rate and render times, from the jobs seen starting and ending there."""
    classes: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)
    """(priority, tenant) → sorted (lined_at or else created_at ms, job id) of queued jobs."""

    def waiting(self) -> int:
        return sum(len(jobs) for jobs in self.classes.values())


_Place = tuple[str, tuple[str, str], tuple[int, str]]
"""Where a queued job is on the board: (provider, its class (priority, tenant), its entry in that
class's line (lined_at or else created_at ms, job id)). A plain tuple of strings and numbers, not
a record: the garbage collector untracks those, so a full collection does not walk one per
waiting job (an API holds 100,000 of them under a backlog; see ``floodgate.api.view.untracked``)."""


class QueueBoard:
    def __init__(self, limits: Mapping[str, int], *, weight_of: Callable[[str], float] = lambda tenant: 1.0,
                 configured_render: Mapping[str, float] | None = None,
                 route: Callable[[str], str | None] | None = None,
                 spillover: Mapping[str, Spillover] | None = None) -> None:
        """``limits``: provider → concurrency limit. ``configured_render``: provider → typical
        render seconds from the routing file, the prior of the render times observed. ``route``:
        model → the provider admission will queue a job for (its first available one), which
        places the jobs this API accepted before their admission says where they wait.
        ``spillover``: the routing file's rules (model → equivalents, ``max_wait_s``); they need
        ``route``."""
        self.limits = dict(limits)
        self.weight_of = weight_of
        self.configured_render = dict(configured_render or {})
        self.route = route
        self.spillover = dict(spillover or {}) if route is not None else {}
        self._providers: dict[str, _Provider] = {}
        self._places: dict[str, _Place] = {}
        self._started: dict[str, str] = {}
        """Job id → provider of the jobs seen starting and not yet ending (their start and tenant:
        the provider's ``started_at``), oldest first."""
        self._own: dict[str, ProviderQueue] = {}
        """Provider → its own queue, for each provider seen keeping one of our jobs waiting in it."""
        self._heard_until: float | None = None
        """The latest stamp of a snapshot the workers wrote (one with a provider): how far the
        board has heard of the lines. A line's pace counts the time since its latest start up to
        here, not up to the clock: a view whose feed runs behind (a busy worker, a busy API)
        would otherwise take its own lag for a line that stopped moving."""

    def __len__(self) -> int:
        """Queued jobs on the board."""
        return len(self._places)

    def _provider(self, name: str) -> _Provider:
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = _Provider(Pace(self.configured_render.get(name)))
        return found

    def observe(self, snapshot: Mapping[str, Any], now: float) -> None:
        """Take in a job's newest snapshot. Its change is dated by its ``updated_at`` (``now``,
        epoch seconds, if it has none), so that a view catching up on old snapshots after a
        restart does not count them as starts of this minute."""
        job_id = snapshot["job_id"]
        stamp = snapshot.get("updated_at")
        at = stamp / 1000 if stamp else now
        status, provider = snapshot.get("status"), snapshot.get("provider")
        if provider and stamp and (self._heard_until is None or at > self._heard_until):
            self._heard_until = at
        if status == "queued" and not provider and self.route is not None:
            provider = self.route(snapshot.get("model") or "")  # accepted here, not admitted yet
        place = snapshot.get("provider_queue_position")
        if self._own or place is not None:
            self._observe_own(job_id, status, provider, place, at)
        was = self._places.pop(job_id, None)
        if was is not None and status in _LEFT_THE_LINE:
            self._start(was[0], job_id, at, now, was[1][1])  # while the line still holds it
        if was is not None:
            self._remove(was)
        if status == "queued" and provider:
            self._ended(job_id)  # (back in a line: a reroute after its start)
            klass = (snapshot.get("priority") or "standard", snapshot.get("tenant") or "default")
            # By when it joined the line: its acceptance, or a spilled job's move (as the dispatcher).
            entry = (int(snapshot.get("lined_at") or snapshot.get("created_at") or 0), job_id)
            bisect.insort(self._provider(provider).classes.setdefault(klass, []), entry)
            self._places[job_id] = (provider, klass, entry)
            return
        if status in ("completed", "failed", "cancelled", "expired"):
            started = self._ended(job_id)
            if started is not None and status == "completed":
                where, began = started
                self._providers[where].pace.held(began, max(0.0, at - began))

    def _observe_own(self, job_id: str, status: str | None, provider: str | None, place: int | None,
                     at: float) -> None:
        """The job's word for the own queue of its provider (made at its first place there), and
        its leaving any other's (a reroute). A job the board holds in Floodgate's line and now
        sees past it arrives at that queue: where it enters it tells the wait of the next ones."""
        if provider and place is not None and provider not in self._own:
            made = self._own[provider] = ProviderQueue()
            # The jobs seen leaving Floodgate's line for it before it was first seen keeping one
            # waiting (the first ones after a start) arrive as well: their next word there (a
            # place, or running) is where they entered it, and their submission is when they took
            # that place, as it would have been had the queue existed. (Without the submission, a
            # first place counted from the status call that told it: on a busy CI worker that
            # call came late, the first moves looked short, and a job was told 1.0 s for a start
            # 2.6 s away.)
            state = self._providers.get(provider)
            for job, (began, _) in (state.pace.started_at.items() if state is not None else ()):
                made.arrive(job)
                made.observe(job, "submitted", None, began)
        for name, own in self._own.items():
            if name == provider:
                if status != "queued" and job_id in self._places:
                    own.arrive(job_id)
                own.observe(job_id, status or "", place, at)
            else:
                own.forget(job_id)

    def _ended(self, job_id: str) -> tuple[str, float] | None:
        """Forget ``job_id`` as running, if it was: (its provider, its start)."""
        provider = self._started.pop(job_id, None)
        if provider is None:
            return None
        began = self._providers[provider].pace.ended(job_id)
        return None if began is None else (provider, began)

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
                state.pace.emptied()

    def _start(self, provider: str, job_id: str, at: float, now: float, tenant: str) -> None:
        state = self._provider(provider)
        self._ended(job_id)  # (started again, perhaps at another provider: counted once)
        # The line still holds the job: the others in it are what its start left waiting.
        state.pace.started(job_id, at, now, waiting=state.waiting() - 1, limit=self.limits.get(provider),
                           tenant=tenant)
        if len(self._started) >= MAX_STARTED:
            self._ended(next(iter(self._started)))  # the oldest: a job whose end was never seen
        self._started[job_id] = provider

    def render_time(self, provider: str, now: float | None = None) -> float | None:
        """Median render seconds at ``provider`` (what a job is told it takes): of the settled
        renders, else configured, else (given ``now``) the median of the renders ended and the time
        the running jobs have run, a floor; else that of the renders ended; None if nothing is
        known."""
        state = self._providers.get(provider)
        return self.configured_render.get(provider) if state is None else state.pace.hold_time(now, mean=False)

    def hold_time(self, provider: str, now: float | None = None) -> float | None:
        """Mean seconds a job holds a slot at ``provider``, from the same renders as
        ``render_time``: the capacity estimate is ``limit ÷`` this (Little's law wants the mean;
        with the long tail real renders have, the median made the pace too fast)."""
        state = self._providers.get(provider)
        return self.configured_render.get(provider) if state is None else state.pace.hold_time(now)

    def start_rate(self, provider: str, now: float) -> float | None:
        """Jobs leaving ``provider``'s line per second: observed, else its capacity estimate, and
        a blend of the two until a round of the provider's slots has been seen."""
        state = self._providers.get(provider)
        limit = self.limits.get(provider)
        if state is None:
            configured = self.configured_render.get(provider)
            return limit / configured if configured and limit else None
        # The open gap since the line's latest start runs to what the board has heard, not to
        # the clock (``_heard_until``): in the spike bench the view ran seconds behind while the
        # burst was admitted, and counting that as lines standing still told the ETAs read 2-4 s
        # into the burst up to 1.45× too long.
        heard = now if self._heard_until is None else min(now, self._heard_until)
        return state.pace.rate(limit, heard)

    def position(self, job_id: str) -> int | None:
        place = self._places.get(job_id)
        if place is None:
            return None
        provider, (priority, tenant), entry = place
        state = self._providers[provider]
        index = bisect.bisect_left(state.classes[(priority, tenant)], entry)
        loads = (ClassLoad(p, t, len(jobs)) for (p, t), jobs in state.classes.items())
        return position_estimate(priority, tenant, index, loads, self.weight_of, held=state.pace.running_by,
                                 limit=self.limits.get(provider))

    def _pooled(self, snapshot: Mapping[str, Any], provider: str, position: int, wait: float, rate: float,
                now: float) -> float:
        """``wait``, of the job at ``position`` in ``provider``'s line, which starts ``rate`` jobs a
        second, as spillover changes it (see the module's note). Called only with rules, which
        come with ``self.route``."""
        model = snapshot.get("model") or ""
        serving = snapshot.get("serving_model") or model
        rule = self.spillover.get(serving)
        if rule is None or serving != model or wait <= rule.max_wait_s:
            return wait
        assert self.route is not None
        # It may move: to the equivalent whose pooled line is the shortest. Behind the whole of
        # the equivalent's line, not only the jobs accepted before it: a job moves only once that
        # line is short (``floodgate.spillover``), so the equivalent serves its own line first,
        # while this one serves ``rate`` of its own; from then on both serve what is left. The
        # wait comes to (position + the equivalent's line + 1) ÷ both rates, and to the job's own
        # line's pace where that is shorter (it starts here before the equivalent has room).
        for other in rule.equivalents:
            there = self.route(other)
            if there and there != provider and (rate_there := self.start_rate(there, now)):
                wait = min(wait, (position + self.queued_at(there) + 1) / (rate + rate_there))
        return wait

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
            wait = estimated_wait(position, rate)
            if rate and wait is not None and self.spillover:
                wait = self._pooled(snapshot, provider, position, wait, rate, now)
            own = self._own.get(provider)
            if own is not None and wait is not None and (entry := own.entry_wait(now)) is not None \
                    and (run := own.run_time()) is not None:
                # Its submission is not its start there: the provider's own queue comes first.
                return Standing(position, _round(wait + entry), _round(wait + entry + run))
            render = self.render_time(provider, now)
            ready = wait + render if wait is not None and render is not None else None
            return Standing(position, _round(wait), _round(ready))
        if status in ("submitted", "running") and provider:
            own = self._own.get(provider)
            if own is not None and (standing := self._standing_own(own, provider, snapshot, now)) is not None:
                return standing
            render = self.render_time(provider, now)
            if render is None:
                return Standing()
            started = self._started.get(job_id)
            ran = now - self._providers[started].pace.started_at[job_id][0] if started is not None else 0.0
            return Standing(None, None, _round(max(0.0, render - ran)))
        return Standing()

    def _standing_own(self, own: ProviderQueue, provider: str, snapshot: Mapping[str, Any],
                      now: float) -> Standing | None:
        """Where a submitted or running job at ``provider``, which keeps a queue of its own,
        stands (None: the general rule applies, for want of a pace or a run time)."""
        job_id, run = snapshot["job_id"], own.run_time()
        if snapshot.get("status") == "running":
            began = own.running_since(job_id)
            return None if run is None or began is None else Standing(None, None, _round(max(0.0, run - (now - began))))
        place = snapshot.get("provider_queue_position")
        if place is None or (wait := own.wait(job_id, place, now)) is None:
            return None
        run = run if run is not None else self.render_time(provider, now)
        return Standing(None, _round(wait), _round(wait + run) if run is not None else None)

    def queued_at(self, provider: str) -> int:
        """Jobs waiting for ``provider``."""
        state = self._providers.get(provider)
        return 0 if state is None else state.waiting()

    def estimated_wait(self, provider: str, now: float) -> float | None:
        """Seconds a job joining ``provider``'s line now would wait (standard class)."""
        return estimated_wait(self.queued_at(provider), self.start_rate(provider, now))


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
