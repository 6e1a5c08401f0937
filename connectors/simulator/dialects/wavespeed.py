"""WaveSpeed's v3 API: ``POST /api/v3/{model}`` (``Bearer``, the model input as body,
``?webhook=``), answers wrapped in ``{"code", "message", "data"}``; ``GET
/api/v3/predictions/{id}/result`` (also without ``/result``); ``DELETE /api/v3/predictions/{id}``
(the prediction is gone afterwards); statuses ``created``/``processing``/``completed``/``failed``.
One webhook at the end whose body is the prediction itself, signed ``webhook-signature: v3,<hex
HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the secret *as text* after its ``whsec_``
prefix (not base64-decoded, so not Standard Webhooks)."""
from __future__ import annotations

import hashlib
import hmac
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
    iso,
    new_id,
    optional_url,
    prompt_of,
)

_STATUS = {"queued": "created", "in_progress": "processing", "completed": "completed", "failed": "failed"}
_ONE = re.compile(r"/api/v3/predictions/([^/]+?)(/result)?")


class WaveSpeedDialect(Dialect):
    name = "wavespeed"

    def match(self, method: str, path: str) -> Route | None:
        m = _ONE.fullmatch(path)
        if m is not None:
            if method == "GET":
                return Route(GET, m[1])
            return Route(CANCEL, m[1]) if method == "DELETE" and not m[2] else None
        if method == "POST" and path.startswith("/api/v3/") and len(path) > len("/api/v3/"):
            return Route(CREATE, model=path[len("/api/v3/"):])
        return None

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("body", "must be a JSON object") from None
        if not isinstance(raw, dict):
            raise BadRequest("body", "must be a JSON object")
        request = CreateRequest(model=route.model or "", prompt=prompt_of(raw), image_url=optional_url(raw, "image"),
                                webhook_url=optional_url(query, "webhook"), metadata={},
                                params=model_params(extras(raw, {"prompt", "image"})))
        return Submission(request)

    def prediction(self, job: Job, view: View) -> dict[str, Any]:
        req = job.request
        inp: dict[str, Any] = {"prompt": req.prompt, **req.params}
        if req.image_url:
            inp["image"] = req.image_url
        url = view.video_url(job)
        return {"id": job.id, "model": req.model, "input": inp, "outputs": [url] if url else [],
                "urls": {"get": f"{view.root}/api/v3/predictions/{job.id}/result"},
                "has_nsfw_contents": [False] if url else [], "status": _STATUS.get(job.status, "failed"),
                "created_at": iso(job.created_at), "error": (job.error or {}).get("message", ""),
                "timings": {"inference": int((job.render_seconds or 0) * 1000)} if job.terminal else {}}

    def job_body(self, job: Job, view: View) -> dict[str, Any]:
        return {"code": 200, "message": "success", "data": self.prediction(job, view)}

    def status(self, job: Job, view: View) -> Reply:
        if job.status == "cancelled":  # deleted: gone for good
            return self.error(404, "prediction not found")
        return super().status(job, view)

    def cancelled(self, job: Job, view: View, changed: bool) -> Reply:
        return Reply(200, {"code": 200, "message": "success", "data": {"id": job.id, "status": "deleted"}})

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status, {"code": status, "message": message, "data": None}, headers)

    def webhook(self, moment: str, job: Job, view: View) -> Outgoing | None:
        if moment != TERMINAL or job.status == "cancelled":
            return None
        return Outgoing(orjson.dumps(self.prediction(job, view)), new_id("wh_"))

    def sign(self, out: Outgoing, job: Job, wall: float, secret: str) -> dict[str, str]:
        timestamp = str(int(wall))
        key = secret.removeprefix("whsec_").encode()
        digest = hmac.new(key, f"{out.event_id}.{timestamp}.".encode() + out.body, hashlib.sha256).hexdigest()
        return {"webhook-id": out.event_id, "webhook-timestamp": timestamp, "webhook-signature": f"v3,{digest}"}


__all__ = ["WaveSpeedDialect"]
