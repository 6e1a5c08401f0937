"""RunPod serverless endpoints (kind ``runpod``).

Submit ``POST {base}/v2/{endpoint}/run`` (``Authorization: Bearer``) with ``{"input": {prompt,
image_url, …params}, "webhook": <per-job callback>, "policy"?}``; the model in the routing
table is the endpoint id, and the provider job id is ``{endpoint}/{id}``. Status ``GET
/v2/{endpoint}/status/{id}``: ``IN_QUEUE`` → queued, ``IN_PROGRESS``/``RUNNING`` → running,
``COMPLETED`` → completed (the first URL in ``output``), ``FAILED`` → failed, ``TIMED_OUT`` →
failed (expired in the queue, or its worker went quiet), ``CANCELLED`` → cancelled. Cancel ``POST
/v2/{endpoint}/cancel/{id}``. RunPod sends no Retry-After on 429 (its queue is full): the
submitter's backoff applies.

RunPod does not sign its webhook (the status object, at the end). A callback is accepted only on
its per-job path, and then not believed: the bridge forwards RunPod's own answer to a status
call about that job, so a forged "COMPLETED" for a job still rendering records "running".

Idempotency: RunPod has no idempotency key; a submission repeated after a crash between the call
and its record runs the job twice. A ``policy`` (``executionTimeout``, ``ttl``) from the
connection settings bounds such strays.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from floodgate.errors import SchemaError, WebhookVerificationError

from .base import ProviderEvent, ProviderStatus, SubmitOrder, SubmitResult, WebhookDelivery
from .common import HttpConnector, callback_extra, callback_job, confirmed
from .http import HttpRequest, first_url, json_object, model_inputs, parsed, text
from .registry import register

DEFAULT_BASE_URL = "https://api.runpod.ai"
STATES = {"IN_QUEUE": "queued", "IN_PROGRESS": "running", "RUNNING": "running", "COMPLETED": "completed",
          "FAILED": "failed", "TIMED_OUT": "failed", "CANCELLED": "cancelled"}


@dataclass(frozen=True)
class RunPodJob:
    endpoint: str
    job_id: str

    @classmethod
    def parse(cls, provider_job_id: str) -> RunPodJob:
        endpoint, _, job_id = provider_job_id.partition("/")
        if not endpoint or not job_id or "/" in job_id:
            raise SchemaError(f"not a RunPod job id: {provider_job_id!r}")
        return cls(endpoint, job_id)

    def __str__(self) -> str:
        return f"{self.endpoint}/{self.job_id}"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": "application/json"}


def submit_request(base_url: str, key: str, order: SubmitOrder, webhook: str | None,
                   policy: Mapping[str, Any] | None = None) -> HttpRequest:
    inp: dict[str, Any] = {**model_inputs(order.params), "prompt": order.prompt}
    if order.image_url is not None:
        inp["image_url"] = order.image_url
    payload: dict[str, Any] = {"input": inp}
    if webhook is not None:
        payload["webhook"] = webhook
    if policy:
        payload["policy"] = dict(policy)
    headers = {**_auth(key), "Content-Type": "application/json"}
    return HttpRequest("POST", f"{base_url}/v2/{quote(order.model, safe='')}/run", headers, orjson.dumps(payload))


def status_from(endpoint: str, obj: Mapping[str, Any]) -> ProviderStatus:
    status = obj.get("status")
    if status not in STATES:
        raise SchemaError(f"unknown RunPod status {status!r}")
    state = STATES[status]
    error = obj.get("error")
    if state == "failed":
        error = "timed out" if status == "TIMED_OUT" and not error else (error or "failed")
    return ProviderStatus(provider_job_id=f"{endpoint}/{text(obj, 'id')}", state=state,
                          progress=1.0 if state == "completed" else None,
                          video_url=first_url(obj.get("output")) if state == "completed" else None,
                          error=str(error)[:300] if state == "failed" else None)


def parse_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    """A confirmed delivery: its body is RunPod's status answer (see ``RunPodProvider``)."""
    obj = json_object(body)
    endpoint = callback_extra(headers)
    if not endpoint:
        raise SchemaError("RunPod callback without its endpoint in the callback path")
    status = status_from(endpoint, obj)
    return ProviderEvent(webhook_id=f"{status.provider_job_id}:{obj.get('status')}",
                         provider_job_id=status.provider_job_id, job_id=callback_job(headers), state=status.state,
                         progress=status.progress, video_url=status.video_url, error=status.error,
                         occurred_at=time.time())


@register("runpod")
class RunPodProvider(HttpConnector):
    """Connection settings: ``api_key``, ``callback_secret``; optional ``base_url``, ``policy``
    (RunPod's per-job ``executionTimeout``/``ttl``/``lowPriority``), ``timeout``."""

    callbacks = "end"
    """RunPod's webhook comes once, at the end: a job is followed by status calls until it starts."""
    status_rate_per_second = 200.0
    """RunPod's limit on ``/status`` per endpoint: 2,000 requests in 10 seconds."""

    def __init__(self, name: str, api_key: str, callback_secret: str, *, base_url: str = DEFAULT_BASE_URL,
                 policy: Mapping[str, Any] | None = None, timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, callback_secret=callback_secret, timeout=timeout, clock=clock)
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self._policy = dict(policy or {})

    def _url(self, job: RunPodJob, verb: str) -> str:
        return f"{self.base_url}/v2/{quote(job.endpoint, safe='')}/{verb}/{quote(job.job_id, safe='')}"

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        request = submit_request(self.base_url, self._key, order, self.callback_for(order, order.model), self._policy)
        answer = await self.call(session, request)
        status: ProviderStatus = parsed(self.name, lambda body: status_from(order.model, json_object(body)),
                                        answer.body)
        return SubmitResult(status.provider_job_id, status.state)

    async def _status_body(self, session: aiohttp.ClientSession, provider_job_id: str) -> bytes:
        job = RunPodJob.parse(provider_job_id)
        return (await self.call(session, HttpRequest("GET", self._url(job, "status"), _auth(self._key)))).body

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        endpoint = RunPodJob.parse(provider_job_id).endpoint
        body = await self._status_body(session, provider_job_id)
        result: ProviderStatus = parsed(self.name, lambda b: status_from(endpoint, json_object(b)), body)
        return result

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        job = RunPodJob.parse(provider_job_id)
        await self.call(session, HttpRequest("POST", self._url(job, "cancel"), _auth(self._key)))

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        endpoint = self.job_of(delivery.callback).extra
        try:
            claimed = RunPodJob(endpoint, text(json_object(delivery.body), "id"))
        except SchemaError as exc:
            raise WebhookVerificationError(f"callback names no RunPod job: {exc}") from exc
        return await confirmed(delivery, str(claimed), lambda job: self._status_body(session, job))

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)


__all__ = ["RunPodJob", "RunPodProvider", "parse_event", "status_from", "submit_request"]
