"""fal's queue API (kind ``fal``).

Submit ``POST {queue}/{model}`` (``Authorization: Key``), the model input as the body (prompt,
``image_url``, the job's params) and ``?fal_webhook=`` a per-job callback. fal answers with a
``request_id`` and the status, response and cancel URLs, which are the ones to use: they sit
under the model's app, not under the model id (the subpath is not part of them). The app is
``owner/app``, the first two segments of the model id, or three for the namespaced ids fal's own
clients know (``workflows/owner/app``, ``comfy/owner/app``: ``NAMESPACES``).
Status ``IN_QUEUE`` → queued (with fal's ``queue_position``), ``IN_PROGRESS`` → running,
``COMPLETED`` → look at the result: 2xx → completed (its video URL), 4xx → failed (fal reports
failures only there), 5xx → try again later. No percent progress.

The provider job id is ``{app path}/{request_id}``, where the app path is where fal's returned
URLs sit: ``{queue}/{app path}/requests/{request_id}[/status|/cancel]``. fal's URLs are kept in
that form rather than whole because that is all they hold beyond our queue's address, and
because the form needs nothing new: it is the id every earlier release wrote
(``owner/app/request_id``, still on Kafka records and tables after an upgrade, read the same
way: everything before the last ``/`` is the app path), it stays short and printable (each
segment ``[A-Za-z0-9._~-]``, at most ``MAX_JOB_ID`` characters; fal's URLs carry no secret, and
the key is only ever sent to ``base_url``), and it is the id a webhook tells, which names the
app before fal answers (the callback path's extra). When fal's URLs are the ones ``app_of``
foresaw, the id is exactly the rebuilt one; when they name another app (one of a namespace the
connector does not know), the id carries fal's app path, which status, result and cancel then
follow, after a restart too: the stored id is all they are given. So the connector remembers
the app fal's URLs named for a model (per process, at most ``MAX_LEARNED`` models) and names it
in the callback path of the model's later requests: their webhooks, and the result read for an
``OK`` without its output, then name fal's app. The requests sent before fal first answered for
such a model (in each process) cannot be named alike: their callback path was fixed before fal
named the app, and nothing in fal's webhook names it. Their webhook names the job
``{foreseen app}/{request_id}``, their slot ``{fal's app}/{request_id}``: one job all the same,
fal's request ids being UUIDs, unique whatever the app. So two ids name one job when their
request ids are equal (``same_job``): the bridge's release frees such a job's slot, and the
jobs agent knows the bridge sent it. An ``OK`` without its output among them finds no result
under the foreseen app (fal answers 404 there): it is forwarded marked ``RESULT_ELSEWHERE`` and
tells no end, only that the job is running; the dispatcher's late poll (``FLOODGATE_POLL_AFTER``)
asks fal by the id the slot recorded and reads the result where fal keeps it, so a video fal
made is not recorded as a failure. Only the path of fal's URLs is taken, and only from URLs on
``base_url``'s host (or fal's documented backup queue host): every call goes to ``base_url``, so
an answer cannot send us, or our key, anywhere else. URLs on another host, of another shape, or
missing are not an error (fal did queue the request, and a retry would queue a second one): they
are rebuilt from ``app_of``, as before (``app_of_urls``).

The webhook comes once, at the end (``status`` ``OK`` / ``ERROR``), signed with Ed25519 over
``request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)``; the public keys are fal's JWKS, fetched
when first needed and kept at most ``jwks_max_age`` seconds (24 h at most; refetched sooner, at
most once a minute, when a signature matches none of the cached keys), timestamps within ±300 s.
An ``OK`` whose output fal could not put in the webhook (``payload`` null, ``payload_error``
set) did not fail: the bridge forwards fal's result for it instead (the ``GET`` of the
request, under the callback path's app; see above for a result fal keeps under another), so a
video fal made is not recorded as a failure.

Idempotency: fal's queue API documents no idempotency key; a submission repeated after a crash
between the call and its record queues a second request.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import SplitResult, quote, urlencode, urlsplit

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

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://queue.fal.run"
BACKUP_BASE_URL = "https://queue.falrun.com"
"""fal's backup queue host (its queue OpenAPI spec): URLs fal returns on it are fal's too."""
DEFAULT_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
MAX_JWKS_AGE = 24 * 3600.0
JWKS_RETRY = 60.0
TOLERANCE = 300.0
MAX_JWKS_BYTES = 64 * 1024
H_REQUEST, H_USER = "x-fal-webhook-request-id", "x-fal-webhook-user-id"
H_TIMESTAMP, H_SIGNATURE = "x-fal-webhook-timestamp", "x-fal-webhook-signature"
RESULT_READ = "result"
"""The ``CONFIRMED_HEADER`` of a delivery whose body is fal's result rather than its webhook."""
RESULT_ELSEWHERE = "result-elsewhere"
"""The ``CONFIRMED_HEADER`` of an ``OK`` without its output whose result fal did not find under the
callback path's app: the job's app is another, named only by the id its slot recorded."""


