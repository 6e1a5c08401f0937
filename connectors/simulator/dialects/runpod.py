"""RunPod serverless endpoints: ``POST /v2/{endpoint}/run`` (``Bearer``, ``{"input", "webhook",
"policy"}``) → ``{"id", "status": "IN_QUEUE"}``; ``GET|POST /v2/{endpoint}/status/{id}`` →
``{"id", "status", "delayTime", "executionTime", "output"}``; ``POST /v2/{endpoint}/cancel/{id}``.
Statuses ``IN_QUEUE``, ``IN_PROGRESS``, ``COMPLETED``, ``FAILED``, ``CANCELLED`` (``TIMED_OUT``
exists too; the simulator's failures are plain ``FAILED``). The webhook, at the end, is the
status object, unsigned. 429s carry no Retry-After."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..jobs import BadRequest, CreateRequest, Job, model_params
from .base import (
    CANCEL,
    CREATE,
    GET,
    TERMINAL,
    Dialect,
    Outgoing,
    Reply,
    Route,
    Submission,
    View,
    extras,
    new_id,
    optional_url,
    prompt_of,
)

_STATUS = {"queued": "IN_QUEUE", "in_progress": "IN_PROGRESS", "completed": "COMPLETED", "failed": "FAILED",
           "cancelled": "CANCELLED"}
_PATH = re.compile(r"/v2/([^/]+)/(run|status|cancel)(?:/([^/]+))?")


class RunPodDialect(Dialect):
    name = "runpod"

    def match(self, method: str, path: str) -> Route | None:
        m = _PATH.fullmatch(path)
        if m is None:
            return None
        endpoint, verb, job = m[1], m[2], m[3]
        if verb == "run":
            return Route(CREATE, model=endpoint) if method == "POST" and job is None else None
        if job is None:
            return None
        if verb == "status":
            return Route(GET, job, endpoint) if method in ("GET", "POST") else None
        return Route(CANCEL, job, endpoint) if method == "POST" else None

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("body", "must be a JSON object") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("input"), dict):
            raise BadRequest("input", "is required and must be an object")
        inp = raw["input"]
        request = CreateRequest(model=route.model or "", prompt=prompt_of(inp, where="input.prompt"),
                                image_url=optional_url(inp, "image_url", "input.image_url"),
                                webhook_url=optional_url(raw, "webhook"), metadata={},
                                params=model_params(extras(inp, {"prompt", "image_url"}), "input"))
        return Submission(request)

    def created(self, job: Job, view: View) -> Reply:
        return Reply(200, {"id": job.id, "status": "IN_QUEUE"})

    def job_body(self, job: Job, view: View) -> dict[str, Any]:
        body: dict[str, Any] = {"id": job.id, "status": _STATUS[job.status], "delayTime": 0}
        if job.terminal:
            body["executionTime"] = int((job.render_seconds or 0) * 1000)
        if job.status == "completed":
            body["output"] = {"video_url": view.video_url(job)}
        if job.status == "failed":
            body["error"] = (job.error or {}).get("message", "failed")
        return body

    def cancelled(self, job: Job, view: View, changed: bool) -> Reply:
        return Reply(200, {"id": job.id, "status": _STATUS[job.status]})

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        # RunPod sends no Retry-After on its 429s; an outage's 503 keeps one.
        headers = {"Retry-After": str(retry_after)} if retry_after is not None and status != 429 else {}
        return Reply(status, {"error": message}, headers)

    def webhook(self, moment: str, job: Job, view: View) -> Outgoing | None:
        if moment != TERMINAL:
            return None
        return Outgoing(orjson.dumps(self.job_body(job, view)), new_id("rp_"))


__all__ = ["RunPodDialect"]
