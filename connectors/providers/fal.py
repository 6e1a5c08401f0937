"""fal's queue API (kind ``fal``).

Submit ``POST {queue}/{model}`` (``Authorization: Key``), the model input as the body (prompt,
``image_url``, the job's params) and ``?fal_webhook=`` a per-job callback. fal answers with a
``request_id`` and the status, response and cancel URLs; they sit under the model's app
(``owner/app``, the first two segments of the model id; the subpath is not part of them), so the
provider job id is ``{owner}/{app}/{request_id}``, from which they are rebuilt after a restart.
Status ``IN_QUEUE`` → queued (with fal's ``queue_position``), ``IN_PROGRESS`` → running,
``COMPLETED`` → look at the result: 2xx → completed (its video URL), 4xx → failed (fal reports
failures only there), 5xx → try again later. No percent progress.

The webhook comes once, at the end (``status`` ``OK`` / ``ERROR``), signed with Ed25519 over
``request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)``; the public keys are fal's JWKS, fetched
when first needed and kept at most ``jwks_max_age`` seconds (24 h at most; refetched sooner, at
most once a minute, when a signature matches none of the cached keys), timestamps within ±300 s.
An ``OK`` whose output fal could not put in the webhook (``payload`` null, ``payload_error``
set) did not fail: the bridge forwards fal's result for it instead (the ``GET`` of the
request), so a video fal made is not recorded as a failure.

Idempotency: fal's queue API documents no idempotency key; a submission repeated after a crash
between the call and its record queues a second request.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from floodgate.errors import ProviderError, SchemaError, WebhookVerificationError
from floodgate.headers import header
from floodgate.signing import MAX_TIMESTAMP_DIGITS

from . import callback
from .base import CONFIRMED_HEADER, ProviderEvent, ProviderStatus, SubmitOrder, SubmitResult, WebhookDelivery
from .common import HttpConnector, callback_extra, callback_job
from .http import HttpRequest, first_url, json_object, model_inputs, optional_text, parsed, text
from .registry import register

DEFAULT_BASE_URL = "https://queue.fal.run"
DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
MAX_JWKS_AGE = 24 * 3600.0
JWKS_RETRY = 60.0
TOLERANCE = 300.0
MAX_JWKS_BYTES = 64 * 1024
H_REQUEST, H_USER = "x-fal-webhook-request-id", "x-fal-webhook-user-id"
H_TIMESTAMP, H_SIGNATURE = "x-fal-webhook-timestamp", "x-fal-webhook-signature"
RESULT_READ = "result"
"""The ``CONFIRMED_HEADER`` of a delivery whose body is fal's result rather than its webhook."""


def app_of(model: str) -> str:
    """``owner/app`` of a model id such as ``fal-ai/kling-video/v2.1/master/text-to-video``."""
    parts = model.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise SchemaError(f"fal model {model!r} must be owner/app[/path]")
    return "/".join(parts[:2])


@dataclass(frozen=True)
class FalJob:
    """A provider job id ``{owner}/{app}/{request_id}`` taken apart."""

    app: str
    request_id: str

    @classmethod
    def parse(cls, provider_job_id: str) -> FalJob:
        app, _, request_id = provider_job_id.rpartition("/")
        if not request_id or app.count("/") != 1:
            raise SchemaError(f"not a fal job id: {provider_job_id!r}")
        return cls(app, request_id)

    def __str__(self) -> str:
        return f"{self.app}/{self.request_id}"

    def url(self, base: str, suffix: str = "") -> str:
        return f"{base}/{self.app}/requests/{quote(self.request_id, safe='')}{suffix}"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}", "Accept": "application/json"}


def submit_request(base_url: str, key: str, order: SubmitOrder, webhook: str | None) -> HttpRequest:
    payload: dict[str, Any] = {**model_inputs(order.params), "prompt": order.prompt}
    if order.image_url is not None:
        payload["image_url"] = order.image_url
    query = f"?{urlencode({'fal_webhook': webhook})}" if webhook else ""
    headers = {**_auth(key), "Content-Type": "application/json"}
    return HttpRequest("POST", f"{base_url}/{order.model.strip('/')}{query}", headers, orjson.dumps(payload))


def parse_submit(app: str, body: bytes) -> FalJob:
    return FalJob(app, text(json_object(body), "request_id"))


def parse_queue_status(job: FalJob, body: bytes) -> ProviderStatus | None:
    """The state from ``…/status``, or None for ``COMPLETED`` (the result decides how it ended)."""
    obj = json_object(body)
    status = obj.get("status")
    if status == "IN_QUEUE":
        position = obj.get("queue_position")
        position = position if isinstance(position, int) and not isinstance(position, bool) else None
        return ProviderStatus(str(job), "queued", None, None, None, queue_position=position)
    if status == "IN_PROGRESS":
        return ProviderStatus(str(job), "running", None, None, None)
    if status == "COMPLETED":
        return None
    raise SchemaError(f"unknown fal queue status {status!r}")


