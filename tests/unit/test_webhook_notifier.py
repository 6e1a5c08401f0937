"""The signed-webhook notifier: body, signature, secrets and response classification.

HTTP is replaced by a recording fake session (no sockets); the real-network paths
(SSRF resolver, timeouts against a live receiver) are in tests/integration.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.notifiers import (
    Notification,
    NotificationError,
    Notifier,
    WebhookNotifier,
    classify,
    tenant_secret,
    webhook_body,
)
from floodgate import signing
from floodgate.errors import ConfigError, WebhookVerificationError
from floodgate.netguard import ForbiddenDestination
from floodgate.settings import Secret, Settings

NOW = 1_750_000_000.0
SECRET = signing.new_secret()


def note(**changes: Any) -> Notification:
    base: dict[str, Any] = dict(
        job_id="job_01", version=7, tenant="acme", status="completed", model="kling-2.1", provider="kling",
        progress=1.0, video_url="https://cdn.example.com/v.mp4", error=None, created_at=1_749_999_000_123,
        updated_at=1_749_999_900_456, webhook_url="https://hooks.example.com/in", metadata={"order": "42"},
    )
    base.update(changes)
    return Notification(**base)


@dataclass
class Sent:
    url: str
    body: bytes
    headers: dict[str, str]
    allow_redirects: bool
    timeout: aiohttp.ClientTimeout


@dataclass
class FakeResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeSession:
    """Answers each POST with ``reply()``: a response, or an exception to raise."""

    def __init__(self, reply: Callable[[], FakeResponse | BaseException] = lambda: FakeResponse(204)) -> None:
        self.reply = reply
        self.sent: list[Sent] = []

    def post(self, url: str, *, data: bytes, headers: dict[str, str], allow_redirects: bool,
             timeout: aiohttp.ClientTimeout) -> Any:
        self.sent.append(Sent(url, data, dict(headers), allow_redirects, timeout))
        outcome = self.reply()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def notifier(session: FakeSession, **kwargs: Any) -> WebhookNotifier:
    # arg-type: FakeSession stands in for aiohttp.ClientSession (only post() is used)
    return WebhookNotifier(session, lambda tenant: SECRET, clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


def test_is_a_notifier() -> None:
    assert isinstance(notifier(FakeSession()), Notifier)


async def test_signature_verifies_with_the_tenant_secret() -> None:
    session = FakeSession()
    await notifier(session).send(note())
    (sent,) = session.sent
    signing.verify(SECRET, sent.headers, sent.body, now=NOW)
    assert sent.headers["webhook-id"] == "job_01:7"
    assert sent.headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        signing.verify(signing.new_secret(), sent.headers, sent.body, now=NOW)


async def test_post_is_not_redirected_and_times_out_after_ten_seconds() -> None:
    session = FakeSession()
    await notifier(session).send(note())
    assert session.sent[0].allow_redirects is False
    assert session.sent[0].timeout.total == 10.0
    assert session.sent[0].url == "https://hooks.example.com/in"


def test_body_shape() -> None:
    assert orjson.loads(webhook_body(note())) == {
        "type": "job.completed",
        "id": "job_01:7",
        "created_at": 1_749_999_900,
        "data": {
            "job_id": "job_01", "status": "completed", "model": "kling-2.1", "provider": "kling", "progress": 1.0,
            "result": {"video_url": "https://cdn.example.com/v.mp4"}, "error": None,
            "created_at": "2025-06-15T14:50:00.123Z", "updated_at": "2025-06-15T15:05:00.456Z",
            "metadata": {"order": "42"},
            "priority": "standard", "serving_model": "kling-2.1", "route_note": None,
        "queue_position": None, "provider_queue_position": None, "eta_seconds": None, "eta_ready_seconds": None,
        "final": True,
        },
    }


def test_data_has_the_public_job_shape_of_the_api() -> None:
    from floodgate.api.resources import job_resource

    n = note()
    snapshot = {"job_id": n.job_id, "status": n.status, "model": n.model, "provider": n.provider,
                "progress": n.progress, "video_url": n.video_url, "error": n.error, "created_at": n.created_at,
                "updated_at": n.updated_at, "metadata": dict(n.metadata)}
    assert orjson.loads(webhook_body(n))["data"] == job_resource(snapshot)


@pytest.mark.parametrize(("status", "event"), [("completed", "job.completed"), ("failed", "job.failed"),
                                               ("cancelled", "job.cancelled")])
def test_event_type_follows_status(status: str, event: str) -> None:
    body = orjson.loads(webhook_body(note(status=status, video_url=None, error="boom")))
    assert body["type"] == event
    assert body["data"]["result"] is None


def test_non_final_status_has_no_event_type() -> None:
    with pytest.raises(KeyError):
        webhook_body(note(status="running"))


async def test_every_attempt_sends_the_same_body_and_id_with_a_fresh_timestamp() -> None:
    clock = iter([NOW, NOW, NOW + 30, NOW + 30])
    session = FakeSession()
    # arg-type: FakeSession stands in for aiohttp.ClientSession
    sender = WebhookNotifier(session, lambda t: SECRET, clock=lambda: next(clock))  # type: ignore[arg-type]
    await sender.send(note())
    await sender.send(note())
    first, second = session.sent
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 30


@pytest.mark.parametrize(
    ("status", "headers", "retriable", "retry_after"),
    [
        (200, {}, None, None),
        (202, {}, None, None),
        (204, {}, None, None),
        (299, {}, None, None),
        (301, {"Location": "http://169.254.169.254/"}, False, None),  # redirects are not followed
        (400, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
        (410, {}, False, None),
        (413, {}, False, None),
        (408, {}, True, None),
        (429, {"Retry-After": "12"}, True, 12.0),
        (429, {"retry-after": "garbage"}, True, None),
        (500, {}, True, None),
        (502, {}, True, None),
        (503, {"Retry-After": "Sun, 15 Jun 2025 15:07:40 GMT"}, True, 60.0),  # NOW + 60 s as an HTTP-date
        (503, {"Retry-After": "Sun, 01 Jun 2025 00:00:00 GMT"}, True, 0.0),  # a date in the past
        (599, {}, True, None),
        (404, {"Retry-After": "5"}, False, None),  # only honoured when we will retry
    ],
)
def test_classify(status: int, headers: dict[str, str], retriable: bool | None, retry_after: float | None) -> None:
    error = classify(status, headers, NOW)
    if retriable is None:
        assert error is None
        return
    assert error is not None
    assert (error.retriable, error.retry_after, error.status) == (retriable, retry_after, status)


async def test_response_errors_are_raised_with_their_flags() -> None:
    session = FakeSession(lambda: FakeResponse(503, {"Retry-After": "3"}))
    with pytest.raises(NotificationError) as info:
        await notifier(session).send(note())
    assert (info.value.retriable, info.value.retry_after, info.value.status) == (True, 3.0, 503)


def dns_error(os_error: OSError) -> aiohttp.ClientConnectorDNSError:
    key = aiohttp.client_reqrep.ConnectionKey("hooks.example.com", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorDNSError(key, os_error)


@pytest.mark.parametrize(
    ("raised", "retriable"),
    [
        (TimeoutError(), True),
        (aiohttp.ServerTimeoutError("read timeout"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientOSError(111, "connection refused"), True),
        (dns_error(OSError(-2, "Name or service not known")), True),
        (dns_error(ForbiddenDestination(None, "private")), False),
    ],
)
async def test_transport_errors(raised: BaseException, retriable: bool) -> None:
    with pytest.raises(NotificationError) as info:
        await notifier(FakeSession(lambda: raised)).send(note())
    assert info.value.retriable is retriable
    assert info.value.__cause__ is raised


async def test_a_transport_error_names_the_host_but_never_the_url_s_query() -> None:
    """aiohttp's connect timeout says "Connection timeout to host <the whole URL>"."""
    url = "https://hooks.example.com/in?token=s3cr3t"
    raised = aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}")
    with pytest.raises(NotificationError) as info:
        await notifier(FakeSession(lambda: raised)).send(note(webhook_url=url))
    assert "hooks.example.com" in str(info.value) and "s3cr3t" not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1/x", "http://10.0.0.8/x", "http://169.254.169.254/latest",
                                 "http://[::1]/x", "http://[::ffff:127.0.0.1]/x",
                                 # aiohttp's URL parser maps the segmented digits U+1FBF0-9 to ASCII
                                 # ones and connects to the literal without resolving it, so the
                                 # check before sending is the only one that sees these.
                                 "http://127.0.0.\U0001fbf1:8080/x", "http://\U0001fbf1\U0001fbf2\U0001fbf7.0.0.1/x",
                                 "http://169.254.169.\U0001fbf2\U0001fbf5\U0001fbf4/latest"])
