"""Replicate's predictions API (kind ``replicate``).

Submit ``POST /v1/models/{owner}/{name}/predictions`` (or ``POST /v1/predictions`` with a
``version`` when the model names one as ``owner/name:version``), ``Authorization: Bearer``; the
prediction's ``id`` is the provider job id. Statuses: ``starting`` → queued, ``processing`` →
running, ``succeeded`` → completed, ``failed`` → failed, ``canceled`` → cancelled, ``aborted``
(a ``Cancel-After`` deadline passed before it started) → failed. No progress and no queue
position. 429s say when to retry in the body (``retry_after``), which is honoured when no
Retry-After header comes.

Webhooks (``webhook`` + ``webhook_events_filter: ["start", "completed"]``) are signed the Standard
Webhooks way with the account's ``whsec_`` secret and checked by ``floodgate.signing`` (±5 min),
on a per-job callback path. Output URLs expire after an hour.

Idempotency: Replicate has no idempotency key, so a submission repeated after a crash between
the call and its record creates a second prediction (the first one runs unwatched until it ends
or its ``cancel_after`` deadline cancels it).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from floodgate import signing
from floodgate.errors import SchemaError
from floodgate.headers import header

from .base import ProviderEvent, ProviderStatus, SubmitOrder, SubmitResult, WebhookDelivery
from .common import HttpConnector, callback_job, timestamp
from .http import HttpRequest, first_url, json_object, model_inputs, parsed, text
from .registry import register

DEFAULT_BASE_URL = "https://api.replicate.com"
STATES = {"starting": "queued", "processing": "running", "succeeded": "completed", "failed": "failed",
          "canceled": "cancelled", "aborted": "failed"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def submit_request(base_url: str, token: str, order: SubmitOrder, webhook: str | None, *,
                   image_field: str = "image", cancel_after: str | None = None) -> HttpRequest:
    """The create call for ``order``: its prompt, image and params become the model's ``input``."""
    inp: dict[str, Any] = {**model_inputs(order.params), "prompt": order.prompt}
    if order.image_url is not None:
        inp[image_field] = order.image_url
    payload: dict[str, Any] = {"input": inp}
    model, _, version = order.model.partition(":")
    if version:
        payload["version"] = version
        url = f"{base_url}/v1/predictions"
    else:
        owner, _, name = model.partition("/")
        url = f"{base_url}/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions"
    if webhook is not None:
        payload["webhook"] = webhook
        payload["webhook_events_filter"] = ["start", "completed"]
    headers = {**_auth(token), "Content-Type": "application/json"}
    if cancel_after:
        headers["Cancel-After"] = cancel_after
    return HttpRequest("POST", url, headers, orjson.dumps(payload))


def status_from_prediction(pred: Mapping[str, Any]) -> ProviderStatus:
    status = pred.get("status")
    if status not in STATES:
        raise SchemaError(f"unknown prediction status {status!r}")
    state = STATES[status]
    error = pred.get("error")
    if status == "aborted" and not error:
        error = "aborted: its deadline passed before it started"
    return ProviderStatus(provider_job_id=text(pred, "id"), state=state, progress=1.0 if state == "completed" else None,
                          video_url=first_url(pred.get("output")) if state == "completed" else None,
                          error=str(error) if error and state == "failed" else None)


def parse_prediction(body: bytes) -> ProviderStatus:
    return status_from_prediction(json_object(body))


def parse_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    pred = json_object(body)
    status = status_from_prediction(pred)
    when = pred.get("completed_at") or pred.get("started_at") or pred.get("created_at")
    webhook_id = header(headers, signing.HEADER_ID) or f"{status.provider_job_id}:{pred.get('status')}"
    return ProviderEvent(webhook_id=webhook_id, provider_job_id=status.provider_job_id, job_id=callback_job(headers),
                         state=status.state, progress=status.progress, video_url=status.video_url,
                         error=status.error, occurred_at=timestamp(when, time.time()))


@register("replicate")
class ReplicateProvider(HttpConnector):
    """Connection settings: ``api_token``, ``webhook_secret`` (``whsec_…``, from
    ``GET /v1/webhooks/default/secret``), ``callback_secret``; optional ``base_url``,
    ``image_field`` (the model input that takes the image, default ``image``), ``cancel_after``
    (a ``Cancel-After`` deadline such as ``"30m"``), ``timeout``."""

    status_rate_per_second = 50.0
    """Replicate's limit for every endpoint but creation: 3,000 requests a minute (creation: 600).
    The routing file's ``status_rate_per_second`` overrides it (an account that shares the limit
    with other clients)."""

    def __init__(self, name: str, api_token: str, webhook_secret: str, callback_secret: str, *,
                 base_url: str = DEFAULT_BASE_URL, image_field: str = "image", cancel_after: str | None = None,
                 timeout: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, callback_secret=callback_secret, timeout=timeout, clock=clock)
        self._token = api_token
        self._webhook_secret = webhook_secret
        signing.secret_key(webhook_secret)  # a malformed secret fails at start
        self.base_url = base_url.rstrip("/")
        self._image_field = image_field
        self._cancel_after = cancel_after

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        request = submit_request(self.base_url, self._token, order, self.callback_for(order),
                                 image_field=self._image_field, cancel_after=self._cancel_after)
        answer = await self.call(session, request)
        status: ProviderStatus = parsed(self.name, parse_prediction, answer.body)
        return SubmitResult(status.provider_job_id, status.state)

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        url = f"{self.base_url}/v1/predictions/{quote(provider_job_id, safe='')}"
        answer = await self.call(session, HttpRequest("GET", url, _auth(self._token)))
        result: ProviderStatus = parsed(self.name, parse_prediction, answer.body)
        return result

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        url = f"{self.base_url}/v1/predictions/{quote(provider_job_id, safe='')}/cancel"
        await self.call(session, HttpRequest("POST", url, _auth(self._token)))

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        self.job_of(delivery.callback)
        signing.verify(self._webhook_secret, delivery.headers, delivery.body, now=now)
        return delivery

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)


__all__ = ["ReplicateProvider", "parse_event", "parse_prediction", "status_from_prediction", "submit_request"]
