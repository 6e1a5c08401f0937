"""Connector for our provider simulator (``connectors.simulator``), over real HTTP.

The simulator speaks an OpenAI-Videos-shaped API under ``{base_url}/{provider}/v1`` and signs
webhooks with Standard Webhooks, so this connector is also the template for real providers:
request building and response parsing are pure functions; only ``_send`` does I/O, on a
session the caller owns.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from floodgate import signing
from floodgate.errors import ProviderError, ProviderUnavailable, SchemaError
from floodgate.headers import header

from .base import (
    ProviderEvent,
    ProviderStatus,
    SubmitOrder,
    SubmitResult,
    WebhookDelivery,
    error_for_response,
)
from .http import HttpRequest
from .registry import register

# Simulator status → normalised state. OpenAI says "in_progress"; we say "running".
_STATES = {
    "queued": "queued",
    "in_progress": "running",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True)
class Endpoint:
    """Where one simulated provider lives and which key we use there."""

    base_url: str
    provider: str
    api_key: str = field(repr=False)

    @property
    def api_root(self) -> str:
        return f"{self.base_url.rstrip('/')}/{quote(self.provider, safe='')}/v1"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}


def submit_request(endpoint: Endpoint, order: SubmitOrder) -> HttpRequest:
    """``POST /videos`` for ``order``; our ``job_id`` rides in metadata so webhooks echo it back."""
    payload: dict[str, Any] = {
        "model": order.model,
        "prompt": order.prompt,
        "metadata": {**order.metadata, "job_id": order.job_id},
    }
    if order.image_url is not None:
        payload["image_url"] = order.image_url
    if order.params:
        payload["params"] = dict(order.params)
    if order.webhook_url is not None:
        payload["webhook_url"] = order.webhook_url
    headers = {
        **endpoint.auth(),
        "Content-Type": "application/json",
        "Idempotency-Key": order.idempotency_key,
    }
    return HttpRequest("POST", f"{endpoint.api_root}/videos", headers, orjson.dumps(payload))


def status_request(endpoint: Endpoint, provider_job_id: str) -> HttpRequest:
    return HttpRequest("GET", f"{endpoint.api_root}/videos/{quote(provider_job_id, safe='')}", endpoint.auth())


def cancel_request(endpoint: Endpoint, provider_job_id: str) -> HttpRequest:
    url = f"{endpoint.api_root}/videos/{quote(provider_job_id, safe='')}/cancel"
    return HttpRequest("POST", url, endpoint.auth())


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SchemaError("body is not a JSON object")
    return value


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"field {key!r} must be a non-empty string")
    return value


def _state(job: Mapping[str, Any]) -> str:
    status = job.get("status")
    if status not in _STATES:
        raise SchemaError(f"unknown status {status!r}")
    return _STATES[status]


def _progress(job: Mapping[str, Any]) -> float | None:
    value = job.get("progress")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError("field 'progress' must be a number")
    return min(1.0, max(0.0, float(value) / 100.0))


def _error(job: Mapping[str, Any]) -> str | None:
    error = job.get("error")
    if error is None:
        return None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if code else str(message)
    return str(error)


def _optional_text(job: Mapping[str, Any], key: str) -> str | None:
    value = job.get(key)
    if value is not None and not isinstance(value, str):
        raise SchemaError(f"field {key!r} must be a string or null")
    return value


def parse_submit(body: bytes) -> SubmitResult:
    job = _object(body)
    return SubmitResult(provider_job_id=_text(job, "id"), state=_state(job))


def parse_status(body: bytes) -> ProviderStatus:
    return status_from_job(_object(body))


def status_from_job(job: Mapping[str, Any]) -> ProviderStatus:
    return ProviderStatus(
        provider_job_id=_text(job, "id"),
        state=_state(job),
        progress=_progress(job),
        video_url=_optional_text(job, "video_url"),
        error=_error(job),
    )


def parse_event(headers: Mapping[str, str], body: bytes) -> ProviderEvent:
    """Normalise a webhook body ``{"id", "type", "created_at", "data": <job>}``; raises ``SchemaError``."""
    event = _object(body)
    data = event.get("data")
    if not isinstance(data, dict):
        raise SchemaError("field 'data' must be an object")
    status = status_from_job(data)
    created_at = event.get("created_at")
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
        raise SchemaError("field 'created_at' must be a number")
    metadata = data.get("metadata")
    job_id = metadata.get("job_id") if isinstance(metadata, dict) else None
    # The header id is what stays stable across redeliveries; the body id is the same by construction.
    webhook_id = header(headers, signing.HEADER_ID) or _text(event, "id")
    return ProviderEvent(
        webhook_id=webhook_id,
        provider_job_id=status.provider_job_id,
        job_id=job_id if isinstance(job_id, str) else None,
        state=status.state,
        progress=status.progress,
        video_url=status.video_url,
        error=status.error,
        occurred_at=float(created_at),
    )


@register("simulator")
class SimulatorProvider:
    """``VideoProvider`` for one provider played by the simulator.

    ``base_url`` is the simulator root (``http://127.0.0.1:8000``); ``provider`` is the
    simulated provider's path segment and defaults to ``name``. While the webhook secret rotates,
    ``previous_webhook_secret`` is accepted too, until ``previous_webhook_secret_until`` (unix
    seconds or an ISO 8601 instant; see ``floodgate.signing.rotation``).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        webhook_secret: str,
        timeout: float = 30.0,
        *,
        provider: str | None = None,
        clock: Callable[[], float] = time.time,
        previous_webhook_secret: str | None = None,
        previous_webhook_secret_until: str | float | None = None,
    ) -> None:
        self.name = name
        self.endpoint = Endpoint(base_url=base_url, provider=provider or name, api_key=api_key)
        self._webhook_secrets = signing.rotation(webhook_secret, previous_webhook_secret,
                                                 previous_webhook_secret_until, where=f"providers.{name}.connection")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    def __repr__(self) -> str:
        return f"SimulatorProvider(name={self.name!r}, api_root={self.endpoint.api_root!r})"

    async def _send(self, session: aiohttp.ClientSession, request: HttpRequest) -> bytes:
        try:
            async with session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                if not 200 <= response.status <= 299:
                    raise error_for_response(
                        response.status, response.headers, body.decode("utf-8", "replace"), self._clock()
                    )
                return body
        except ProviderError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    def _parse(self, parse: Callable[[bytes], Any], body: bytes) -> Any:
        # A 2xx we cannot read leaves us unsure what happened; retrying is safe (idempotency key).
        try:
            return parse(body)
        except SchemaError as exc:
            raise ProviderUnavailable(f"{self.name}: unreadable response: {exc}") from exc

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        body = await self._send(session, submit_request(self.endpoint, order))
        result: SubmitResult = self._parse(parse_submit, body)
        return result

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        body = await self._send(session, status_request(self.endpoint, provider_job_id))
        result: ProviderStatus = self._parse(parse_status, body)
        return result

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        await self._send(session, cancel_request(self.endpoint, provider_job_id))

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
        signing.verify(self._webhook_secrets, headers, body, now=now)

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        self.verify_webhook(delivery.headers, delivery.body, now=now)
        return delivery

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        return parse_event(headers, body)


__all__ = [
    "Endpoint",
    "HttpRequest",
    "SimulatorProvider",
    "cancel_request",
    "parse_event",
    "parse_status",
    "parse_submit",
    "status_from_job",
    "status_request",
    "submit_request",
]
