"""The contract every outgoing notifier implements, and the notification it carries.

A notifier tells someone outside Floodgate that a job reached a final state. It does one attempt
per ``send`` call; retrying, backoff and dead-lettering belong to the caller
(``floodgate.notify.outgoing``), which asks the raised error whether to try again.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from floodgate.errors import NotificationError
from floodgate.push import PushTarget

# Status → event type. Only final states are notified outward.
EVENT_TYPES: Mapping[str, str] = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
    "expired": "job.expired",
}


@dataclass(frozen=True, slots=True)
class Notification:
    """A job's final state, as told to the outside. Times are epoch milliseconds."""

    job_id: str
    version: int
    tenant: str
    status: str
    model: str
    provider: str | None
    progress: float
    video_url: str | None
    error: str | None
    created_at: int
    updated_at: int
    webhook_url: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    push: PushTarget | None = None
    """The device to tell (``notify.push`` of the request), if any."""
    priority: str = "standard"
    serving_model: str | None = None
    route_note: str | None = None

    @property
    def event_type(self) -> str:
        """``job.completed`` / ``job.failed`` / ``job.cancelled`` / ``job.expired``; ``KeyError`` for
        other states."""
        return EVENT_TYPES[self.status]

    @property
    def message_id(self) -> str:
        """``<job_id>:<version>``: the same for every attempt, so receivers can drop duplicates."""
        return f"{self.job_id}:{self.version}"

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Notification:
        """From a decoded ``JobSnapshot`` record."""
        return cls(
            job_id=snapshot["job_id"],
            version=snapshot["version"],
            tenant=snapshot["tenant"],
            status=snapshot["status"],
            model=snapshot["model"],
            provider=snapshot.get("provider"),
            progress=snapshot.get("progress", 0.0),
            video_url=snapshot.get("video_url"),
            error=snapshot.get("error"),
            created_at=snapshot["created_at"],
            updated_at=snapshot["updated_at"],
            webhook_url=snapshot.get("webhook_url"),
            metadata=dict(snapshot.get("metadata") or {}),
            push=PushTarget.from_record(snapshot.get("push")),
            priority=snapshot.get("priority") or "standard",
            serving_model=snapshot.get("serving_model"),
            route_note=snapshot.get("route_note"),
        )


@runtime_checkable
class Notifier(Protocol):
    """Delivers one notification per call."""

    async def send(self, notification: Notification) -> None:
        """Make one delivery attempt; return once it was accepted.

        Raises only :class:`NotificationError` (check ``retriable`` / ``retry_after``).
        """
        ...


__all__ = ["EVENT_TYPES", "Notification", "NotificationError", "Notifier"]
