"""Push through Firebase Cloud Messaging's HTTP v1 API (Android, and iOS apps that use Firebase).

Auth is a Google service account: a JWT signed RS256 with the account's private key (``iss`` the
account's e-mail, ``scope`` FCM's, ``aud`` its ``token_uri``) is exchanged at ``token_uri`` for an
OAuth2 access token (the JWT-bearer grant), which is kept until five minutes before it expires and
shared by every send. A 401 from FCM drops it, and the retry fetches a new one.

Each push is ``POST {fcm_url}/v1/projects/{project}/messages:send`` with ``{"message": {"token",
"notification": {"title", "body"}, "data", "android", "apns"}}`` (:func:`fcm_message`). Answers
are sorted by :func:`classify`: a token that is gone (``UNREGISTERED``) or a message FCM refuses
is final; quota (429) and FCM's own failures (5xx) are retried with the project's backoff.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from floodgate.errors import ConfigError
from floodgate.headers import header
from floodgate.push import FCM, token_problem
from floodgate.settings import Settings
from floodgate.throttle import parse_retry_after

from .base import Notification, NotificationError
from .phones import Renewing, alert_text, push_data, read_secret, transport_error

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME = 3600  # the longest Google accepts
REFRESH_MARGIN = 300.0
"""Seconds before its expiry that an access token is replaced, so none expires on the way."""
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
# FCM's error codes that no retry can cure: the token is dead or malformed, the message is
# refused, or the project's APNs credentials in Firebase are wrong.
_FINAL_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"})
_MAX_SHOWN = 200


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a Google service-account key file that FCM auth needs."""

    client_email: str
    project_id: str
    token_uri: str
    private_key_id: str | None
    private_key: RSAPrivateKey

    def __repr__(self) -> str:
        return f"ServiceAccount(client_email={self.client_email!r}, project_id={self.project_id!r})"

    @classmethod
    def from_json(cls, text: str) -> ServiceAccount:
        """Raises ``ConfigError`` naming what is missing or wrong (never the key itself)."""
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ConfigError("FCM service account: not JSON") from None
        if not isinstance(doc, dict) or doc.get("type") != "service_account":
            raise ConfigError('FCM service account: expected a key file with "type": "service_account"')
        missing = [k for k in ("client_email", "private_key") if not isinstance(doc.get(k), str) or not doc[k]]
        if missing:
            raise ConfigError(f"FCM service account: {', '.join(missing)} missing")
        try:
            key = load_pem_private_key(doc["private_key"].encode("utf-8"), password=None)
        except (ValueError, TypeError):
            raise ConfigError("FCM service account: private_key is not a PEM private key") from None
        if not isinstance(key, RSAPrivateKey):
            raise ConfigError("FCM service account: private_key is not an RSA key")
        return cls(client_email=doc["client_email"], project_id=str(doc.get("project_id") or ""),
                   token_uri=str(doc.get("token_uri") or DEFAULT_TOKEN_URI),
                   private_key_id=doc.get("private_key_id") or None, private_key=key)


def assertion(account: ServiceAccount, now: float) -> str:
    """The signed JWT that ``token_uri`` exchanges for an access token."""
    issued = int(now)
    claims = {"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri, "iat": issued,
              "exp": issued + ASSERTION_LIFETIME}
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)


def fcm_message(n: Notification, token: str) -> dict[str, Any]:
    """The ``messages:send`` body for ``n`` to device ``token``."""
    title, body = alert_text(n)
    return {"message": {
        "token": token,
        "notification": {"title": title, "body": body},
        "data": push_data(n),
        "android": {"priority": "HIGH", "collapse_key": n.job_id},
        "apns": {"headers": {"apns-priority": "10", "apns-collapse-id": n.job_id}},
    }}


def error_code(body: bytes) -> tuple[str, str]:
    """(FCM error code or "", Google status or "") from an error response body; never raises."""
    try:
        error = orjson.loads(body).get("error") or {}
        status = str(error.get("status") or "")
        code = next((str(d.get("errorCode")) for d in error.get("details") or ()
                     if isinstance(d, dict) and d.get("@type") == FCM_ERROR_TYPE and d.get("errorCode")), "")
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return "", ""
    return code, status