def error_text(obj: Any) -> str:
    """fal's ``detail`` (a string or a list of ``{msg}``) as one line; "" when there is none."""
    detail = obj.get("detail") if isinstance(obj, dict) else None
    if isinstance(detail, list):
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)[:300]
    if detail is None and obj is None:
        return ""
    return str(detail if detail is not None else obj)[:300]


def parse_result(job: FalJob, status: int, body: bytes) -> ProviderStatus:
    if 200 <= status <= 299:
        url = first_url(json_object(body))
        return ProviderStatus(str(job), "completed", 1.0, url, None)
    try:
        detail = error_text(orjson.loads(body))
    except orjson.JSONDecodeError:
        detail = body[:300].decode("utf-8", "replace")
    return ProviderStatus(str(job), "failed", None, None, f"HTTP {status}: {detail}")


def parse_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    if header(headers, CONFIRMED_HEADER) == RESULT_READ:
        return parse_result_event(headers, body)
    obj = json_object(body)
    request_id = text(obj, "request_id")
    app = callback_extra(headers)
    if not app:
        raise SchemaError("fal webhook without its app in the callback path")
    ok = obj.get("status") == "OK"
    if obj.get("status") not in ("OK", "ERROR"):
        raise SchemaError(f"unknown fal webhook status {obj.get('status')!r}")
    payload = obj.get("payload")
    url = first_url(payload) if ok else None
    error = None if ok else (optional_text(obj, "error") or error_text(payload) or "failed")
    if ok and url is None:
        ok, error = False, optional_text(obj, "payload_error") or "completed without a video URL"
    stamp = header(headers, H_TIMESTAMP) or ""
    return ProviderEvent(webhook_id=f"{request_id}:{obj.get('status')}", provider_job_id=f"{app}/{request_id}",
                         job_id=callback_job(headers), state="completed" if ok else "failed",
                         progress=1.0 if ok else None, video_url=url, error=error,
                         occurred_at=float(stamp) if stamp.isdigit() else time.time())


def parse_result_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    """The end of a request whose ``OK`` webhook had no output, told by fal's result (the
    delivery ``FalProvider.authenticate_webhook`` forwards: the result's body, the webhook's
    headers; its request id is the one the signature covered)."""
    request_id, app = header(headers, H_REQUEST) or "", callback_extra(headers)
    if not request_id or not app:
        raise SchemaError("fal result without its request id or app")
    url = first_url(json_object(body))
    stamp = header(headers, H_TIMESTAMP) or ""
    # The same webhook id as the OK it stands for: a redelivery of that OK is the same word.
    return ProviderEvent(webhook_id=f"{request_id}:OK", provider_job_id=f"{app}/{request_id}",
                         job_id=callback_job(headers), state="completed" if url else "failed",
                         progress=1.0 if url else None, video_url=url,
                         error=None if url else "completed without a video URL",
                         occurred_at=float(stamp) if stamp.isdigit() else time.time())


def without_output(obj: Mapping[str, Any]) -> bool:
    """An ``OK`` webhook that does not carry the output (fal could not serialise it)."""
    return obj.get("status") == "OK" and first_url(obj.get("payload")) is None


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    # surrogateescape: a received header that is not UTF-8 arrives with its bytes escaped, and
    # those bytes, as sent, are what was signed (strict encoding would raise on them).
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode(
        "utf-8", "surrogateescape")


