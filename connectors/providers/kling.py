"""Kling's API (kind ``kling``).

Every call carries ``Authorization: Bearer <JWT>``: HS256 with ``iss`` = the access key,
``exp`` 30 minutes on and ``nbf`` a few seconds back, signed with the secret key; a token is
reused until five minutes before it expires. Submit ``POST /v1/videos/text2video`` (or
``image2video`` when the job has an image) with ``model_name``, ``prompt``, ``image``, the job's
params (``duration`` as the string it is, ``"5"``; others that read as numbers as numbers),
``callback_url`` (per job) and ``external_task_id``; the provider job id is
``{text2video|image2video}/{task_id}``. Answers are ``{"code", "message", "data"}``: ``code`` 0
is success, 1303 (too many parallel tasks) is a 429 whatever the HTTP status, 1000–1099 are
auth errors, 5000+ are Kling's own outages. Status ``GET /v1/videos/{kind}/{task_id}``:
``submitted`` → queued, ``processing`` → running, ``succeed`` → completed
(``task_result.videos[0].url``), ``failed`` → failed (``task_status_msg``). No progress, no queue
position.

Kling documents no callback signature. A callback is accepted only on its per-job path, and then
not believed: the bridge forwards Kling's answer to a status call about that task.

Idempotency: ``external_task_id`` is Floodgate's idempotency key, which Kling keeps unique per
account, so a repeated submission names the task it already created. Cancel: Kling has none; a
cancelled job's task runs on at Kling (and holds one of Kling's parallel-task slots, so 1303s
may follow, which are retried) while Floodgate frees its own slot at once.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import orjson

from floodgate.errors import ProviderRejected, ProviderUnavailable, RateLimited, SchemaError, WebhookVerificationError

from .base import ProviderEvent, ProviderStatus, SubmitOrder, SubmitResult, WebhookDelivery
from .common import HttpConnector, callback_extra, callback_job, confirmed, timestamp
from .http import HttpAnswer, HttpRequest, error_for_answer, first_url, json_object, member, model_inputs, parsed, text
from .registry import register

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.klingai.com"
TOKEN_TTL = 1800
TOKEN_RENEW = 300
STATES = {"submitted": "queued", "processing": "running", "succeed": "completed", "failed": "failed"}
KINDS = ("text2video", "image2video")
TOO_MANY_TASKS = 1303
"""Kling's code for an account past its parallel tasks: wait and retry, never a failure."""


