"""Runway's API: ``POST /v1/text_to_video`` or ``/v1/image_to_video`` (``Bearer`` and the required
``X-Runway-Version``), body ``model``, ``promptText``, ``promptImage`` and settings, answer
``{"id"}``; ``GET /v1/tasks/{id}``: ``PENDING``, ``THROTTLED`` (waiting because the
organisation's concurrency is used up: Runway queues rather than refusing), ``RUNNING`` with
``progress`` 0–1, ``SUCCEEDED`` with ``output[]``, ``FAILED`` with ``failure``/``failureCode``;
``DELETE /v1/tasks/{id}`` cancels (a cancelled task cannot be fetched again). No webhooks.
429 only past a limit (the daily one in real life; here, past ``queue_over_limit``)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..jobs import BadRequest, CreateRequest, Job, model_params, progress
from .base import CANCEL, CREATE, GET, Dialect, Reply, Route, Submission, View, extras, iso, optional_url, prompt_of

API_VERSION = "2024-11-06"
_ONE = re.compile(r"/v1/tasks/([^/]+)")
_STATUS = {"in_progress": "RUNNING", "completed": "SUCCEEDED", "failed": "FAILED", "cancelled": "CANCELLED"}


class RunwayDialect(Dialect):
    name = "runway"

    def match(self, method: str, path: str) -> Route | None:
        if method == "POST" and path in ("/v1/text_to_video", "/v1/image_to_video"):
            return Route(CREATE, model=path.rsplit("/", 1)[1])
        m = _ONE.fullmatch(path)
        if m is not None and method in ("GET", "DELETE"):
            return Route(GET if method == "GET" else CANCEL, m[1])
        return None

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        if headers.get("X-Runway-Version") != API_VERSION:
            raise BadRequest("X-Runway-Version", f"header is required and must be {API_VERSION}")
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("body", "must be a JSON object") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            raise BadRequest("model", "is required")
        image = optional_url(raw, "promptImage")
        if route.model == "image_to_video" and image is None:
            raise BadRequest("promptImage", "is required for image_to_video")
        prompt = prompt_of(raw, "promptText", "promptText")
        request = CreateRequest(model=f"{route.model}:{raw['model']}", prompt=prompt,
                                image_url=image, webhook_url=None, metadata={},
                                params=model_params(extras(raw, {"model", "promptText", "promptImage"})))
        return Submission(request)

    def created(self, job: Job, view: View) -> Reply:
        return Reply(200, {"id": job.id})

    def job_body(self, job: Job, view: View) -> dict[str, Any]:
        status = ("THROTTLED" if view.waiting else "PENDING") if job.status == "queued" else _STATUS[job.status]
        body: dict[str, Any] = {"id": job.id, "status": status, "createdAt": iso(job.created_at)}
        if job.status == "in_progress":
            body["progress"] = progress(job, view.now) / 100
        if job.status == "completed":
            body["output"] = [view.video_url(job)]
        if job.status == "failed":
            body["failure"] = (job.error or {}).get("message", "failed")
            body["failureCode"] = "INTERNAL.BAD_OUTPUT.CODE01"
        return body

    def status(self, job: Job, view: View) -> Reply:
        if job.status == "cancelled":
            return self.error(404, "Task not found")
        return super().status(job, view)

    def cancelled(self, job: Job, view: View, changed: bool) -> Reply:
        return Reply(204, None)

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        body: dict[str, Any] = {"error": message}
        if field is not None:
            body["issues"] = [{"path": [field], "message": message}]
        return Reply(status, body, headers)


__all__ = ["API_VERSION", "RunwayDialect"]
