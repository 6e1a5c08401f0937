"""Stand-ins for the two push services, as real servers, checking what the real ones check.

* :class:`FcmStandIn` (aiohttp, HTTP/1.1): Google's token endpoint (the JWT-bearer grant; the
  assertion's RS256 signature is verified against the service account's public key, and its
  ``iss``, ``aud``, ``scope`` and lifetime) and FCM's ``messages:send`` (the Bearer token must be
  one it issued and not expired; the message must have FCM v1's shape).
* :class:`ApnsStandIn` (hypercorn, HTTP/2 only over TLS with a throwaway CA from trustme): the
  provider token's ES256 signature verified against the ``.p8`` key's public half, its ``kid``,
  ``iss`` and age, the ``apns-*`` headers and the ``aps`` payload.

Both answer as the real services do when something is wrong (Google's error JSON, APNs's
``{"reason"}``) and can be told to answer a given device token with a scripted error
(``script(token, status, body)``), once per scripted answer.
"""
from __future__ import annotations

import asyncio
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connectors.notifiers.fcm import GRANT_TYPE, SCOPE

Answer = tuple[int, dict[str, Any]]


@dataclass
class Received:
    """One push the stand-in accepted or refused: its device token, headers and body."""

    token: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class _Log:
    received: list[Received] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    scripted: dict[str, list[Answer]] = field(default_factory=dict)

    async def add(self, item: Received) -> None:
        async with self.changed:
            self.received.append(item)
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> list[Received]:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: predicate(self.received))
            return list(self.received)

    def next_scripted(self, token: str) -> Answer | None:
        answers = self.scripted.get(token)
        return answers.pop(0) if answers else None


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


# --- FCM ------------------------------------------------------------------------------------------

def service_account(token_uri: str, project_id: str = "floodgate-test") -> tuple[dict[str, Any], rsa.RSAPublicKey]:
    """A service-account key file (as Google's console gives one) with a fresh RSA key, and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    doc = {"type": "service_account", "project_id": project_id, "private_key_id": secrets.token_hex(20),
           "private_key": pem, "client_email": f"push@{project_id}.iam.gserviceaccount.com",
           "client_id": "1234567890", "token_uri": token_uri}
    return doc, key.public_key()


class FcmStandIn:
    """Google's token endpoint and FCM's send endpoint on one local port. ``start()`` then ``url``."""

    def __init__(self, project_id: str = "floodgate-test", token_lifetime: int = 3600) -> None:
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self._sock = free_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.account, self._public_key = service_account(f"{self.url}/token", project_id)
        self._issued: dict[str, float] = {}  # access token → expiry
        self.token_requests = 0
        self.refused_assertions = 0
        self.log = _Log()
        self._runner: web.AppRunner | None = None

    def script(self, token: str, status: int, body: dict[str, Any]) -> None:
        self.log.scripted.setdefault(token, []).append((status, body))

    def expire_tokens(self) -> None:
        """Make every access token issued so far stale, as if an hour had passed."""
        self._issued = {token: 0.0 for token in self._issued}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(str(form.get("assertion", "")), self._public_key, algorithms=["RS256"],
                                audience=f"{self.url}/token", issuer=self.account["client_email"],
                                options={"require": ["exp", "iat", "iss", "aud"]})
        except jwt.PyJWTError as exc:
            self.refused_assertions += 1
            return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        if claims.get("scope") != SCOPE or claims["exp"] - claims["iat"] > 3600:
            self.refused_assertions += 1
            return web.json_response({"error": "invalid_scope"}, status=400)
        token = "ya29." + secrets.token_urlsafe(32)
        self._issued[token] = time.time() + self.token_lifetime
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"})

    async def _send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        device = str(((body.get("message") or {}) if isinstance(body, dict) else {}).get("token", ""))
        status, answer = self._judge(request, body)
        await self.log.add(Received(device, dict(request.headers), body if isinstance(body, dict) else {}, status))
        return web.json_response(answer, status=status)

    def _judge(self, request: web.Request, body: Any) -> Answer:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self._issued.get(token, 0.0) < time.time():
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if request.match_info["project"] != self.project_id:
            return _google_error(403, "PERMISSION_DENIED", "wrong project", "SENDER_ID_MISMATCH")
        problem = fcm_shape_problem(body)
        if problem:
            return _google_error(400, "INVALID_ARGUMENT", problem, "INVALID_ARGUMENT")
        scripted = self.log.next_scripted(body["message"]["token"])
        if scripted is not None:
            return scripted
        return 200, {"name": f"projects/{self.project_id}/messages/{uuid.uuid4().int % 10**16}"}


def _google_error(status: int, google_status: str, message: str, fcm_code: str | None = None) -> Answer:
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if fcm_code:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}]
    return status, {"error": error}


def fcm_error(status: int, google_status: str, fcm_code: str) -> tuple[int, dict[str, Any]]:
    """An FCM error answer, for ``FcmStandIn.script``."""
    return _google_error(status, google_status, f"{fcm_code} (scripted)", fcm_code)


def fcm_shape_problem(body: Any) -> str | None:
    """What FCM v1 would refuse in a ``messages:send`` body, or None."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict) or set(body) != {"message"}:
        return "the body must be {\"message\": {...}}"
    unknown = set(message) - {"token", "notification", "data", "android", "apns", "webpush", "fcm_options", "name"}
    if unknown:
        return f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r}"
    if not isinstance(message.get("token"), str) or not message["token"]:
        return "message.token is required"
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or set(notification) - {"title", "body", "image"} or not all(
            isinstance(v, str) for v in notification.values()):
        return "message.notification has title, body, image (strings)"
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return "message.data values must be strings"
    android = message.get("android", {})
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH", "normal", "high"):
        return "android.priority must be NORMAL or HIGH"
    apns_headers = (message.get("apns") or {}).get("headers", {})
    if not all(isinstance(v, str) for v in apns_headers.values()):
        return "apns.headers values must be strings"
    return None


