"""The public JSON shape of a job, built from a ``JobSnapshot``; pure.

Internal fields (tenant, user_id, provider_job_id, webhook_url, attempt, version) stay out of
the public shape: the token holder sees what the job is doing, not how it is wired.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from floodgate.api.heard import final
from floodgate.ids import is_job_id, job_id_time
from floodgate.queueboard import Standing

Snapshot = dict[str, Any]


def iso_ms(epoch_ms: int | None) -> str | None:
    """``2026-01-02T03:04:05.678Z`` for epoch milliseconds; None for None (or 0, "unknown")."""
    if not epoch_ms:
        return None
    stamp = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def job_resource(snapshot: Snapshot, video_url: str | None = None, standing: Standing | None = None) -> dict[str, Any]:
    """The body of ``GET /v1/jobs/{job_id}`` (and of SSE/WebSocket job messages). ``video_url``
    replaces the provider's (our signed link, when videos are kept in our store); ``standing``:
    its place in line and ETAs (``floodgate.queueboard``)."""
    video_url = video_url or snapshot.get("video_url")
    standing = standing or Standing()
    return {
        "job_id": snapshot["job_id"],
        "status": snapshot["status"],
        "model": snapshot.get("model") or None,
        "provider": snapshot.get("provider"),
        "progress": float(snapshot.get("progress") or 0.0),
        "result": {"video_url": video_url} if video_url else None,
        "error": snapshot.get("error"),
        "created_at": iso_ms(snapshot.get("created_at")),
        "updated_at": iso_ms(snapshot.get("updated_at")),
        "metadata": dict(snapshot.get("metadata") or {}),
        "priority": snapshot.get("priority") or "standard",
        "serving_model": snapshot.get("serving_model") or snapshot.get("model") or None,
        "route_note": snapshot.get("route_note"),
        "queue_position": standing.queue_position,
        "provider_queue_position": snapshot.get("provider_queue_position"),
        "eta_seconds": standing.eta_seconds,
        "eta_ready_seconds": standing.eta_ready_seconds,
        # An end a provider's webhook told, shown before the worker records it, is not final: a
        # cancel that overtook the completion at the worker ends the job cancelled instead.
        "final": final(snapshot),
    }


def queued_snapshot(request: dict[str, Any]) -> Snapshot:
    """The snapshot the ingress puts in its local view for a just-acknowledged ``JobRequest``."""
    return {
        "job_id": request["job_id"],
        "tenant": request["tenant"],
        "user_id": request["user_id"],
        "model": request["model"],
        "provider": None,
        "provider_job_id": None,
        "status": "queued",
        "progress": 0.0,
        "video_url": None,
        "error": None,
        "attempt": 0,
        "created_at": request["accepted_at"],
        "updated_at": request["accepted_at"],
        "webhook_url": request["webhook_url"],
        "metadata": dict(request["metadata"]),
        "version": 0,
        "push": (request.get("notify") or {}).get("push"),
        "priority": request.get("priority") or "standard",
        "request_hash": request["request_hash"],
    }


def presumed_queued(job_id: str) -> Snapshot:
    """A job we hold a valid token for but no snapshot of yet (another instance accepted it).

    The token proves it was accepted; its creation time is in the id unless it was keyed.
    """
    created = job_id_time(job_id) if is_job_id(job_id) else 0
    return {"job_id": job_id, "status": "queued", "model": None, "provider": None, "progress": 0.0,
            "video_url": None, "error": None, "created_at": created or None, "updated_at": created or None,
            "metadata": {}, "version": 0}


__all__ = ["iso_ms", "job_resource", "presumed_queued", "queued_snapshot"]