def classify(status: int, body: bytes, headers: Mapping[str, str], now: float) -> NotificationError | None:
    """``None`` for 2xx; else the error for an answer of ``messages:send``.

    Final: the codes in ``_FINAL_CODES`` (404 ``UNREGISTERED`` above all: the app was removed or
    the token replaced) and any other 4xx. Retried: 429 (honouring ``Retry-After``), 5xx, and a
    401 without an FCM code (our access token was refused: the next attempt gets a new one).
    """
    if 200 <= status <= 299:
        return None
    code, google_status = error_code(body)
    named = code or google_status or "no error code"
    if code in _FINAL_CODES:
        retriable = False
    elif status == 401 or status == 429 or 500 <= status <= 599:
        retriable = True
    else:
        retriable = False
    retry_after = parse_retry_after(header(headers, "Retry-After"), now) if retriable else None
    return NotificationError(f"FCM answered HTTP {status} {named}"[:_MAX_SHOWN], retriable=retriable,
                             retry_after=retry_after, status=status)


def classify_token(status: int, body: bytes, headers: Mapping[str, str], now: float) -> NotificationError:
    """The error for a refused token exchange: the service's trouble (429, 5xx) is retried, a refused
    grant (a wrong or revoked key: OAuth's ``invalid_grant``) is not."""
    try:
        reason = str(orjson.loads(body).get("error") or "")
    except (orjson.JSONDecodeError, AttributeError):
        reason = ""
    retriable = status == 429 or 500 <= status <= 599
    retry_after = parse_retry_after(header(headers, "Retry-After"), now) if retriable else None
    return NotificationError(f"FCM token exchange answered HTTP {status} {reason}".strip()[:_MAX_SHOWN],
                             retriable=retriable, retry_after=retry_after, status=status)


class FcmNotifier:
    """Sends pushes through FCM with a caller-owned ``httpx.AsyncClient``.

    ``clock`` gives unix seconds (JWT times, token expiry, ``Retry-After`` dates).
    """

    def __init__(self, client: httpx.AsyncClient, account: ServiceAccount, *, project_id: str = "",
                 base_url: str = "https://fcm.googleapis.com", clock: Callable[[], float] = time.time) -> None:
        project = project_id or account.project_id
        if not project:
            raise ConfigError("FCM: no project id (set FLOODGATE_FCM_PROJECT_ID or use a key file with project_id)")
        self._client = client
        self._account = account
        self._send_url = f"{base_url.rstrip('/')}/v1/projects/{quote(project, safe='')}/messages:send"
        self._clock = clock
        self._token: Renewing[str] = Renewing()
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient, **kwargs: Any) -> FcmNotifier:
        account = ServiceAccount.from_json(read_secret(settings.fcm_service_account, "FLOODGATE_FCM_SERVICE_ACCOUNT"))
        return cls(client, account, project_id=settings.fcm_project_id, base_url=settings.fcm_url, **kwargs)

    async def send(self, notification: Notification) -> None:
        """One push. Raises :class:`NotificationError` (see :func:`classify`)."""
        target = notification.push
        if target is None or target.platform != FCM or token_problem(FCM, target.token):
            raise NotificationError("no valid FCM registration token", retriable=False)
        body = orjson.dumps(fcm_message(notification, target.token))
        token = await self.access_token()
        try:
            response = await self._client.post(self._send_url, content=body, headers={
                "authorization": f"Bearer {token}", "content-type": "application/json; charset=utf-8"})
        except httpx.HTTPError as exc:
            raise transport_error("FCM", exc) from exc
        error = classify(response.status_code, response.content, response.headers, self._clock())
        if error is not None:
            if response.status_code == 401:
                self._token.drop(token)
            raise error

    async def access_token(self) -> str:
        """The cached access token, fetching a new one when it is near its expiry."""
        token = self._token.get(self._clock())
        if token is not None:
            return token
        async with self._token_lock:  # one exchange at a time; the others then find its token
            token = self._token.get(self._clock())
            if token is None:
                token = await self._exchange()
        return token

    async def _exchange(self) -> str:
        now = self._clock()
        form = {"grant_type": GRANT_TYPE, "assertion": assertion(self._account, now)}
        try:
            response = await self._client.post(self._account.token_uri, data=form)
        except httpx.HTTPError as exc:
            raise transport_error("FCM token exchange", exc) from exc
        if response.status_code != 200:
            raise classify_token(response.status_code, response.content, response.headers, self._clock())
        try:
            doc = orjson.loads(response.content)
            token, lifetime = str(doc["access_token"]), float(doc.get("expires_in", ASSERTION_LIFETIME))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise NotificationError("FCM token exchange: unreadable answer", retriable=True) from None
        self._token.put(token, now + max(0.0, lifetime - REFRESH_MARGIN))
        return token


__all__ = ["SCOPE", "FcmNotifier", "ServiceAccount", "assertion", "classify", "classify_token", "error_code",
           "fcm_message"]