async def test_private_ip_literals_are_refused_before_any_request(url: str) -> None:
    session = FakeSession()
    with pytest.raises(NotificationError, match="forbidden webhook_url") as info:
        await notifier(session).send(note(webhook_url=url))
    assert info.value.retriable is False
    assert session.sent == []


async def test_private_ip_literal_allowed_when_configured() -> None:
    session = FakeSession()
    await notifier(session, allow_private=True).send(note(webhook_url="http://127.0.0.1:9/x"))
    assert len(session.sent) == 1


def test_configured_tenant_secret_wins() -> None:
    settings = Settings(secret=Secret("server-secret"), webhook_secrets=Secret(f"acme={SECRET}"))
    assert tenant_secret(settings, "acme") == SECRET


def test_derived_tenant_secret_is_stable_distinct_and_a_valid_whsec() -> None:
    settings = Settings(secret=Secret("server-secret"))
    acme = tenant_secret(settings, "acme")
    assert acme == tenant_secret(Settings(secret=Secret("server-secret")), "acme")
    assert acme != tenant_secret(settings, "other")
    assert acme != tenant_secret(Settings(secret=Secret("another-secret")), "acme")
    assert acme.startswith("whsec_") and len(signing.secret_key(acme)) == 32


def test_no_secret_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="acme"):
        tenant_secret(Settings(), "acme")


