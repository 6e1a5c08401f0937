"""Signed outgoing webhooks: POST a job's final state to the request's ``webhook_url``.

Body (JSON)::

    {"type": "job.completed" | "job.failed" | "job.cancelled" | "job.expired",
     "id": "<job_id>:<version>",
     "created_at": <unix seconds of the final state change>,
     "data": {"job_id", "status", "model", "provider", "progress",
              "result": {"video_url": ...} | null, "error",
              "created_at", "updated_at",   # "2026-01-02T03:04:05.678Z"
              "metadata"}}

``data`` has the same shape as ``GET /v1/jobs/{job_id}`` (``floodgate.api.resources.job_resource``),
so receivers parse one format whichever way they learn about a job.

The body is a pure function of the snapshot, so every attempt sends the same bytes; only
``webhook-timestamp`` and the signature change. ``webhook-id`` equals the body's ``id``.

Signing follows Standard Webhooks (``floodgate.signing``) with the tenant's secret from
``FLOODGATE_WEBHOOK_SECRETS``. A tenant without one gets a secret derived from
``FLOODGATE_SECRET``: ``whsec_`` + base64(HMAC-SHA256(secret, "floodgate/webhook-secret/v1" ‖
len ‖ tenant)). Every process of a deployment must share ``FLOODGATE_SECRET`` for receivers to
be able to verify; hand the tenant the value of :func:`tenant_secret`.

SSRF: IP-literal hosts are checked before each attempt (aiohttp never resolves them), names
are checked on the addresses actually connected to (:class:`GuardedResolver`, so DNS rebinding
does not help), redirects are not followed, and environment proxies are ignored.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from floodgate import signing
from floodgate.errors import ConfigError, ValidationError
from floodgate.headers import header
from floodgate.netguard import ForbiddenDestination, GuardedResolver, check_url_target
from floodgate.settings import Settings
from floodgate.throttle import parse_retry_after

from .base import Notification, NotificationError

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "Floodgate-Webhooks/1"
_DERIVE_DOMAIN = b"floodgate/webhook-secret/v1"
_RETRIABLE_4XX = frozenset({408, 429})


def tenant_secret(settings: Settings, tenant: str) -> str:
    """The signing secret for ``tenant``: configured, else derived from ``settings.secret``.

    Raises ``ConfigError`` when neither is available.
    """
    configured = settings.webhook_secret_map.get(tenant)
    if configured:
        return configured
    master = settings.secret.reveal().encode("utf-8")
    if not master:
        raise ConfigError(f"no webhook secret for tenant {tenant!r} and FLOODGATE_SECRET is empty")
    name = tenant.encode("utf-8")
    mac = hmac.new(master, _DERIVE_DOMAIN + len(name).to_bytes(4, "big") + name, hashlib.sha256).digest()
    return signing.SECRET_PREFIX + base64.b64encode(mac).decode("ascii")


def webhook_body(n: Notification) -> bytes:
    """The JSON body for ``n``; ``KeyError`` if its status is not final."""
    return orjson.dumps({
        "type": n.event_type,
        "id": n.message_id,
        "created_at": n.updated_at // 1000,
        "data": {
            "job_id": n.job_id,
            "status": n.status,
            "model": n.model or None,
            "provider": n.provider,
            "progress": float(n.progress),
            "result": {"video_url": n.video_url} if n.video_url else None,
            "error": n.error,
            "created_at": _iso_ms(n.created_at),
            "updated_at": _iso_ms(n.updated_at),
            "metadata": dict(n.metadata),
            # The job's public shape, as GET gives it; a final job has left the line.
            "priority": n.priority,
            "serving_model": n.serving_model or n.model or None,
            "route_note": n.route_note,
            "queue_position": None,
            "provider_queue_position": None,
            "eta_seconds": None,
            "eta_ready_seconds": None,
            "final": True,  # (told once the worker recorded the end)
        },
    })


def _iso_ms(epoch_ms: int) -> str | None:
    # Same format as floodgate.api.resources.iso_ms. Not imported: floodgate.api's package import
    # pulls in the server, which is where this notifier gets started (an import cycle waiting to happen).
    if not epoch_ms:
        return None
    stamp = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def classify(status: int, headers: Mapping[str, str], now: float) -> NotificationError | None:
    """``None`` for 2xx; else the error for this response.

    408, 429 and 5xx are retriable (with ``Retry-After`` when given); everything else —
    other 4xx, and 1xx/3xx since redirects are not followed — is permanent.
    """
    if 200 <= status <= 299:
        return None
    retriable = status in _RETRIABLE_4XX or 500 <= status <= 599
    retry_after = parse_retry_after(header(headers, "Retry-After"), now) if retriable else None
    return NotificationError(f"receiver answered HTTP {status}", retriable=retriable,
                             retry_after=retry_after, status=status)


def guarded_session(*, allow_private: bool, limit: int = 100) -> aiohttp.ClientSession:
    """A session whose connections can only reach public addresses (unless ``allow_private``).

    Must be created inside a running event loop; the caller closes it.
    """
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow_private=allow_private), limit=limit)
    # trust_env=False: an HTTP(S)_PROXY from the environment would connect on our behalf, unguarded.
    return aiohttp.ClientSession(connector=connector, trust_env=False)


class WebhookNotifier:
    """POSTs signed webhooks with a caller-owned session (use :func:`guarded_session`).

    ``secret_for(tenant)`` gives the signing secret, or a ``signing.SecretRing`` while it rotates
    (one signature per active secret); ``clock`` gives unix seconds (injected so tests can pin
    ``webhook-timestamp``).
    """

    def __init__(self, session: aiohttp.ClientSession, secret_for: Callable[[str], str | signing.SecretRing], *,
                 allow_private: bool = False, timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self._secret_for = secret_for
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession, **kwargs: Any) -> WebhookNotifier:
        return cls(session, lambda tenant: settings.webhook_secret_ring(tenant, tenant_secret(settings, tenant)),
                   allow_private=settings.allow_private_webhooks, **kwargs)

    async def send(self, notification: Notification) -> None:
        """One signed POST. Raises :class:`NotificationError` (see :func:`classify`)."""
        url = notification.webhook_url
        if not url:
            raise NotificationError("notification has no webhook_url", retriable=False)
        try:
            check_url_target(url, allow_private=self._allow_private)
        except ValidationError as exc:
            raise NotificationError(f"forbidden webhook_url: {exc}", retriable=False) from exc
        body = webhook_body(notification)
        headers = signing.signature_headers(self._secret_for(notification.tenant), notification.message_id,
                                            body, self._clock())
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False,
                                          timeout=self._timeout) as response:
                status, response_headers = response.status, response.headers
        except aiohttp.ClientConnectorDNSError as exc:
            forbidden = isinstance(exc.os_error, ForbiddenDestination)
            reason = "resolves only to private or reserved addresses" if forbidden else "cannot be resolved"
            raise NotificationError(f"webhook host {reason}", retriable=not forbidden) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The error's type and the host, never str(exc): aiohttp's connect timeout names the
            # whole URL, and a receiver's URL may carry a credential in its query.
            raise NotificationError(f"webhook delivery failed: {type(exc).__name__} from {urlsplit(url).hostname}",
                                    retriable=True) from exc
        error = classify(status, response_headers, self._clock())
        if error is not None:
            raise error


__all__ = ["DEFAULT_TIMEOUT", "WebhookNotifier", "classify", "guarded_session", "tenant_secret", "webhook_body"]
