"""fal's queue API: ``POST /{owner}/{app}[/{path}]`` (or ``/{namespace}/{owner}/{app}[/{path}]``
for the namespaces fal's clients know, ``workflows`` and ``comfy``) with ``Authorization: Key``,
the model input as the body and ``?fal_webhook=``; ``request_id`` plus status, response and
cancel URLs back, under the app (the subpath is not part of them: ``fal_app``), and only there
does a request answer (under another app it is not found); ``GET …/requests/{id}/status``
(``IN_QUEUE`` with ``queue_position``, ``IN_PROGRESS``, ``COMPLETED``; 202 until completed,
then 200); failures only on the result
(``GET …/requests/{id}``); ``PUT …/requests/{id}/cancel``. One webhook, at the end
(``status`` ``OK``/``ERROR``), signed with Ed25519 over ``request_id\\nuser_id\\ntimestamp\\n
sha256(body)`` by a key published at ``/.well-known/jwks.json`` (``x`` padded with ``=``, as the
live JWKS is). fal queues past its concurrency limit rather than refusing (``queue_over_limit``)."""
from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..jobs import BadRequest, CreateRequest, Job, model_params
from .base import (
    CANCEL,
    CREATE,
    GET,
    JWKS,
    RESULT,
    TERMINAL,
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

_REQUEST = re.compile(r"/(.+)/requests/([^/]+)(/status|/cancel)?")
NAMESPACES = ("workflows", "comfy")  # fal-ai/fal-js libs/client/src/utils.ts: ENDPOINT_NAMESPACES
_STATUS = {"queued": "IN_QUEUE", "in_progress": "IN_PROGRESS"}


def signing_seed(secret: str) -> bytes:
    """The Ed25519 private key (32 bytes) the simulated fal signs with, from its webhook secret."""
    return hashlib.sha256(b"floodgate-simulator-fal:" + secret.encode()).digest()


def user_of(api_key: str) -> str:
    """The account id fal puts in ``X-Fal-Webhook-User-Id`` (here: derived from the key)."""
    return "user_" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def fal_app(model: str) -> str:
    """The app a model's requests are queued on, whose path their URLs carry: ``owner/app``, or
    ``namespace/owner/app`` for a namespaced model id (as fal's clients read one)."""
    parts = model.strip("/").split("/")
    return "/".join(parts[:3] if parts[0] in NAMESPACES else parts[:2])


class FalDialect(Dialect):
    name = "fal"
    auth_scheme = "key"

    def __init__(self, secret: str) -> None:
        # Derived from the provider's webhook_secret, so a test that knows it can sign as this fal
        # (a stale but valid signature, for one); fal's real key never leaves fal.
        self.key = Ed25519PrivateKey.from_private_bytes(signing_seed(secret))
        self.kid = new_id("sim-")

    def jwks(self) -> dict[str, Any]:
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
                          "x": base64.urlsafe_b64encode(raw).decode()}]}

    def match(self, method: str, path: str) -> Route | None:
        if method == "GET" and path == "/.well-known/jwks.json":
            return Route(JWKS)
        m = _REQUEST.fullmatch(path)
        if m is not None:
            action = {None: RESULT, "/status": GET, "/cancel": CANCEL}[m[3]]
            wanted = "PUT" if action == CANCEL else "GET"
            return Route(action, m[2], m[1]) if method == wanted else None
        if method == "POST" and path.count("/") >= 2:
            return Route(CREATE, model=path.strip("/"))
        return None

    def public(self, route: Route) -> Reply | None:
        return Reply(200, self.jwks()) if route.action == JWKS else None

    def addressed(self, route: Route, job: Job) -> bool:
        return route.model == fal_app(job.request.model)

    def api_key(self, headers: Mapping[str, str], wall: float) -> str | None:
        return bearer(headers, "key")

    def parse_create(self, route: Route, query: Mapping[str, str], headers: Mapping[str, str],
                     body: bytes) -> Submission:
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("body", "must be a JSON object") from None
        if not isinstance(raw, dict):
            raise BadRequest("body", "must be a JSON object")
        request = CreateRequest(model=route.model or "", prompt=prompt_of(raw),
                                image_url=optional_url(raw, "image_url"),
                                webhook_url=optional_url(query, "fal_webhook"), metadata={},
                                params=model_params(extras(raw, {"prompt", "image_url"})))
        return Submission(request)

    def _urls(self, job: Job, view: View) -> dict[str, str]:
        base = f"{view.root}/{fal_app(job.request.model)}/requests/{job.id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def created(self, job: Job, view: View) -> Reply:
        body: dict[str, Any] = {"status": "IN_QUEUE", "request_id": job.id, **self._urls(job, view),
                                "queue_position": view.queue_position}
        if job.request.webhook_url:
            body["gateway_request_id"] = job.id
        return Reply(200, body)

    def job_body(self, job: Job, view: View) -> dict[str, Any]:
        body: dict[str, Any] = {"status": _STATUS.get(job.status, "COMPLETED"), "request_id": job.id,
                                **self._urls(job, view)}
        if job.status == "queued":
            body["queue_position"] = view.queue_position
        else:
            body["logs"] = None
        if job.terminal:
            body["metrics"] = {"inference_time": job.render_seconds}
        return body

    def status(self, job: Job, view: View) -> Reply:
        return Reply(200 if job.terminal else 202, self.job_body(job, view))

    def _output(self, job: Job, view: View) -> dict[str, Any]:
        return {"video": {"url": view.video_url(job), "content_type": "video/mp4", "file_name": f"{job.id}.mp4"}}

    def result(self, job: Job, view: View) -> Reply:
        if job.status == "completed":
            return Reply(200, self._output(job, view))
        if job.status == "failed":
            return Reply(422, {"detail": [{"msg": (job.error or {}).get("message", "failed"),
                                           "type": "generation_failed"}]})
        if job.status == "cancelled":
            return Reply(400, {"detail": "Request was cancelled"})
        return Reply(400, {"detail": "Request is still in progress"})

    def cancelled(self, job: Job, view: View, changed: bool) -> Reply:
        if changed:
            return Reply(202, {"status": "CANCELLATION_REQUESTED"})
        return Reply(400, {"status": "ALREADY_COMPLETED"})

    def error(self, status: int, message: str, *, retry_after: int | None = None, field: str | None = None) -> Reply:
        detail: Any = message if field is None else [{"loc": ["body", field], "msg": message, "type": "value_error"}]
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status, {"detail": detail}, headers)

    def webhook(self, moment: str, job: Job, view: View) -> Outgoing | None:
        if moment != TERMINAL or job.status == "cancelled":
            return None
        ok = job.status == "completed"
        body = {"request_id": job.id, "gateway_request_id": job.id, "status": "OK" if ok else "ERROR",
                "payload": self._output(job, view) if ok else None,
                "error": None if ok else (job.error or {}).get("message", "failed")}
        return Outgoing(orjson.dumps(body), job.id)

    def sign(self, out: Outgoing, job: Job, wall: float, secret: str) -> dict[str, str]:
        timestamp = str(int(wall))
        user = user_of(job.api_key)
        message = "\n".join([out.event_id, user, timestamp, hashlib.sha256(out.body).hexdigest()]).encode()
        return {"X-Fal-Webhook-Request-Id": out.event_id, "X-Fal-Webhook-User-Id": user,
                "X-Fal-Webhook-Timestamp": timestamp, "X-Fal-Webhook-Signature": self.key.sign(message).hex()}


__all__ = ["NAMESPACES", "FalDialect", "fal_app", "signing_seed", "user_of"]