def token(access_key: str, secret_key: str, now: float, ttl: int = TOKEN_TTL) -> str:
    """The JWT Kling expects on every call."""
    claims = {"iss": access_key, "exp": int(now) + ttl, "nbf": int(now) - 5}
    return jwt.encode(claims, secret_key, algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"})


@dataclass(frozen=True)
class KlingTask:
    kind: str
    task_id: str

    @classmethod
    def parse(cls, provider_job_id: str) -> KlingTask:
        kind, _, task_id = provider_job_id.partition("/")
        if kind not in KINDS or not task_id or "/" in task_id:
            raise SchemaError(f"not a Kling task id: {provider_job_id!r}")
        return cls(kind, task_id)

    def __str__(self) -> str:
        return f"{self.kind}/{self.task_id}"


STRING_INPUTS = frozenset({"duration"})
"""Inputs Kling takes as strings even when they look like numbers: ``duration`` is ``"5"`` or
``"10"``, not ``5`` (the create-task request logged in the reference, answered ``SUCCEED``)."""


def submit_request(base_url: str, bearer: str, order: SubmitOrder, callback: str | None) -> HttpRequest:
    kind = "image2video" if order.image_url else "text2video"
    inputs = {**model_inputs(order.params), **{k: v for k, v in order.params.items() if k in STRING_INPUTS}}
    payload: dict[str, Any] = {**inputs, "model_name": order.model, "prompt": order.prompt,
                               "external_task_id": order.idempotency_key}
    if order.image_url:
        payload["image"] = order.image_url
    if callback is not None:
        payload["callback_url"] = callback
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json", "Accept": "application/json"}
    return HttpRequest("POST", f"{base_url}/v1/videos/{kind}", headers, orjson.dumps(payload))


def kling_code(body: bytes) -> object:
    """The ``code`` of a Kling answer's JSON body, or None for any other body."""
    try:
        return json_object(body).get("code")
    except SchemaError:
        return None


def check_code(obj: Mapping[str, Any]) -> None:
    """Raise the error a non-zero Kling ``code`` stands for."""
    code = obj.get("code")
    if code == 0:
        return
    message = f"Kling code {code}: {str(obj.get('message', ''))[:200]}"
    if code == TOO_MANY_TASKS:
        raise RateLimited(message, status=429)
    if isinstance(code, int) and code >= 5000:
        raise ProviderUnavailable(message)
    raise ProviderRejected(message)


def status_from(kind: str, task: Mapping[str, Any]) -> ProviderStatus:
    status = task.get("task_status")
    if status not in STATES:
        raise SchemaError(f"unknown Kling task status {status!r}")
    state = STATES[status]
    result = task.get("task_result")
    return ProviderStatus(provider_job_id=f"{kind}/{text(task, 'task_id')}", state=state,
                          progress=1.0 if state == "completed" else None,
                          video_url=first_url(result.get("videos")) if state == "completed" and isinstance(
                              result, dict) else None,
                          error=str(task.get("task_status_msg") or "failed")[:300] if state == "failed" else None)


def parse_answer(kind: str, body: bytes) -> ProviderStatus:
    obj = json_object(body)
    check_code(obj)
    return status_from(kind, member(obj, "data"))


def parse_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    """A confirmed delivery: its body is Kling's status answer (see ``KlingProvider``)."""
    kind = callback_extra(headers)
    obj = json_object(body)
    task = member(obj, "data") if "data" in obj else obj
    status = status_from(kind, task)
    return ProviderEvent(webhook_id=f"{status.provider_job_id}:{task.get('task_status')}",
                         provider_job_id=status.provider_job_id, job_id=callback_job(headers), state=status.state,
                         progress=status.progress, video_url=status.video_url, error=status.error,
                         occurred_at=timestamp(task.get("updated_at"), time.time()))


@register("kling")
class KlingProvider(HttpConnector):
    """Connection settings: ``access_key``, ``secret_key``, ``callback_secret``; optional
    ``base_url``, ``timeout``."""

    def __init__(self, name: str, access_key: str, secret_key: str, callback_secret: str, *,
                 base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, callback_secret=callback_secret, timeout=timeout, clock=clock)
        self._access_key, self._secret_key = access_key, secret_key
        self.base_url = base_url.rstrip("/")
        self._token, self._token_until = "", 0.0

    def _bearer(self) -> str:
        now = self._clock()
        if now >= self._token_until - TOKEN_RENEW:
            self._token, self._token_until = token(self._access_key, self._secret_key, now), now + TOKEN_TTL
        return self._token

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._bearer()}", "Accept": "application/json"}

    async def call(self, session: aiohttp.ClientSession, request: HttpRequest, *,
                   ok: Callable[[int], bool] = lambda status: 200 <= status <= 299) -> HttpAnswer:
        """One call; code 1303 (too many parallel tasks) is refused for the rate whatever HTTP
        status comes with it, so that a job waits for one of Kling's slots rather than failing."""
        answer = await super().call(session, request, ok=lambda status: True)
        if ok(answer.status):
            return answer
        if kling_code(answer.body) == TOO_MANY_TASKS:
            limited = error_for_answer(replace(answer, status=429), self._clock())
            raise RateLimited(f"HTTP {answer.status}: Kling code {TOO_MANY_TASKS}", status=answer.status,
                              retry_after=limited.retry_after)
        raise error_for_answer(answer, self._clock())

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        kind = "image2video" if order.image_url else "text2video"
        answer = await self.call(session, submit_request(self.base_url, self._bearer(), order,
                                                         self.callback_for(order, kind)))
        status: ProviderStatus = parsed(self.name, lambda body: parse_answer(kind, body), answer.body)
        return SubmitResult(status.provider_job_id, status.state)

    async def _status_body(self, session: aiohttp.ClientSession, provider_job_id: str) -> bytes:
        task = KlingTask.parse(provider_job_id)
        url = f"{self.base_url}/v1/videos/{task.kind}/{quote(task.task_id, safe='')}"
        body = (await self.call(session, HttpRequest("GET", url, self._auth()))).body
        check_code(json_object(body))
        return body

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        kind = KlingTask.parse(provider_job_id).kind
        body = await self._status_body(session, provider_job_id)
        result: ProviderStatus = parsed(self.name, lambda b: parse_answer(kind, b), body)
        return result

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        # Kling has no cancel: the task runs to its end there; nothing to call.
        log.info("%s: Kling cannot cancel %s; it runs to its end at the provider", self.name, provider_job_id)

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        kind = self.job_of(delivery.callback).extra
        try:
            claimed = KlingTask(kind, text(json_object(delivery.body), "task_id"))
        except SchemaError as exc:
            raise WebhookVerificationError(f"callback names no Kling task: {exc}") from exc
        if kind not in KINDS:
            raise WebhookVerificationError(f"callback path names no Kling task kind: {kind!r}")
        return await confirmed(delivery, str(claimed), lambda task: self._status_body(session, task))

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)


__all__ = ["STRING_INPUTS", "KlingProvider", "KlingTask", "check_code", "parse_answer", "parse_event", "status_from",
           "submit_request", "token"]