# --- APNs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApnsCredentials:
    """What Apple's developer portal gives a team: the .p8 key (PEM), its id, the team id."""

    key_pem: str
    key_id: str
    team_id: str
    public_key: ec.EllipticCurvePublicKey


def apns_credentials() -> ApnsCredentials:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return ApnsCredentials(pem, "ABC123DEFG", "TEAM123456", key.public_key())


class ApnsStandIn:
    """APNs on a local port: HTTP/2 over TLS only. ``start(ca_path)`` writes the CA to trust there."""

    def __init__(self, credentials: ApnsCredentials, topic: str = "com.example.floodgate") -> None:
        self.credentials = credentials
        self.topic = topic
        self._sock = free_socket()
        self._sock.listen(128)
        self.url = f"https://127.0.0.1:{self._sock.getsockname()[1]}"
        self.log = _Log()
        self.tokens_seen: set[str] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def script(self, token: str, status: int, reason: str) -> None:
        self.log.scripted.setdefault(token, []).append((status, {"reason": reason}))

    async def start(self, ca_path: Path) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_path.write_bytes(ca.cert_pem.bytes())
        folder = ca_path.parent
        cert_file, key_file = folder / "apns-cert.pem", folder / "apns-key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        config = Config()
        config.bind = [f"fd://{self._sock.detach()}"]
        config.certfile, config.keyfile = str(cert_file), str(key_file)
        config.alpn_protocols = ["h2"]  # as Apple: no HTTP/1.1
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        shutdown: Callable[..., Awaitable[Any]] = self._stop.wait
        # The socket already listens (see __init__): a client that connects before hypercorn
        # accepts waits in the backlog, so there is nothing to wait for here.
        app: Any = self._app  # a plain ASGI callable; hypercorn's typed scopes are TypedDicts
        self._task = asyncio.create_task(serve(app, config, shutdown_trigger=shutdown))

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    async def _app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                   send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        device = scope["path"].removeprefix("/3/device/")
        status, answer = self._judge(scope, headers, body, device)
        await self.log.add(Received(device, headers, body if isinstance(body, dict) else {}, status))
        out = orjson.dumps(answer) if answer else b""
        response_headers = [(b"apns-id", str(uuid.uuid4()).upper().encode())]
        if out:
            response_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": out})

    def _judge(self, scope: dict[str, Any], headers: dict[str, str], body: Any, device: str) -> Answer:
        if scope.get("http_version") != "2":
            return 505, {"reason": "HTTP/2 required"}
        if scope["method"] != "POST":
            return 405, {"reason": "MethodNotAllowed"}
        if not scope["path"].startswith("/3/device/"):
            return 404, {"reason": "BadPath"}
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, {"reason": "MissingProviderToken"}
        token = auth.removeprefix("bearer ")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self.credentials.public_key, algorithms=["ES256"],
                                options={"require": ["iat", "iss"]})
        except jwt.PyJWTError:
            return 403, {"reason": "InvalidProviderToken"}
        if header.get("kid") != self.credentials.key_id or claims["iss"] != self.credentials.team_id:
            return 403, {"reason": "InvalidProviderToken"}
        if claims["iat"] < time.time() - 3600:
            return 403, {"reason": "ExpiredProviderToken"}
        self.tokens_seen.add(token)
        if headers.get("apns-topic") != self.topic:
            return 400, {"reason": "BadTopic" if "apns-topic" in headers else "MissingTopic"}
        if headers.get("apns-push-type") not in ("alert", "background"):
            return 400, {"reason": "InvalidPushType"}
        if headers.get("apns-priority") not in ("5", "10"):
            return 400, {"reason": "BadPriority"}
        if len(device) != 64 or any(c not in "0123456789abcdefABCDEF" for c in device):
            return 400, {"reason": "BadDeviceToken"}
        aps = body.get("aps") if isinstance(body, dict) else None
        alert = aps.get("alert") if isinstance(aps, dict) else None
        if not isinstance(alert, dict) or not isinstance(alert.get("title"), str) or not isinstance(
                alert.get("body"), str):
            return 400, {"reason": "PayloadEmpty"}
        scripted = self.log.next_scripted(device)
        if scripted is not None:
            return scripted
        return 200, {}


__all__ = ["ApnsCredentials", "ApnsStandIn", "FcmStandIn", "Received", "apns_credentials", "fcm_error",
           "fcm_shape_problem", "service_account"]
