"""Runway's API (kind ``runway``): polling only.

Submit ``POST {base}/v1/text_to_video`` (or ``image_to_video`` when the job has an image) with
``Authorization: Bearer`` and the required ``X-Runway-Version``; body ``model`` (the routing
table's provider model), ``promptText``, ``promptImage`` and the job's params (``ratio``,
``duration``, ``seed``…); the answer's ``id`` is the provider job id. Status ``GET
/v1/tasks/{id}``: ``PENDING`` and ``THROTTLED`` (waiting for the organisation's concurrency:
Runway queues excess tasks instead of refusing them) → queued, ``RUNNING`` → running with
``progress`` 0–1, ``SUCCEEDED`` → completed (``output[0]``), ``FAILED`` → failed
(``failureCode: failure``), ``CANCELLED`` → cancelled. Cancel ``DELETE /v1/tasks/{id}`` (a task
already gone is not an error). 429 means the daily limit; Runway asks for updates no more often
than every five seconds.

Runway has no webhooks (``callbacks = "none"``): the dispatcher follows each of its jobs with a
status call every ``FLOODGATE_PROVIDER_STATUS_POLL`` seconds (5 by default, as often as Runway
says its tasks change) until it ends, which is how its jobs start, progress and end; and
``authenticate_webhook`` refuses anything that claims to come from Runway.

Idempotency: Runway documents no idempotency key; a submission repeated after a crash between the
call and its record starts a second task.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from floodgate.errors import SchemaError, WebhookVerificationError

from .base import ProviderEvent, ProviderStatus, SubmitOrder, SubmitResult, WebhookDelivery
from .common import HttpConnector
from .http import HttpRequest, first_url, fraction, json_object, model_inputs, number, parsed, text
from .registry import register

DEFAULT_BASE_URL = "https://api.dev.runwayml.com"
API_VERSION = "2024-11-06"
STATES = {"PENDING": "queued", "THROTTLED": "queued", "RUNNING": "running", "SUCCEEDED": "completed",
          "FAILED": "failed", "CANCELLED": "cancelled"}


def submit_request(base_url: str, key: str, order: SubmitOrder, version: str = API_VERSION) -> HttpRequest:
    payload: dict[str, Any] = {**model_inputs(order.params), "model": order.model, "promptText": order.prompt}
    endpoint = "text_to_video"
    if order.image_url:
        payload["promptImage"] = order.image_url
        endpoint = "image_to_video"
    return HttpRequest("POST", f"{base_url}/v1/{endpoint}", {**_auth(key, version), "Content-Type": "application/json"},
                       orjson.dumps(payload))


def _auth(key: str, version: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Runway-Version": version, "Accept": "application/json"}


def parse_task(body: bytes) -> ProviderStatus:
    task = json_object(body)
    status = task.get("status")
    if status not in STATES:
        raise SchemaError(f"unknown Runway task status {status!r}")
    state = STATES[status]
    error = None
    if state == "failed":
        code, failure = task.get("failureCode"), task.get("failure") or "failed"
        error = f"{code}: {failure}" if code else str(failure)
    progress = 1.0 if state == "completed" else fraction(number(task, "progress")) if state == "running" else None
    return ProviderStatus(provider_job_id=text(task, "id"), state=state, progress=progress,
                          video_url=first_url(task.get("output")) if state == "completed" else None,
                          error=error[:300] if error else None)


@register("runway")
class RunwayProvider(HttpConnector):
    """Connection settings: ``api_key``; optional ``base_url``, ``api_version``, ``timeout``."""

    callbacks = "none"
    """Runway has no webhooks: its jobs are followed by status calls (``floodgate.following``)."""

    def __init__(self, name: str, api_key: str, *, base_url: str = DEFAULT_BASE_URL,
                 api_version: str = API_VERSION, timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, callback_secret=None, timeout=timeout, clock=clock)
        self._key, self._version = api_key, api_version
        self.base_url = base_url.rstrip("/")

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        answer = await self.call(session, submit_request(self.base_url, self._key, order, self._version))
        job_id: str = parsed(self.name, lambda body: text(json_object(body), "id"), answer.body)
        return SubmitResult(job_id, "queued")

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        url = f"{self.base_url}/v1/tasks/{quote(provider_job_id, safe='')}"
        answer = await self.call(session, HttpRequest("GET", url, _auth(self._key, self._version)))
        result: ProviderStatus = parsed(self.name, parse_task, answer.body)
        return result

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        url = f"{self.base_url}/v1/tasks/{quote(provider_job_id, safe='')}"
        await self.call(session, HttpRequest("DELETE", url, _auth(self._key, self._version)),
                        ok=lambda status: 200 <= status <= 299 or status == 404)

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        raise WebhookVerificationError(f"{self.name}: Runway sends no webhooks; its jobs are polled")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        raise SchemaError("Runway sends no webhooks")


__all__ = ["API_VERSION", "RunwayProvider", "parse_task", "submit_request"]
