"""Replicate's predictions API: ``/v1/predictions`` (or ``/v1/models/{owner}/{name}/predictions``),
``Bearer`` tokens, statuses ``starting``/``processing``/``succeeded``/``failed``/``canceled``,
the prediction object as webhook body (``start`` and ``completed`` events, as
``webhook_events_filter`` asks), Standard Webhooks signatures, ``{"detail", "status"}`` errors
whose 429 carries ``retry_after`` in the body and no Retry-After header. No idempotency key."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from floodgate import signing

from ..jobs import BadRequest, CreateRequest, Job, model_params, progress
from .base import (
    CANCEL,
    CREATE,
    GET,
    IN_PROGRESS,
    TERMINAL,
    Dialect,
    Outgoing,
    Reply,
    Route,
    Submission,
    View,
    extras,
    iso,
    new_id,
    optional_url,
    prompt_of,
)

_STATUS = {"queued": "starting", "in_progress": "processing", "completed": "succeeded", "failed": "failed",
           "cancelled": "canceled"}
_FILTERS = {"start", "output", "logs", "completed"}
_MODEL_PATH = re.compile(r"/v1/models/([^/]+)/([^/]+)/predictions")
_ONE = re.compile(r"/v1/predictions/([^/]+)")
_CANCEL = re.compile(r"/v1/predictions/([^/]+)/cancel")


class ReplicateDialect(Dialect):
    name = "replicate"

    def match(self, method: str, path: str) -> Route | None:
        if method == "POST" and path == "/v1/predictions":
            return Route(CREATE)
        if method == "POST" and (m := _MODEL_PATH.fullmatch(path)):
            return Route(CREATE, model=f"{m[1]}/{m[2]}")
        if method == "GET" and (m := _ONE.fullmatch(path)):
            return Route(GET, m[1])
        if method == "POST" and (m := _CANCEL.fullmatch(path)):
            return Route(CANCEL, m[1])
        return None

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("body", "must be a JSON object") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("input"), dict):
            raise BadRequest("input", "is required and must be an object")
        model = route.model or raw.get("version")
        if not isinstance(model, str) or not model:
            raise BadRequest("version", "is required unless the model is in the path")
        filters = raw.get("webhook_events_filter") or []
        if not isinstance(filters, list) or not set(filters) <= _FILTERS:
            raise BadRequest("webhook_events_filter", f"must be a list of {sorted(_FILTERS)}")
        inp = raw["input"]
        request = CreateRequest(
            model=model, prompt=prompt_of(inp, where="input.prompt"),
            image_url=optional_url(inp, "image", "input.image"), webhook_url=optional_url(raw, "webhook"),
            metadata={"webhook_events_filter": ",".join(filters)},
            params=model_params(extras(inp, {"prompt", "image"}), "input"))
        return Submission(request)

    def created(self, job: Job, view: View) -> Reply:
        return Reply(201, self.job_body(job, view))

    def job_body(self, job: Job, view: View) -> dict[str, Any]:
        req = job.request
        inp: dict[str, Any] = {"prompt": req.prompt, **req.params}
        if req.image_url:
            inp["image"] = req.image_url
        url = f"{view.root}/v1/predictions/{job.id}"
        done = job.status in ("completed", "failed", "cancelled")
        return {
            "id": job.id, "model": req.model, "version": req.model, "input": inp,
            "logs": f"progress {progress(job, view.now)}%" if job.status == "in_progress" else "",
            "output": view.video_url(job), "data_removed": False,
            "error": (job.error or {}).get("message"), "status": _STATUS[job.status],
            "created_at": iso(job.created_at), "completed_at": iso(job.completed_at) if done else None,
            "urls": {"get": url, "cancel": f"{url}/cancel", "web": f"{view.root}/p/{job.id}"},
            "metrics": {"predict_time": job.render_seconds} if done and job.render_seconds else {},
        }

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        body: dict[str, Any] = {"title": _TITLES.get(status, "Error"), "detail": message, "status": status}
        if status == 429 and retry_after is not None:
            body["retry_after"] = retry_after
            return Reply(status, body)  # Replicate says when in the body only
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status, body, headers)

    def webhook(self, moment: str, job: Job, view: View) -> Outgoing | None:
        wanted = set(filter(None, job.request.metadata.get("webhook_events_filter", "").split(",")))
        if moment == IN_PROGRESS and wanted and "start" not in wanted:
            return None
        if moment == TERMINAL and wanted and "completed" not in wanted:
            return None
        if moment == IN_PROGRESS and not wanted:
            return None  # default: outputs and completion; a video model has one output, at the end
        return Outgoing(orjson.dumps(self.job_body(job, view)), new_id("msg_"))

    def sign(self, out: Outgoing, job: Job, wall: float, secret: str) -> dict[str, str]:
        return signing.signature_headers(secret, out.event_id, out.body, wall)


_TITLES = {400: "Bad Request", 401: "Unauthenticated", 404: "Not found", 422: "Invalid input",
           429: "Request was throttled", 503: "Service Unavailable"}

__all__ = ["ReplicateDialect"]
