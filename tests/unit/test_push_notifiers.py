"""The FCM and APNs notifiers' pure parts (messages, JWTs, error classes, credential renewal) and
their send logic against in-memory transports (``httpx.MockTransport``: no sockets)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.notifiers import apns, fcm
from connectors.notifiers.base import Notification
from connectors.notifiers.phones import MAX_ERROR_CHARS, PushNotifier, Renewing, http_client, read_secret
from floodgate.errors import ConfigError, NotificationError
from floodgate.push import PushTarget
from floodgate.settings import Secret, Settings
from tests.push_standins import apns_credentials, fcm_shape_problem, service_account

APNS_TOKEN = "0f" * 32
FCM_TOKEN = "fcm-token:APA91b"
NOW = 1_800_000_000.0
FCM_TARGET = PushTarget("fcm", FCM_TOKEN)


def note(status: str = "completed", push: PushTarget | None = FCM_TARGET, **kw: Any) -> Notification:
    base: dict[str, Any] = dict(job_id="job_01abc", version=5, tenant="t", status=status, model="m", provider="p",
                                progress=1.0, video_url="https://cdn.example/v.mp4" if status == "completed" else None,
                                error="provider said no" if status == "failed" else None, created_at=1, updated_at=2,
                                webhook_url=None, push=push)
    base.update(kw)
    return Notification(**base)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- messages --------------------------------------------------------------------------------------

def test_fcm_message_for_a_completed_job() -> None:
    message = fcm.fcm_message(note(), FCM_TOKEN)
    assert fcm_shape_problem(message) is None
    assert message["message"]["token"] == FCM_TOKEN
    assert message["message"]["notification"] == {"title": "Your video is ready", "body": "Tap to watch it."}
    assert message["message"]["data"] == {"job_id": "job_01abc", "status": "completed", "type": "job.completed",
                                          "video_url": "https://cdn.example/v.mp4"}
    assert message["message"]["android"] == {"priority": "HIGH", "collapse_key": "job_01abc"}
    assert message["message"]["apns"]["headers"]["apns-collapse-id"] == "job_01abc"


def test_fcm_message_for_a_failed_job_cuts_the_error() -> None:
    message = fcm.fcm_message(note("failed", error="x" * 5000), FCM_TOKEN)
    data = message["message"]["data"]
    assert data["status"] == "failed" and "video_url" not in data
    assert data["error"] == "x" * MAX_ERROR_CHARS
    assert message["message"]["notification"]["title"] == "Your video could not be made"


def test_apns_payload_and_headers() -> None:
    n = note(push=PushTarget("apns", APNS_TOKEN))
    payload = apns.apns_payload(n)
    assert payload["aps"] == {"alert": {"title": "Your video is ready", "body": "Tap to watch it."}, "sound": "default"}
    assert payload["video_url"] == "https://cdn.example/v.mp4" and payload["job_id"] == "job_01abc"
    assert len(orjson.dumps(payload)) < 4096
    headers = apns.apns_headers(n, "com.example.app", NOW)
    assert headers == {"apns-topic": "com.example.app", "apns-push-type": "alert", "apns-priority": "10",
                       "apns-expiration": str(int(NOW) + 86400), "apns-collapse-id": "job_01abc"}


def test_a_state_that_is_not_pushed_has_no_alert() -> None:
    with pytest.raises(KeyError):
        fcm.fcm_message(note("running"), FCM_TOKEN)


# --- error classes ---------------------------------------------------------------------------------

def google(status: int, google_status: str, code: str | None = None) -> bytes:
    error: dict[str, Any] = {"code": status, "status": google_status, "message": "m"}
    if code:
        error["details"] = [{"@type": fcm.FCM_ERROR_TYPE, "errorCode": code}]
    return orjson.dumps({"error": error})


@pytest.mark.parametrize(("status", "body", "retriable"), [
    (404, google(404, "NOT_FOUND", "UNREGISTERED"), False),
    (400, google(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), False),
    (403, google(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), False),
    (401, google(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"), False),
    (401, google(401, "UNAUTHENTICATED"), True),  # our access token: a new one is fetched
    (429, google(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), True),
    (503, google(503, "UNAVAILABLE", "UNAVAILABLE"), True),
    (500, google(500, "INTERNAL", "INTERNAL"), True),
    (502, b"<html>bad gateway</html>", True),
    (418, b"", False),
])
def test_fcm_classify(status: int, body: bytes, retriable: bool) -> None:
    error = fcm.classify(status, body, {}, NOW)
    assert error is not None and error.retriable is retriable and error.status == status


def test_fcm_success_and_retry_after() -> None:
    assert fcm.classify(200, b'{"name": "projects/p/messages/1"}', {}, NOW) is None
    error = fcm.classify(429, google(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), {"Retry-After": "7"}, NOW)
    assert error is not None and error.retry_after == 7.0 and "QUOTA_EXCEEDED" in str(error)
    final = fcm.classify(404, google(404, "NOT_FOUND", "UNREGISTERED"), {"Retry-After": "7"}, NOW)
    assert final is not None and final.retry_after is None and "UNREGISTERED" in str(final)


@pytest.mark.parametrize(("status", "retriable"), [(400, False), (401, False), (429, True), (503, True)])
def test_fcm_token_exchange_errors(status: int, retriable: bool) -> None:
    error = fcm.classify_token(status, b'{"error": "invalid_grant"}', {}, NOW)
    assert error.retriable is retriable


@pytest.mark.parametrize(("status", "reason", "retriable"), [
    (410, "Unregistered", False),
    (410, "ExpiredToken", False),
    (400, "BadDeviceToken", False),
    (400, "BadTopic", False),
    (403, "InvalidProviderToken", False),
    (403, "ExpiredProviderToken", True),
    (404, "BadPath", False),
    (413, "PayloadTooLarge", False),
    (429, "TooManyRequests", True),
    (500, "InternalServerError", True),
    (503, "ServiceUnavailable", True),
    (503, "", True),
])
def test_apns_classify(status: int, reason: str, retriable: bool) -> None:
    body = orjson.dumps({"reason": reason}) if reason else b""
    error = apns.classify(status, body, {}, NOW)
    assert error is not None and error.retriable is retriable
    assert (reason or "without a reason") in str(error)


def test_apns_success() -> None:
    assert apns.classify(200, b"", {}, NOW) is None


# --- JWTs ------------------------------------------------------------------------------------------

def test_fcm_assertion_is_signed_with_the_account_key() -> None:
    doc, public = service_account("https://oauth2.example/token")
    account = fcm.ServiceAccount.from_json(json.dumps(doc))
    token = fcm.assertion(account, NOW)
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="https://oauth2.example/token",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims == {"iss": doc["client_email"], "scope": fcm.SCOPE, "aud": "https://oauth2.example/token",
                      "iat": int(NOW), "exp": int(NOW) + 3600}
    assert jwt.get_unverified_header(token)["kid"] == doc["private_key_id"]
    _, other = service_account("https://oauth2.example/token")  # another account's key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["RS256"], options={"verify_aud": False})


def test_apns_provider_token_is_es256_with_kid_and_team() -> None:
    creds = apns_credentials()
    token = apns.provider_token(apns.load_key(creds.key_pem), creds.key_id, creds.team_id, NOW)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": creds.key_id, "typ": "JWT"}
    assert jwt.decode(token, creds.public_key, algorithms=["ES256"], options={"verify_iat": False}) == {
        "iss": creds.team_id, "iat": int(NOW)}


@pytest.mark.parametrize(("text", "message"), [
    ("not json", "not JSON"),
    ('{"type": "authorized_user"}', "service_account"),
    ('{"type": "service_account", "client_email": "a@b"}', "private_key missing"),
    ('{"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN nope"}', "not a PEM"),
])
def test_service_account_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fcm.ServiceAccount.from_json(text)


def test_an_ec_key_is_not_a_service_account_key_and_the_key_is_never_shown() -> None:
    pem = apns_credentials().key_pem
    with pytest.raises(ConfigError) as info:
        fcm.ServiceAccount.from_json(json.dumps({"type": "service_account", "client_email": "a@b", "private_key": pem}))
    assert "RSA" in str(info.value) and pem[40:80] not in str(info.value)
    doc, _ = service_account("https://t")
    assert doc["private_key"][40:80] not in repr(fcm.ServiceAccount.from_json(json.dumps(doc)))


def test_apns_key_must_be_p256() -> None:
    doc, _ = service_account("https://t")
    with pytest.raises(ConfigError, match="P-256"):
        apns.load_key(doc["private_key"])
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ConfigError, match="P-256"):
        apns.load_key(p384)


# --- renewal ---------------------------------------------------------------------------------------

def test_renewing_holds_until_refresh_and_drops_only_what_was_refused() -> None:
    held: Renewing[str] = Renewing()
    assert held.get(0) is None
    held.put("a", refresh_at=10)
    assert held.get(9.9) == "a" and held.get(10) is None
    held.drop("b")
    assert held.get(5) == "a"
    held.drop("a")
    assert held.get(5) is None


Handler = Callable[[httpx.Request], httpx.Response]


def fcm_notifier(handler: Handler, clock: Clock) -> tuple[fcm.FcmNotifier, httpx.AsyncClient]:
    doc, _ = service_account("https://oauth2.example/token", "proj")
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return fcm.FcmNotifier(client, fcm.ServiceAccount.from_json(json.dumps(doc)), base_url="https://fcm.example",
                           clock=clock), client


class FakeGoogle:
    """Token endpoint and send endpoint in memory; ``send_answers`` are popped per send."""

    def __init__(self) -> None:
        self.exchanges = 0
        self.sends: list[tuple[str, dict[str, Any]]] = []
        self.send_answers: list[httpx.Response] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            self.exchanges += 1
            return httpx.Response(200, json={"access_token": f"tok{self.exchanges}", "expires_in": 3600})
        assert request.url.path == "/v1/projects/proj/messages:send"
        self.sends.append((request.headers["authorization"], json.loads(request.content)))
        return self.send_answers.pop(0) if self.send_answers else httpx.Response(200, json={"name": "n"})


async def test_fcm_access_token_is_cached_until_near_expiry() -> None:
    google_, clock = FakeGoogle(), Clock()
    notifier, client = fcm_notifier(google_, clock)
    async with client:
        await notifier.send(note())
        clock.now += 3600 - fcm.REFRESH_MARGIN - 1
        await notifier.send(note())
        assert google_.exchanges == 1
        clock.now += 2
        await notifier.send(note())
    assert google_.exchanges == 2
    assert [auth for auth, _ in google_.sends] == ["Bearer tok1", "Bearer tok1", "Bearer tok2"]
    assert google_.sends[0][1] == fcm.fcm_message(note(), FCM_TOKEN)


async def test_fcm_refused_access_token_is_dropped_so_the_retry_gets_a_new_one() -> None:
    google_ = FakeGoogle()
    google_.send_answers.append(httpx.Response(401, content=google(401, "UNAUTHENTICATED")))
    notifier, client = fcm_notifier(google_, Clock())
    async with client:
        with pytest.raises(NotificationError) as info:
            await notifier.send(note())
        assert info.value.retriable
        await notifier.send(note())
    assert [auth for auth, _ in google_.sends] == ["Bearer tok1", "Bearer tok2"]


async def test_fcm_connection_failures_are_retriable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    notifier, client = fcm_notifier(refuse, Clock())
    async with client:
        with pytest.raises(NotificationError) as info:
            await notifier.send(note())
    assert info.value.retriable


async def test_fcm_refuses_a_target_of_another_platform_without_sending() -> None:
    google_ = FakeGoogle()
    notifier, client = fcm_notifier(google_, Clock())
    async with client:
        with pytest.raises(NotificationError) as info:
            await notifier.send(note(push=PushTarget("apns", APNS_TOKEN)))
    assert not info.value.retriable and google_.exchanges == 0 and not google_.sends


async def test_apns_provider_token_is_renewed_every_50_minutes_and_after_expired_provider_token() -> None:
    creds = apns_credentials()
    seen: list[str] = []
    answers: list[httpx.Response] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/3/device/{APNS_TOKEN}"
        seen.append(request.headers["authorization"].removeprefix("bearer "))
        return answers.pop(0) if answers else httpx.Response(200)

    clock = Clock()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    notifier = apns.ApnsNotifier(client, apns.load_key(creds.key_pem), key_id=creds.key_id, team_id=creds.team_id,
                                 topic="com.example.app", base_url="https://apns.example", clock=clock)
    n = note(push=PushTarget("apns", APNS_TOKEN))
    async with client:
        await notifier.send(n)
        clock.now += apns.TOKEN_MAX_AGE - 1
        await notifier.send(n)
        clock.now += 1
        await notifier.send(n)
        answers.append(httpx.Response(403, json={"reason": "ExpiredProviderToken"}))
        clock.now += 60
        with pytest.raises(NotificationError) as info:
            await notifier.send(n)
        assert info.value.retriable
        await notifier.send(n)
    assert seen[0] == seen[1] != seen[2] == seen[3] != seen[4]
    issued = [jwt.decode(t, creds.public_key, algorithms=["ES256"], options={"verify_iat": False})["iat"]
              for t in seen]
    assert issued == [int(NOW)] * 2 + [int(NOW + apns.TOKEN_MAX_AGE)] * 2 + [int(NOW + apns.TOKEN_MAX_AGE + 60)]


async def test_apns_never_puts_a_bad_token_in_the_path() -> None:
    creds = apns_credentials()

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    notifier = apns.ApnsNotifier(client, apns.load_key(creds.key_pem), key_id=creds.key_id, team_id=creds.team_id,
                                 topic="t", base_url="https://apns.example")
    async with client:
        with pytest.raises(NotificationError) as info:
            await notifier.send(note(push=PushTarget("apns", "../../x" + "0" * 60)))
    assert not info.value.retriable


# --- the platform switch and the settings ----------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)


async def test_push_notifier_picks_the_platform() -> None:
    fcm_side = Recorder()
    notifier = PushNotifier({"fcm": fcm_side})
    await notifier.send(note())
    assert len(fcm_side.sent) == 1
    for n in (note(push=PushTarget("apns", APNS_TOKEN)), note(push=None)):
        with pytest.raises(NotificationError) as info:
            await notifier.send(n)
        assert not info.value.retriable


def test_settings_read_keys_from_other_variables_and_never_print_them(tmp_path: Path) -> None:
    creds = apns_credentials()
    settings = Settings.from_env({"FLOODGATE_APNS_KEY": "env:MY_P8", "MY_P8": creds.key_pem,
                                  "FLOODGATE_APNS_KEY_ID": "K", "FLOODGATE_APNS_TEAM_ID": "T",
                                  "FLOODGATE_APNS_TOPIC": "com.x"})
    assert settings.apns_key.reveal() == creds.key_pem and settings.push_platforms == {"apns"}
    assert creds.key_pem[40:80] not in repr(settings)
    with pytest.raises(ConfigError, match="MISSING is not set"):
        Settings.from_env({"FLOODGATE_FCM_SERVICE_ACCOUNT": "env:MISSING"})
    with pytest.raises(ConfigError, match="FLOODGATE_APNS_TEAM_ID"):
        Settings.from_env({"FLOODGATE_APNS_KEY": creds.key_pem, "FLOODGATE_APNS_KEY_ID": "K",
                           "FLOODGATE_APNS_TOPIC": "com.x"})
    assert Settings().push_platforms == frozenset()


def test_keys_are_read_from_a_file_or_given_inline(tmp_path: Path) -> None:
    doc, _ = service_account("https://t")
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(doc))
    assert json.loads(read_secret(Secret(str(path)), "X")) == doc
    assert json.loads(read_secret(Secret(json.dumps(doc)), "X")) == doc
    with pytest.raises(ConfigError, match="not a key and not a readable file"):
        read_secret(Secret(str(tmp_path / "absent.json")), "X")


async def test_device_tokens_stay_out_of_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    creds = apns_credentials()
    settings = Settings(apns_key=Secret(creds.key_pem), apns_key_id=creds.key_id, apns_team_id=creds.team_id,
                        apns_topic="com.x")
    async with http_client(settings, http2=False) as real:
        assert real.follow_redirects is False
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(410, json={
        "reason": "Unregistered"})))
    notifier = apns.ApnsNotifier.from_settings(settings, client)
    with caplog.at_level("DEBUG"):
        async with client:
            with pytest.raises(NotificationError) as info:
                await notifier.send(note(push=PushTarget("apns", APNS_TOKEN)))
    assert APNS_TOKEN not in caplog.text and APNS_TOKEN not in str(info.value)


async def test_concurrent_sends_share_one_token_exchange() -> None:
    google_ = FakeGoogle()

    async def yielding(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let the other sends run while this exchange is on the wire
        return google_(request)

    doc, _ = service_account("https://oauth2.example/token", "proj")
    client = httpx.AsyncClient(transport=httpx.MockTransport(yielding))
    notifier = fcm.FcmNotifier(client, fcm.ServiceAccount.from_json(json.dumps(doc)), base_url="https://fcm.example")
    async with client:
        await asyncio.gather(*(notifier.send(note(job_id=f"job_{i}")) for i in range(20)))
    assert google_.exchanges == 1 and len(google_.sends) == 20


async def test_push_deliveries_refuse_to_start_without_a_platform() -> None:
    from floodgate.notify.push import PushDeliveries

    service = PushDeliveries(Settings(kafka_bootstrap="127.0.0.1:9"))
    with pytest.raises(ConfigError, match="FLOODGATE_FCM_SERVICE_ACCOUNT or FLOODGATE_APNS_KEY"):
        await service.start()
    await service.stop()
