"""When a job reached its milestones, measured from its submission (acceptance). Pure.

Two per provider and model: the first progress (the provider started rendering: its queue and
any cold start are behind it, so a cold start shows here) and completion. A job whose first news
is its completion (the running webhook was lost) reached both at once.

Measured up to ``now``, when the change is applied, not up to the event's own time: providers
stamp events in whole seconds (or not at all) and by their own clocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from floodgate.jobs.state import JobState, JobStatus

_BEFORE_PROGRESS = frozenset({JobStatus.QUEUED, JobStatus.SUBMITTED})
_PROGRESSED = frozenset({JobStatus.RUNNING, JobStatus.COMPLETED})


@dataclass(frozen=True, slots=True)
class Milestones:
    """Seconds from submission to the milestones the change ``before`` → ``after`` reached (None: not reached)."""

    provider: str
    model: str
    first_progress: float | None = None
    completion: float | None = None


def milestones(before: JobState | None, after: JobState, now: float) -> Milestones | None:
    """The milestones a state change reached at ``now`` (Unix seconds); None when it reached none
    (or the job is unrouted)."""
    if not after.provider:
        return None
    was = before.status if before is not None else JobStatus.QUEUED
    since = max(0.0, now - after.created_at)
    first = since if was in _BEFORE_PROGRESS and after.status in _PROGRESSED else None
    done = since if after.status is JobStatus.COMPLETED and was is not JobStatus.COMPLETED else None
    if first is None and done is None:
        return None
    return Milestones(after.provider, after.model or "unknown", first, done)


__all__ = ["Milestones", "milestones"]
