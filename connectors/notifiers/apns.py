"""Push through Apple's push service (APNs), over HTTP/2 with token-based auth.

Auth is a provider token: a JWT signed ES256 with the team's ``.p8`` key, ``kid`` the key's id in
its header, ``iss`` the team id and ``iat`` its time in the claims. Apple refuses tokens older
than an hour and throttles a sender that makes them more often than every 20 minutes, so one is
made every 50 minutes (:data:`TOKEN_MAX_AGE`) and shared by every push; an
``ExpiredProviderToken`` answer drops it and the retry makes a new one.

Each push is ``POST {apns_url}/3/device/{token}`` with ``apns-topic`` (the app's bundle id),
``apns-push-type: alert``, ``apns-priority: 10``, ``apns-expiration`` (a day: a result still
matters when the phone comes back online), ``apns-collapse-id`` (the job) and the body
``{"aps": {"alert": {"title", "body"}, "sound": "default"}, <data>}`` (:func:`apns_payload`).
APNs speaks HTTP/2 only: the client is httpx with h2.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from floodgate.errors import ConfigError
from floodgate.headers import header
from floodgate.push import APNS, token_problem
from floodgate.settings import Settings
from floodgate.throttle import parse_retry_after

from .base import Notification, NotificationError
from .phones import Renewing, alert_text, push_data, read_secret, transport_error

TOKEN_MAX_AGE = 50 * 60.0
"""Seconds a provider token is used: under Apple's hour, over its 20-minute minimum."""
EXPIRATION = 24 * 3600
"""Seconds APNs keeps trying a phone that is offline."""
# Reasons a retry can cure: our provider token aged out (a new one is made), or Apple is busy.
_RETRIABLE_REASONS = frozenset({"ExpiredProviderToken", "TooManyRequests", "TooManyProviderTokenUpdates",
                                "InternalServerError", "ServiceUnavailable", "Shutdown"})
_MAX_SHOWN = 200


def load_key(pem: str) -> EllipticCurvePrivateKey:
    """The ``.p8`` key (a P-256 private key in PEM). Raises ``ConfigError``, never showing the key."""
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ConfigError("FLOODGATE_APNS_KEY: not a PEM private key") from None
    if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP256R1):
        raise ConfigError("FLOODGATE_APNS_KEY: not a P-256 (ES256) key")
    return key


def provider_token(key: EllipticCurvePrivateKey, key_id: str, team_id: str, now: float) -> str:
    """The ES256 JWT APNs takes as ``authorization: bearer``."""
    return jwt.encode({"iss": team_id, "iat": int(now)}, key, algorithm="ES256", headers={"kid": key_id})


def apns_payload(n: Notification) -> dict[str, Any]:
    """The body of the push for ``n``: the alert under ``aps``, the data beside it."""
    title, body = alert_text(n)
    return {"aps": {"alert": {"title": title, "body": body}, "sound": "default"}, **push_data(n)}


def apns_headers(n: Notification, topic: str, now: float) -> dict[str, str]:
    """The ``apns-*`` headers for ``n`` (the provider token is added by the sender)."""
    return {"apns-topic": topic, "apns-push-type": "alert", "apns-priority": "10",
            "apns-expiration": str(int(now) + EXPIRATION), "apns-collapse-id": n.job_id[:64]}


def reason_of(body: bytes) -> str:
    """APNs's ``reason`` from an error body, or ""; never raises."""
    try:
        return str(orjson.loads(body).get("reason") or "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""


def classify(status: int, body: bytes, headers: Mapping[str, str], now: float) -> NotificationError | None:
    """``None`` for 200; else the error for an APNs answer.

    Final: 410 ``Unregistered`` (the app is gone from the phone), 400 ``BadDeviceToken`` and
    every other refusal of the request, 403 for a key or team APNs does not accept. Retried: 403
    ``ExpiredProviderToken``, 429 and 5xx (``Retry-After`` honoured if Apple ever sends it).
    """
    if status == 200:
        return None
    reason = reason_of(body)
    retriable = reason in _RETRIABLE_REASONS or status == 429 or 500 <= status <= 599
    if status in (400, 410) or (status == 403 and reason != "ExpiredProviderToken"):
        retriable = False
    retry_after = parse_retry_after(header(headers, "Retry-After"), now) if retriable else None
    return NotificationError(f"APNs answered HTTP {status} {reason or 'without a reason'}"[:_MAX_SHOWN],
                             retriable=retriable, retry_after=retry_after, status=status)


class ApnsNotifier:
    """Sends pushes through APNs with a caller-owned ``httpx.AsyncClient`` (``http2=True``)."""

    def __init__(self, client: httpx.AsyncClient, key: EllipticCurvePrivateKey, *, key_id: str, team_id: str,
                 topic: str, base_url: str = "https://api.push.apple.com",
                 clock: Callable[[], float] = time.time) -> None:
        if not (key_id and team_id and topic):
            raise ConfigError("APNs needs a key id, a team id and a topic (the app's bundle id)")
        self._client = client
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._topic = topic
        self._base = base_url.rstrip("/")
        self._clock = clock
        self._token: Renewing[str] = Renewing()

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient, **kwargs: Any) -> ApnsNotifier:
        key = load_key(read_secret(settings.apns_key, "FLOODGATE_APNS_KEY"))
        return cls(client, key, key_id=settings.apns_key_id, team_id=settings.apns_team_id,
                   topic=settings.apns_topic, base_url=settings.apns_url, **kwargs)

    def provider_token(self) -> str:
        """The current provider token, made anew when it is :data:`TOKEN_MAX_AGE` old."""
        now = self._clock()
        token = self._token.get(now)
        if token is None:
            token = provider_token(self._key, self._key_id, self._team_id, now)
            self._token.put(token, now + TOKEN_MAX_AGE)
        return token

    async def send(self, notification: Notification) -> None:
        """One push. Raises :class:`NotificationError` (see :func:`classify`)."""
        target = notification.push
        if target is None or target.platform != APNS or token_problem(APNS, target.token):
            # Checked at the door already; a record from elsewhere must not put anything else in the path.
            raise NotificationError("no valid APNs device token", retriable=False)
        now = self._clock()
        token = self.provider_token()
        headers = apns_headers(notification, self._topic, now)
        headers["authorization"] = f"bearer {token}"
        headers["content-type"] = "application/json"
        try:
            response = await self._client.post(f"{self._base}/3/device/{target.token}",
                                               content=orjson.dumps(apns_payload(notification)), headers=headers)
        except httpx.HTTPError as exc:
            raise transport_error("APNs", exc) from exc
        error = classify(response.status_code, response.content, response.headers, now)
        if error is not None:
            if reason_of(response.content) == "ExpiredProviderToken":
                self._token.drop(token)
            raise error


__all__ = ["TOKEN_MAX_AGE", "ApnsNotifier", "apns_headers", "apns_payload", "classify", "load_key",
           "provider_token", "reason_of"]