NAMESPACES = ("workflows", "comfy")
"""First segments that make an app id three segments long, as fal's own clients read model ids
(fal-ai/fal-js ``libs/client/src/utils.ts``, ``ENDPOINT_NAMESPACES`` in ``parseEndpointId``)."""
MAX_APP_SEGMENTS = 6
MAX_SEGMENT = 100
MAX_REQUEST_ID = 128
MAX_JOB_ID = MAX_APP_SEGMENTS * (MAX_SEGMENT + 1) + MAX_REQUEST_ID
MAX_URL = 2048
MAX_LEARNED = 1024
"""Models whose app, as fal's URLs named it, differs from the one foreseen, remembered per process."""
_SEGMENT = re.compile(rf"[A-Za-z0-9._~-]{{1,{MAX_SEGMENT}}}")
# fal's request ids are UUIDs; any printable ASCII but "/" and space is taken (quoted in URLs).
_REQUEST_ID = re.compile(rf"[!-.0-~]{{1,{MAX_REQUEST_ID}}}")
_SUFFIXES = {"status_url": "/status", "response_url": "", "cancel_url": "/cancel"}


def _app_path(segments: list[str]) -> bool:
    """Segments that may form an app path: 2 to ``MAX_APP_SEGMENTS`` URL-safe, printable names."""
    return 2 <= len(segments) <= MAX_APP_SEGMENTS and all(
        _SEGMENT.fullmatch(part) and part not in (".", "..") for part in segments)


def app_of(model: str) -> str:
    """The app a model id's requests are queued on, as fal's clients name it: ``owner/app`` of
    ``fal-ai/kling-video/v2.1/master/text-to-video``, ``workflows/owner/app`` of
    ``workflows/owner/app[/path]``. Known before fal answers, so it is what the callback path
    carries and what the URLs are rebuilt from when fal's own cannot be used."""
    parts = model.strip("/").split("/")
    size = 3 if parts[0] in NAMESPACES else 2
    if len(parts) < size or not _app_path(parts[:size]):
        raise SchemaError(f"fal model {model[:200]!r} must be owner/app[/path] or namespace/owner/app[/path]")
    return "/".join(parts[:size])


@dataclass(frozen=True)
class FalJob:
    """A provider job id ``{app path}/{request_id}`` taken apart (see the module's docstring)."""

    app: str
    request_id: str

    def __post_init__(self) -> None:
        if not _app_path(self.app.split("/")) or not _REQUEST_ID.fullmatch(self.request_id):
            raise SchemaError(f"not a fal job: app {self.app[:200]!r}, request {self.request_id[:200]!r}")

    @classmethod
    def parse(cls, provider_job_id: str) -> FalJob:
        if len(provider_job_id) > MAX_JOB_ID:
            raise SchemaError(f"not a fal job id: {provider_job_id[:200]!r}…")
        app, _, request_id = provider_job_id.rpartition("/")
        try:
            return cls(app, request_id)
        except SchemaError:
            raise SchemaError(f"not a fal job id: {provider_job_id!r}") from None

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


def _origin(url: SplitResult) -> tuple[str, str | None, int | None]:
    return url.scheme.lower(), url.hostname, url.port  # (.port raises ValueError when not a number)


