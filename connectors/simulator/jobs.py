"""Simulated video jobs: the request shape we accept and the object shape we return (pure)."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

TERMINAL = frozenset({"completed", "failed", "cancelled"})
MAX_METADATA_PAIRS = 16  # OpenAI's limit; real providers cap metadata, so the pipeline should cope
_ALLOWED_FIELDS = frozenset({"model", "prompt", "image_url", "webhook_url", "metadata", "params"})
MAX_PARAMS = 32


class BadRequest(Exception):
    """A create request we refuse; ``field`` names the culprit for the 400 problem body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CreateRequest:
    model: str
    prompt: str
    image_url: str | None
    webhook_url: str | None
    metadata: Mapping[str, str]
    params: Mapping[str, Any] = field(default_factory=dict)
    """Model inputs beyond the prompt, kept so tests can see what reached the provider."""


@dataclass(eq=False)
class Job:
    """One job's mutable record. Times: ``*_at`` are wall clock, ``render_*`` monotonic."""

    id: str
    api_key: str
    request: CreateRequest
    created_at: float
    will_fail: bool
    will_hang: bool = False
    """Accepted and then never answered: no render, no webhook, queued until cancelled."""
    idempotency_key: str | None = None
    """The key the job was created under: which client attempt it belongs to (chaos checker)."""
    status: str = "queued"
    delivered: list[str] = field(default_factory=list)
    """Ids of the webhook events the receiver answered with a 2xx: what it promised to keep."""
    dropped: list[str] = field(default_factory=list)
    """Types of the webhook events dropped on purpose (``drop_rate``): what only a poll can learn."""
    render_started: float | None = None
    started_at: float | None = None
    """Wall clock (``time.time()``) when its render started: out of the queue, on a runner."""
    render_seconds: float | None = None
    cold_seconds: float = 0.0  # wall seconds of render_seconds spent booting, before the first frame
    completed_at: float | None = None
    error: dict[str, str] | None = None
    # A reordered in_progress event waits here until the terminal event has gone out.
    held_event: Any = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    # Deliveries of one job go out one at a time, in the order they were scheduled.
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _optional_url(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(name, "must be a string URL or null")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(name, "must be an absolute http(s) URL")
    return value


def _required_text(raw: Mapping[str, Any], name: str, limit: int) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(name, "is required and must be a non-empty string")
    if len(value) > limit:
        raise BadRequest(name, f"must be at most {limit} characters")
    return value


def _metadata(raw: Mapping[str, Any]) -> dict[str, str]:
    value = raw.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("metadata", "must be an object of string values")
    if len(value) > MAX_METADATA_PAIRS:
        raise BadRequest("metadata", f"must have at most {MAX_METADATA_PAIRS} entries")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise BadRequest(f"metadata.{key}", "must be a string of at most 512 characters (key at most 64)")
    return dict(value)


def model_params(value: Any, name: str = "params") -> dict[str, Any]:
    """Extra model inputs: an object of at most ``MAX_PARAMS`` scalar values."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_PARAMS:
        raise BadRequest(name, f"must be an object of at most {MAX_PARAMS} entries")
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)) or len(str(key)) > 64 or len(str(item)) > 512:
            raise BadRequest(f"{name}.{key}", "must be a scalar of at most 512 characters (key at most 64)")
    return dict(value)


def parse_create(body: bytes) -> CreateRequest:
    """Validate a ``POST /videos`` body. Raises ``BadRequest`` naming the first bad field."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("body", "must be a JSON object") from None
    if not isinstance(raw, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = sorted(set(raw) - _ALLOWED_FIELDS)
    if unknown:
        raise BadRequest(unknown[0], "is not a recognised field")
    return CreateRequest(
        model=_required_text(raw, "model", 200),
        prompt=_required_text(raw, "prompt", 10_000),
        image_url=_optional_url(raw, "image_url"),
        webhook_url=_optional_url(raw, "webhook_url"),
        metadata=_metadata(raw),
        params=model_params(raw.get("params")),
    )


def warming(job: Job, now: float) -> bool:
    """A cold model is still booting for ``job``: it shows as queued, without progress, until its
    first frame (as real providers keep a job queued while a worker boots)."""
    return (job.status == "in_progress" and job.render_started is not None
            and now < job.render_started + job.cold_seconds)


def progress(job: Job, now: float) -> int:
    """Approximate percent, as OpenAI reports it: 0 while queued, never 100 before completion."""
    if job.status == "completed":
        return 100
    if job.render_started is None or not job.render_seconds or warming(job, now):
        return 0
    done = (now - job.render_started) / job.render_seconds
    return max(0, min(99, int(done * 100)))


def job_view(job: Job, files_base: str, now: float) -> dict[str, Any]:
    """The job object as ``GET /videos/{id}`` returns it (and webhooks carry in ``data``)."""
    request = job.request
    return {
        "id": job.id,
        "object": "video",
        "model": request.model,
        "status": "queued" if warming(job, now) else job.status,
        "progress": progress(job, now),
        "created_at": int(job.created_at),
        "completed_at": None if job.completed_at is None else int(job.completed_at),
        "prompt": request.prompt,
        "image_url": request.image_url,
        "video_url": f"{files_base}/{job.id}.mp4" if job.status == "completed" else None,
        "error": job.error,
        "metadata": dict(request.metadata),
        "params": dict(request.params),
    }


SAMPLE_VIDEO = Path(__file__).resolve().parent / "media" / "sample.mp4"
"""A real, playable 2 s H.264 MP4 (320x180, ffmpeg's test pattern; ``dev/make_sample_video.sh``
made it): every completed job's video, so pages and players can be tested end to end."""