# --- rotation of a tenant's outgoing secret ------------------------------------------------------

OLD = signing.new_secret()


def rotating(until: str = "2025-06-15T16:06:40Z") -> Settings:  # NOW + 3600
    return Settings(secret=Secret("server-secret-0123456789"), webhook_secrets=Secret(f"acme={SECRET}"),
                    previous_webhook_secrets=Secret(f"acme={OLD}"), previous_webhook_secrets_until=until)


async def test_during_a_rotation_each_delivery_verifies_with_the_old_or_the_new_secret() -> None:
    session = FakeSession()
    # arg-type: FakeSession stands in for aiohttp.ClientSession
    sender = WebhookNotifier.from_settings(rotating(), session, clock=lambda: NOW)  # type: ignore[arg-type]
    await sender.send(note())
    (sent,) = session.sent
    assert len(sent.headers["webhook-signature"].split()) == 2
    for receiver_knows in (OLD, SECRET):  # a receiver that has not switched yet, and one that has
        signing.verify(receiver_knows, sent.headers, sent.body, now=NOW)


async def test_after_the_rotation_only_the_new_secret_signs() -> None:
    session = FakeSession()
    later = NOW + 3600
    sender = WebhookNotifier.from_settings(rotating(), session, clock=lambda: later)  # type: ignore[arg-type]
    await sender.send(note())
    (sent,) = session.sent
    signing.verify(SECRET, sent.headers, sent.body, now=later)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        signing.verify(OLD, sent.headers, sent.body, now=later)


async def test_other_tenants_are_signed_with_their_secret_alone() -> None:
    session = FakeSession()
    sender = WebhookNotifier.from_settings(rotating(), session, clock=lambda: NOW)  # type: ignore[arg-type]
    await sender.send(note(tenant="other"))
    assert len(session.sent[0].headers["webhook-signature"].split()) == 1


@pytest.mark.parametrize(("env", "message"), [
    ({"FLOODGATE_PREVIOUS_WEBHOOK_SECRETS": f"acme={OLD}"}, "go together"),
    ({"FLOODGATE_PREVIOUS_WEBHOOK_SECRETS_UNTIL": "2030-01-01T00:00:00Z"}, "go together"),
    ({"FLOODGATE_PREVIOUS_WEBHOOK_SECRETS": f"acme={OLD}", "FLOODGATE_PREVIOUS_WEBHOOK_SECRETS_UNTIL": "soon"},
     "not an ISO 8601 instant"),
])
def test_a_rotation_misconfigured_fails_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
