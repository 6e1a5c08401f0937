"""WaveSpeed's v3 API (kind ``wavespeed``).

Submit ``POST {base}/api/v3/{model}`` (``Authorization: Bearer``), the model input as the body
(prompt, ``image``, the job's params), ``?webhook=`` a per-job callback. Answers are wrapped in
``{"code", "message", "data"}``; ``data.id`` is the provider job id. Status ``GET
/api/v3/predictions/{id}/result``: ``created`` → queued, ``processing`` → running, ``completed`` →
completed (``outputs[0]``), ``failed`` → failed (``error``). No progress, no queue position.
Cancel is ``DELETE /api/v3/predictions/{id}`` (the prediction is deleted; one already gone is
not an error).

The webhook comes once, at the end, with the prediction as body, signed with WaveSpeed's own
scheme: ``webhook-signature: v3,<hex HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``
keyed with the account secret's text after ``whsec_`` (not base64-decoded, unlike Standard
Webhooks), timestamps within ±300 s.

Idempotency: WaveSpeed documents no idempotency key; a submission repeated after a crash between
the call and its record creates a second prediction.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from floodgate.errors import SchemaError, WebhookVerificationError
from floodgate.headers import header
from floodgate.signing import MAX_SIGNATURES, MAX_TIMESTAMP_DIGITS

from .base import (
    ProviderEvent,
    ProviderStatus,
    SubmitOrder,
    SubmitResult,
    WebhookDelivery,
    error_for_response,
)
from .common import HttpConnector, callback_job, timestamp
from .http import HttpRequest, first_url, json_object, member, model_inputs, parsed, text
from .registry import register

DEFAULT_BASE_URL = "https://api.wavespeed.ai"
STATES = {"created": "queued", "processing": "running", "completed": "completed", "failed": "failed"}
TOLERANCE = 300.0
H_ID, H_TIMESTAMP, H_SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"


def _digest(secret: str, webhook_id: str, stamp: str, body: bytes) -> bytes:
    key = secret.removeprefix("whsec_").encode("utf-8")
    # surrogateescape: a received header that is not UTF-8 arrives with its bytes escaped, and
    # those bytes, as sent, are what was signed (strict encoding would raise on them).
    signed = f"{webhook_id}.{stamp}.".encode("utf-8", "surrogateescape") + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def signature(secret: str, webhook_id: str, stamp: str, body: bytes) -> str:
    """The hex digest WaveSpeed puts after ``v3,``."""
    return _digest(secret, webhook_id, stamp, body).hex()


def _candidates(signed: str) -> Iterable[bytes]:
    """The decoded ``v3`` digests of a ``webhook-signature`` header; other schemes and entries
    that are not hex (in either case) are skipped, so only bytes are ever compared."""
    for entry in signed.split():
        version, _, digest = entry.partition(",")
        if version != "v3":
            continue
        try:
            yield bytes.fromhex(digest)
        except ValueError:
            continue


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
    """Raise ``WebhookVerificationError`` unless the delivery carries a fresh, matching ``v3``
    signature. At most ``MAX_SIGNATURES`` ``v3`` entries of the header are checked, so a forged
    header costs a bounded amount of work."""
    webhook_id, stamp, signed = (header(headers, h) for h in (H_ID, H_TIMESTAMP, H_SIGNATURE))
    if not webhook_id or not stamp or not signed:
        raise WebhookVerificationError("missing header: webhook-id, webhook-timestamp or webhook-signature")
    stamp = stamp.strip()
    # Bounded before int(), which raises ValueError past 4,300 digits.
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError("bad timestamp format")
    if abs(now - int(stamp)) > TOLERANCE:
        raise WebhookVerificationError(f"timestamp {stamp} is more than {TOLERANCE:g}s from {int(now)}")
    expected = _digest(secret, webhook_id, stamp, body)
    # Every candidate is compared (no early exit), so timing does not tell which one matched.
    matched = False
    for candidate in itertools.islice(_candidates(signed), MAX_SIGNATURES):
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": "application/json"}


def submit_request(base_url: str, key: str, order: SubmitOrder, webhook: str | None, *,
                   image_field: str = "image") -> HttpRequest:
    payload: dict[str, Any] = {**model_inputs(order.params), "prompt": order.prompt}
    if order.image_url is not None:
        payload[image_field] = order.image_url
    query = f"?{urlencode({'webhook': webhook})}" if webhook else ""
    headers = {**_auth(key), "Content-Type": "application/json"}
    return HttpRequest("POST", f"{base_url}/api/v3/{order.model.strip('/')}{query}", headers, orjson.dumps(payload))


def status_from_prediction(data: Mapping[str, Any]) -> ProviderStatus:
    status = data.get("status")
    if status not in STATES:
        raise SchemaError(f"unknown WaveSpeed status {status!r}")
    state = STATES[status]
    error = data.get("error") or None
    return ProviderStatus(provider_job_id=text(data, "id"), state=state, progress=1.0 if state == "completed" else None,
                          video_url=first_url(data.get("outputs")) if state == "completed" else None,
                          error=(str(error) if error else "failed") if state == "failed" else None)


def unwrap(body: bytes) -> dict[str, Any]:
    """``data`` of a ``{"code", "message", "data"}`` answer; a non-200 ``code`` is that HTTP error."""
    obj = json_object(body)
    code = obj.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and code != 200:
        raise error_for_response(code, {}, str(obj.get("message", "")), time.time())
    return member(obj, "data")


def parse_answer(body: bytes) -> ProviderStatus:
    return status_from_prediction(unwrap(body))


def parse_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    data = json_object(body)
    status = status_from_prediction(data)
    stamp = header(headers, H_TIMESTAMP) or ""
    return ProviderEvent(webhook_id=header(headers, H_ID) or f"{status.provider_job_id}:{data.get('status')}",
                         provider_job_id=status.provider_job_id, job_id=callback_job(headers), state=status.state,
                         progress=status.progress, video_url=status.video_url, error=status.error,
                         occurred_at=float(stamp) if stamp.isdigit() else timestamp(data.get("created_at"),
                                                                                    time.time()))


@register("wavespeed")
class WaveSpeedProvider(HttpConnector):
    """Connection settings: ``api_key``, ``webhook_secret`` (from ``GET /api/v3/webhook/secret``),
    ``callback_secret``; optional ``base_url``, ``image_field`` (default ``image``), ``timeout``."""

    callbacks = "end"
    """WaveSpeed's webhook comes once, at the end: a job is followed by status calls until it starts."""

    def __init__(self, name: str, api_key: str, webhook_secret: str, callback_secret: str, *,
                 base_url: str = DEFAULT_BASE_URL, image_field: str = "image", timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, callback_secret=callback_secret, timeout=timeout, clock=clock)
        self._key = api_key
        self._webhook_secret = webhook_secret
        self.base_url = base_url.rstrip("/")
        self._image_field = image_field

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        request = submit_request(self.base_url, self._key, order, self.callback_for(order),
                                 image_field=self._image_field)
        answer = await self.call(session, request)
        status: ProviderStatus = parsed(self.name, parse_answer, answer.body)
        return SubmitResult(status.provider_job_id, status.state)

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        url = f"{self.base_url}/api/v3/predictions/{quote(provider_job_id, safe='')}/result"
        answer = await self.call(session, HttpRequest("GET", url, _auth(self._key)))
        result: ProviderStatus = parsed(self.name, parse_answer, answer.body)
        return result

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        url = f"{self.base_url}/api/v3/predictions/{quote(provider_job_id, safe='')}"
        await self.call(session, HttpRequest("DELETE", url, _auth(self._key)),
                        ok=lambda status: 200 <= status <= 299 or status == 404)

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        self.job_of(delivery.callback)
        verify(self._webhook_secret, delivery.headers, delivery.body, now=now)
        return delivery

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)


__all__ = ["WaveSpeedProvider", "parse_answer", "parse_event", "signature", "status_from_prediction",
           "submit_request", "verify"]
