"""Job lifecycle: the pure state machine folded over job events."""

from floodgate.jobs.state import (
    EVENT_KINDS,
    RECENT_EVENTS_LIMIT,
    TERMINAL,
    JobEvent,
    JobState,
    JobStatus,
    Transition,
    apply,
)

__all__ = [
    "EVENT_KINDS",
    "RECENT_EVENTS_LIMIT",
    "TERMINAL",
    "JobEvent",
    "JobState",
    "JobStatus",
    "Transition",
    "apply",
]