def app_of_urls(base_url: str, request_id: str, answer: Mapping[str, Any]) -> str | None:
    """The app path fal's returned status, response and cancel URLs sit under, or None when they
    cannot be followed: none given; one on another scheme, host or port than ``base_url`` (or,
    for fal's own queue, its documented backup host); one not of the shape
    ``{base_url}/{app path}/requests/{request_id}{/status|""|/cancel}`` (what else it might hold
    would not survive in a provider job id); or the three not agreeing on the app. Only the path
    is taken: every call still goes to ``base_url``, so an answer never sends us, or our key,
    anywhere else."""
    base = urlsplit(base_url)
    origins = {_origin(base)}
    if base_url.rstrip("/") == DEFAULT_BASE_URL:
        origins.add(_origin(urlsplit(BACKUP_BASE_URL)))
    prefix = base.path.rstrip("/") + "/"
    apps: set[str] = set()
    for field_name, suffix in _SUFFIXES.items():
        value = answer.get(field_name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_URL:
            return None
        try:
            url = urlsplit(value)
            trusted = _origin(url) in origins
        except ValueError:
            return None
        if not trusted or url.username is not None or url.query or url.fragment:
            return None
        tail = f"/requests/{quote(request_id, safe='')}{suffix}"
        path = url.path.rstrip("/") if suffix == "" else url.path
        if not path.startswith(prefix) or not path.endswith(tail):
            return None
        app = path[len(prefix):len(path) - len(tail)]
        if not _app_path(app.split("/")):
            return None
        apps.add(app)
    return apps.pop() if len(apps) == 1 else None


def parse_submit(base_url: str, app: str, body: bytes) -> FalJob:
    """The job fal queued: under the app path of the URLs fal returned (``app_of_urls``), else
    under ``app`` (``app_of`` the model), rebuilt as earlier releases did."""
    obj = json_object(body)
    request_id = text(obj, "request_id")
    returned = app_of_urls(base_url, request_id, obj)
    if returned is None and any(obj.get(name) is not None for name in _SUFFIXES):
        # Not an error: fal did queue the request (a retry would queue a second one, fal taking no
        # idempotency key), and the rebuilt URLs are what every earlier release used.
        log.warning("fal answered request %r with URLs that are not under %s; rebuilding them under %s",
                    request_id[:MAX_REQUEST_ID], base_url, app)
    elif returned is not None and returned != app:
        log.info("fal queued request %r on %s, not %s: following fal's URLs, and naming that app in the "
                 "callback path of the model's later requests", request_id[:MAX_REQUEST_ID], returned, app)
    return FalJob(returned or app, request_id)


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
    stamp = header(headers, H_TIMESTAMP) or ""
    if ok and url is None and header(headers, CONFIRMED_HEADER) == RESULT_ELSEWHERE:
        # fal finished it, and the result is read under the app the slot recorded (a status call):
        # no end is told here, so none is recorded before fal's result says which.
        return ProviderEvent(webhook_id=f"{request_id}:OK:{RESULT_ELSEWHERE}", provider_job_id=f"{app}/{request_id}",
                             job_id=callback_job(headers), state="running", progress=None, video_url=None,
                             error=None, occurred_at=float(stamp) if stamp.isdigit() else time.time())
    if ok and url is None:
        ok, error = False, optional_text(obj, "payload_error") or "completed without a video URL"
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
        self._learned: dict[str, str] = {}
        """Model → the app fal's URLs named for it, where that is not the one ``app_of`` foresees."""

    def app_for(self, model: str) -> str:
        """The app to name in the callback path of a request of ``model``: the one fal's URLs named
        for it last, else the one foreseen (``app_of``). Raises ``SchemaError`` for a model id that
        names no app."""
        return self._learned.get(model.strip("/")) or app_of(model)

    def learn(self, model: str, app: str) -> None:
        """Remember the app fal's URLs named for ``model`` (forgotten again once it is the foreseen one)."""
        key = model.strip("/")
        self._learned.pop(key, None)
        if app != app_of(model):
            if len(self._learned) >= MAX_LEARNED:
                del self._learned[next(iter(self._learned))]  # the model learned longest ago
            self._learned[key] = app

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        app = self.app_for(order.model)
        # The callback path names the app before fal answers: the webhook's provider job id is
        # ``{app}/{request_id}``, the same as this one unless fal's URLs say another app.
        answer = await self.call(session, submit_request(self.base_url, self._key, order,
                                                         self.callback_for(order, app)))
        job: FalJob = parsed(self.name, lambda body: parse_submit(self.base_url, app, body), answer.body)
        if job.app != app:
            self.learn(order.model, job.app)  # so that the model's next webhooks name their jobs as their ids do
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
        A result fal does not find (404) under the callback path's app is under another: the
        webhook is forwarded marked ``RESULT_ELSEWHERE`` (see the module docstring). A result fal
        refuses otherwise (4xx) leaves the webhook as it came (it then tells a failure, with fal's
        ``payload_error``); one fal cannot give now (429, 5xx, network) raises, so the bridge
        answers 503 and fal delivers the webhook again later."""
        try:
            # The app the callback path names: the one the submission knew (``app_for``).
            job = FalJob(callback.split(delivery.callback)[2], request_id)
        except SchemaError:
            return delivery  # no request we could address: the webhook tells what it tells
        result = await self.call(session, HttpRequest("GET", job.url(self.base_url), _auth(self._key)),
                                 ok=lambda status: status < 500 and status != 429)
        if result.status == 404:
            return WebhookDelivery({**delivery.headers, CONFIRMED_HEADER: RESULT_ELSEWHERE}, delivery.body,
                                   delivery.callback)
        if not 200 <= result.status <= 299:
            return delivery
        return WebhookDelivery({**delivery.headers, CONFIRMED_HEADER: RESULT_READ}, result.body, delivery.callback)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)

    def same_job(self, a: str, b: str) -> bool:
        """Whether two provider job ids name one fal request: by request id alone, as the webhook
        of a model's first request names it under the app foreseen, its submission under fal's
        (see the module docstring)."""
        request_id = a.rpartition("/")[2]
        return bool(request_id) and request_id == b.rpartition("/")[2]


__all__ = ["MAX_LEARNED", "NAMESPACES", "RESULT_ELSEWHERE", "FalJob", "FalProvider", "app_of", "app_of_urls",
           "jwks_keys", "parse_event", "parse_queue_status", "parse_result", "parse_submit", "signed_message",
           "submit_request", "verify_signature"]
