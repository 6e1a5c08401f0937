"""Kling's API: ``POST /v1/videos/text2video`` or ``/image2video`` with a JWT (HS256, ``iss`` =
access key, ``exp``/``nbf``, signed with the secret key) as ``Bearer``; body ``model_name``,
``prompt``, ``image``, ``callback_url``, ``external_task_id`` and model settings (``duration`` a
string, ``"5"``: a number is refused, code 1201); answers
``{"code": 0, "message": "SUCCEED", "request_id", "data": {task}}``; ``GET
/v1/videos/{text2video|image2video}/{task_id}``. Statuses ``submitted``, ``processing``,
``succeed``, ``failed`` (reason in ``task_status_msg``). No cancel. A callback on every status
change with the task as body, unsigned. Over the limit: HTTP 429 with code 1303. A repeated
``external_task_id`` answers with the task it already named (Floodgate's idempotency)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jwt
import orjson

from ..jobs import BadRequest, CreateRequest, Job, model_params
from .base import (
    CREATE,
    GET,
    Dialect,
    Outgoing,
    Reply,
    Route,
    Submission,
    View,
    bearer,
    extras,
    new_id,
    optional_url,
    prompt_of,
)

_STATUS = {"queued": "submitted", "in_progress": "processing", "completed": "succeed", "failed": "failed",
           "cancelled": "failed"}
_ONE = re.compile(r"/v1/videos/(text2video|image2video)/([^/]+)")
_CODES = {400: 1201, 401: 1004, 404: 1203, 422: 1201, 429: 1303, 500: 5000, 503: 5001}
_KNOWN = {"model_name", "prompt", "image", "callback_url", "external_task_id"}


class KlingDialect(Dialect):
    name = "kling"

    def __init__(self, jwt_secret: str) -> None:
        self._jwt_secret = jwt_secret

    def match(self, method: str, path: str) -> Route | None:
        if method == "POST" and path in ("/v1/videos/text2video", "/v1/videos/image2video"):
            return Route(CREATE, model=path.rsplit("/", 1)[1])
        m = _ONE.fullmatch(path)
        if method == "GET" and m is not None:
            return Route(GET, m[2], m[1])
        return None

    def api_key(self, headers: Mapping[str, str], wall: float) -> str | None:
        token = bearer(headers)
        if token is None:
            return None
        try:
            claims = jwt.decode(token, self._jwt_secret, algorithms=["HS256"], leeway=5,
                                options={"require": ["iss", "exp"]})
        except jwt.PyJWTError:
            return None
        issuer = claims.get("iss")
        return issuer if isinstance(issuer, str) and issuer else None

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("body", "must be a JSON object") from None
        if not isinstance(raw, dict):
            raise BadRequest("body", "must be a JSON object")
        image = optional_url(raw, "image")
        if route.model == "image2video" and image is None:
            raise BadRequest("image", "is required for image2video")
        if "duration" in raw and not isinstance(raw["duration"], str):
            # Kling's duration is a string ("5", "10"); a number is not what it takes.
            raise BadRequest("duration", "must be a string such as \"5\" or \"10\"")
        external = raw.get("external_task_id")
        if external is not None and (not isinstance(external, str) or not 1 <= len(external) <= 255):
            raise BadRequest("external_task_id", "must be a string of 1-255 characters")
        model_name = raw.get("model_name", "kling-v1")
        request = CreateRequest(model=f"{route.model}:{model_name}", prompt=prompt_of(raw), image_url=image,
                                webhook_url=optional_url(raw, "callback_url"),
                                metadata={"external_task_id": external} if external else {},
                                params=model_params(extras(raw, _KNOWN)))
        return Submission(request, idempotency_key=external)

    def task(self, job: Job, view: View) -> dict[str, Any]:
        url = view.video_url(job)
        created = int(job.created_at * 1000)
        updated = int((job.completed_at or job.created_at) * 1000)
        task: dict[str, Any] = {"task_id": job.id, "task_status": _STATUS[job.status],
                                "task_info": {"external_task_id": job.request.metadata.get("external_task_id")},
                                "created_at": created, "updated_at": updated}
        if job.status in ("failed", "cancelled"):
            task["task_status_msg"] = (job.error or {}).get("message", "cancelled")
        if url:
            task["task_result"] = {"videos": [{"id": new_id(), "url": url, "duration": "5"}]}
        return task

    def job_body(self, job: Job, view: View) -> dict[str, Any]:
        return {"code": 0, "message": "SUCCEED", "request_id": new_id(), "data": self.task(job, view)}

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        code = _CODES.get(status, 1000 if status < 500 else 5000)
        text = "parallel task over resource pack limit" if status == 429 else message
        # Kling documents no Retry-After for 1303; an outage's 503 keeps one.
        headers = {"Retry-After": str(retry_after)} if retry_after is not None and status != 429 else {}
        return Reply(status, {"code": code, "message": text, "request_id": new_id()}, headers)

    def webhook(self, moment: str, job: Job, view: View) -> Outgoing | None:
        return Outgoing(orjson.dumps(self.task(job, view)), new_id("cb_"))


__all__ = ["KlingDialect"]