def jwks_keys(body: bytes) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (``x`` base64url, padded or not); others are skipped."""
    keys = []
    entries = json_object(body).get("keys")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("crv") != "Ed25519" or not isinstance(entry.get("x"), str):
            continue
        x = entry["x"].rstrip("=")
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))))
        except (binascii.Error, ValueError):
            continue
    if not keys:
        raise SchemaError("JWKS holds no Ed25519 key")
    return keys


def verify_signature(keys: list[Ed25519PublicKey], headers: Mapping[str, str], body: bytes, *, now: float) -> None:
    """Raise ``WebhookVerificationError`` unless one of ``keys`` signed this fresh delivery."""
    values = {h: header(headers, h) for h in (H_REQUEST, H_USER, H_TIMESTAMP, H_SIGNATURE)}
    missing = [h for h, v in values.items() if not v]
    if missing:
        raise WebhookVerificationError(f"missing header: {', '.join(missing)}")
    stamp = str(values[H_TIMESTAMP]).strip()
    # Bounded before int(), which raises ValueError past 4,300 digits.
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError("bad timestamp format")
    if abs(now - int(stamp)) > TOLERANCE:
        raise WebhookVerificationError(f"timestamp {stamp} is more than {TOLERANCE:g}s from {int(now)}")
    try:
        signature = bytes.fromhex(str(values[H_SIGNATURE]).strip())
    except ValueError:
        raise WebhookVerificationError("signature is not hex") from None
    message = signed_message(str(values[H_REQUEST]), str(values[H_USER]), stamp, body)
    for key in keys:
        try:
            key.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise WebhookVerificationError("no matching signature")


@register("fal")
class FalProvider(HttpConnector):
    """Connection settings: ``api_key``, ``callback_secret``; optional ``base_url`` (the queue),
    ``jwks_url``, ``jwks_max_age`` (seconds, at most 24 h), ``timeout``."""

    callbacks = "end"
    """fal's only webhook is the end; its status tells a waiting job's place in its queue."""

    def __init__(self, name: str, api_key: str, callback_secret: str, *, base_url: str = DEFAULT_BASE_URL,
                 jwks_url: str = DEFAULT_JWKS_URL, jwks_max_age: float = MAX_JWKS_AGE, timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, callback_secret=callback_secret, timeout=timeout, clock=clock)
        self._key = api_key
        self.base_url = base_url.rstrip("/")
        self.jwks_url = jwks_url
        self._jwks_max_age = min(float(jwks_max_age), MAX_JWKS_AGE)
        self._keys: list[Ed25519PublicKey] = []
        self._keys_at = float("-inf")

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        app = app_of(order.model)
        answer = await self.call(session, submit_request(self.base_url, self._key, order,
                                                         self.callback_for(order, app)))
        job: FalJob = parsed(self.name, lambda body: parse_submit(app, body), answer.body)
        return SubmitResult(str(job), "queued")

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        job = FalJob.parse(provider_job_id)
        answer = await self.call(session, HttpRequest("GET", job.url(self.base_url, "/status"), _auth(self._key)))
        queued: ProviderStatus | None = parsed(self.name, lambda body: parse_queue_status(job, body), answer.body)
        if queued is not None:
            return queued
        result = await self.call(session, HttpRequest("GET", job.url(self.base_url), _auth(self._key)),
                                 ok=lambda status: status < 500 and status != 429)
        done: ProviderStatus = parsed(self.name, lambda body: parse_result(job, result.status, body), result.body)
        return replace(done, reads=2)  # (the status read, then the result's)

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        job = FalJob.parse(provider_job_id)
        # 400 ALREADY_COMPLETED: nothing left to stop, which is what cancel asks for.
        await self.call(session, HttpRequest("PUT", job.url(self.base_url, "/cancel"), _auth(self._key)),
                        ok=lambda status: 200 <= status <= 299 or status == 400)

    async def _jwks(self, session: aiohttp.ClientSession, *, refresh: bool) -> list[Ed25519PublicKey]:
        age = self._clock() - self._keys_at
        if self._keys and age < self._jwks_max_age and not (refresh and age >= JWKS_RETRY):
            return self._keys
        try:
            answer = await self.call(session, HttpRequest("GET", self.jwks_url, {"Accept": "application/json"}))
            if len(answer.body) > MAX_JWKS_BYTES:
                raise SchemaError("JWKS too large")
            self._keys, self._keys_at = jwks_keys(answer.body), self._clock()
        except (ProviderError, SchemaError) as exc:
            if not self._keys or age >= MAX_JWKS_AGE:
                raise WebhookVerificationError(f"{self.name}: no usable JWKS: {exc}") from exc
        return self._keys

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        self.job_of(delivery.callback)
        try:
            verify_signature(await self._jwks(session, refresh=False), delivery.headers, delivery.body, now=now)
        except WebhookVerificationError as exc:
            if not str(exc).startswith("no matching signature"):
                raise
            # fal may have rotated its keys since we fetched them.
            verify_signature(await self._jwks(session, refresh=True), delivery.headers, delivery.body, now=now)
        try:
            obj = json_object(delivery.body)
        except SchemaError as exc:
            raise WebhookVerificationError(f"signed body is not a JSON object: {exc}") from exc
        request_id = obj.get("request_id")
        if header(delivery.headers, H_REQUEST) != request_id:
            raise WebhookVerificationError("signed request id differs from the body's")
        if without_output(obj):
            return await self._result_for(session, delivery, str(request_id))
        return delivery

    async def _result_for(self, session: aiohttp.ClientSession, delivery: WebhookDelivery,
                          request_id: str) -> WebhookDelivery:
        """The delivery to forward for an ``OK`` without its output: fal's result of the request.
        A result fal refuses (4xx) leaves the webhook as it came (it then tells a failure, with
        fal's ``payload_error``); one fal cannot give now (429, 5xx, network) raises, so the
        bridge answers 503 and fal delivers the webhook again later."""
        job = FalJob(callback.split(delivery.callback)[2], request_id)
        result = await self.call(session, HttpRequest("GET", job.url(self.base_url), _auth(self._key)),
                                 ok=lambda status: status < 500 and status != 429)
        if not 200 <= result.status <= 299:
            return delivery
        return WebhookDelivery({**delivery.headers, CONFIRMED_HEADER: RESULT_READ}, result.body, delivery.callback)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)


__all__ = ["FalJob", "FalProvider", "app_of", "jwks_keys", "parse_event", "parse_queue_status", "parse_result",
           "signed_message", "submit_request", "verify_signature"]
