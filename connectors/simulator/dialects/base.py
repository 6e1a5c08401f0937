"""What a simulated provider's dialect decides: its paths, auth header, request and status
shapes, error bodies, and its webhooks' body and signature. Pure: no I/O, no clock of its own.

The job lifecycle (queue, render, limits, outages, webhook chaos) is the simulator's and the
same for every dialect; a dialect only translates. Internal job states are ``queued``,
``in_progress``, ``completed``, ``failed`` and ``cancelled``; ``Job.waiting`` marks a queued job
held past the concurrency limit (fal's and Runway's queues).
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..jobs import BadRequest, CreateRequest, Job

CREATE, GET, CANCEL, RESULT, JWKS = "create", "get", "cancel", "result", "jwks"
IN_PROGRESS, TERMINAL = "in_progress", "terminal"  # the two moments a webhook may go out


@dataclass(frozen=True)
class Route:
    """What a request asks for. ``model`` comes from the path where the dialect puts it there."""

    action: str
    job_id: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Submission:
    request: CreateRequest
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # JSON-able, or None for an empty body
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """What a dialect may show of a job: where the provider lives and where its files are."""

    root: str  # {simulator}/{provider}
    files: str  # {simulator}/{provider}/files
    now: float  # monotonic, for progress
    queue_position: int = 0
    waiting: bool = False

    def video_url(self, job: Job) -> str | None:
        return f"{self.files}/{job.id}.mp4" if job.status == "completed" else None


@dataclass(frozen=True)
class Outgoing:
    """One webhook to send: its body and its headers for an attempt made at ``wall``."""

    body: bytes
    event_id: str


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex


def bearer(headers: Mapping[str, str], scheme: str = "bearer") -> str | None:
    given, _, token = headers.get("Authorization", "").partition(" ")
    if given.lower() != scheme:
        return None
    return token.strip() or None


def prompt_of(raw: Mapping[str, Any], key: str = "prompt", where: str = "prompt") -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(where, "is required and must be a non-empty string")
    if len(value) > 10_000:
        raise BadRequest(where, "must be at most 10000 characters")
    return value


def optional_url(raw: Mapping[str, Any], key: str, where: str | None = None) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise BadRequest(where or key, "must be an absolute http(s) URL")
    return value


def extras(raw: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    """Model inputs beyond the ones the simulator interprets: what ``params`` become."""
    return {k: v for k, v in raw.items() if k not in known and isinstance(v, (str, int, float, bool))}


class Dialect:
    """Base of every dialect; subclasses override what their provider does differently."""

    name = ""
    auth_scheme = "bearer"

    def match(self, method: str, path: str) -> Route | None:
        raise NotImplementedError

    def api_key(self, headers: Mapping[str, str], wall: float) -> str | None:
        """The account a request is made for, or None when its credentials do not check out."""
        return bearer(headers, self.auth_scheme)

    def public(self, route: Route) -> Reply | None:
        """An answer for a route that needs no credentials (fal's JWKS), else None."""
        return None

    def addressed(self, route: Route, job: Job) -> bool:
        """Whether a route about ``job`` reaches it where the provider serves it (fal: only under
        the job's app); a job asked about elsewhere is not found."""
        return True

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        raise NotImplementedError

    def created(self, job: Job, view: View) -> Reply:
        return Reply(200, self.job_body(job, view))

    def status(self, job: Job, view: View) -> Reply:
        return Reply(200, self.job_body(job, view))

    def result(self, job: Job, view: View) -> Reply:
        return self.status(job, view)

    def cancelled(self, job: Job, view: View, changed: bool) -> Reply:
        return Reply(200, self.job_body(job, view))

    def job_body(self, job: Job, view: View) -> Any:
        raise NotImplementedError

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status, {"error": message}, headers)

    def webhook(self, moment: str, job: Job, view: View) -> Outgoing | None:
        """The webhook for ``moment`` (``IN_PROGRESS`` or ``TERMINAL``), or None if none is sent."""
        return None

    def sign(self, out: Outgoing, job: Job, wall: float, secret: str) -> dict[str, str]:
        """Headers proving ``out`` (none for a provider that does not sign)."""
        return {}


__all__ = ["CANCEL", "CREATE", "GET", "IN_PROGRESS", "JWKS", "RESULT", "TERMINAL", "Dialect", "Outgoing", "Reply",
           "Route", "Submission", "View", "bearer", "extras", "iso", "new_id", "optional_url", "prompt_of"]
