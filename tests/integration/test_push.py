"""Push to phones against stand-ins that are real servers (``tests/push_standins.py``): the FCM
and APNs notifiers on their own, then the push deliveries reading ``results`` on the real broker."""
from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from connectors.notifiers.apns import ApnsNotifier
from connectors.notifiers.base import Notification
from connectors.notifiers.fcm import FcmNotifier
from connectors.notifiers.phones import http_client
from floodgate import codec
from floodgate.errors import NotificationError
from floodgate.kafka_admin import ensure_topics
from floodgate.notify import RetryPolicy
from floodgate.notify.push import PushDeliveries
from floodgate.push import PushTarget
from floodgate.settings import Secret, Settings
from floodgate.topics import TopicNames
from tests.kafka_util import consume_until, unique_name
from tests.push_standins import ApnsStandIn, FcmStandIn, Received, apns_credentials, fcm_error

APNS_TOKEN = "a1" * 32
FCM_TOKEN = "fcm-device-1:APA91bHun4MxP5egoKMwt2KZFBaFUH"
TOPIC = "com.example.floodgate"
DEADLINE = 30.0
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_elapsed=10.0)


def note(job_id: str, push: PushTarget, status: str = "completed") -> Notification:
    return Notification(job_id=job_id, version=4, tenant="t", status=status, model="m", provider="p", progress=1.0,
                        video_url=f"https://cdn.example/{job_id}.mp4" if status == "completed" else None,
                        error="no luck" if status == "failed" else None, created_at=1, updated_at=2,
                        webhook_url=None, push=push)


@pytest.fixture
async def fcm_standin() -> AsyncIterator[FcmStandIn]:
    standin = FcmStandIn()
    await standin.start()
    try:
        yield standin
    finally:
        await standin.close()


@pytest.fixture
async def apns_standin(tmp_path: Path) -> AsyncIterator[ApnsStandIn]:
    standin = ApnsStandIn(apns_credentials(), topic=TOPIC)
    await standin.start(tmp_path / "ca.pem")
    try:
        yield standin
    finally:
        await standin.close()


def push_settings(fcm: FcmStandIn, apns: ApnsStandIn, tmp_path: Path, base: Settings | None = None) -> Settings:
    """Settings as an operator writes them: the key file by path, the .p8 key through another variable."""
    account = tmp_path / "service-account.json"
    account.write_text(json.dumps(fcm.account))
    env = {"FLOODGATE_FCM_SERVICE_ACCOUNT": str(account), "FLOODGATE_FCM_URL": fcm.url,
           "FLOODGATE_APNS_KEY": "env:APNS_P8", "APNS_P8": apns.credentials.key_pem,
           "FLOODGATE_APNS_KEY_ID": apns.credentials.key_id, "FLOODGATE_APNS_TEAM_ID": apns.credentials.team_id,
           "FLOODGATE_APNS_TOPIC": TOPIC, "FLOODGATE_APNS_URL": apns.url,
           "FLOODGATE_PUSH_CA_FILE": str(tmp_path / "ca.pem")}
    loaded = Settings.from_env(env)
    if base is None:
        return loaded
    return base.with_overrides(**{name: getattr(loaded, name) for name in (
        "fcm_service_account", "fcm_url", "apns_key", "apns_key_id", "apns_team_id", "apns_topic", "apns_url",
        "push_ca_file")})


# --- the notifiers against the stand-ins -----------------------------------------------------------

async def test_fcm_push_is_authorised_by_a_signed_assertion_and_shaped_as_fcm_v1(
        fcm_standin: FcmStandIn, apns_standin: ApnsStandIn, tmp_path: Path) -> None:
    settings = push_settings(fcm_standin, apns_standin, tmp_path)
    async with http_client(settings, http2=True) as client:
        notifier = FcmNotifier.from_settings(settings, client)
        await notifier.send(note("job-a", PushTarget("fcm", FCM_TOKEN)))
        await notifier.send(note("job-b", PushTarget("fcm", FCM_TOKEN), status="failed"))
        assert fcm_standin.token_requests == 1  # the access token is reused
        fcm_standin.expire_tokens()
        with pytest.raises(NotificationError) as info:
            await notifier.send(note("job-c", PushTarget("fcm", FCM_TOKEN)))
        assert info.value.retriable and info.value.status == 401
        await notifier.send(note("job-c", PushTarget("fcm", FCM_TOKEN)))  # the retry: a fresh token
    assert fcm_standin.token_requests == 2 and fcm_standin.refused_assertions == 0
    accepted = [r for r in fcm_standin.log.received if r.status == 200]
    assert [r.body["message"]["data"]["job_id"] for r in accepted] == ["job-a", "job-b", "job-c"]
    assert accepted[0].body["message"]["token"] == FCM_TOKEN
    assert accepted[1].body["message"]["notification"]["title"] == "Your video could not be made"


async def test_fcm_unregistered_token_is_final(fcm_standin: FcmStandIn, apns_standin: ApnsStandIn,
                                               tmp_path: Path) -> None:
    settings = push_settings(fcm_standin, apns_standin, tmp_path)
    fcm_standin.script(FCM_TOKEN, *fcm_error(404, "NOT_FOUND", "UNREGISTERED"))
    async with http_client(settings, http2=True) as client:
        with pytest.raises(NotificationError) as info:
            await FcmNotifier.from_settings(settings, client).send(note("job-a", PushTarget("fcm", FCM_TOKEN)))
    assert not info.value.retriable and "UNREGISTERED" in str(info.value)


async def test_apns_push_goes_over_http2_with_a_valid_provider_token(
        fcm_standin: FcmStandIn, apns_standin: ApnsStandIn, tmp_path: Path) -> None:
    settings = push_settings(fcm_standin, apns_standin, tmp_path)
    async with http_client(settings, http2=True) as client:
        notifier = ApnsNotifier.from_settings(settings, client)
        await notifier.send(note("job-a", PushTarget("apns", APNS_TOKEN)))
        await notifier.send(note("job-b", PushTarget("apns", APNS_TOKEN), status="failed"))
        apns_standin.script(APNS_TOKEN, 410, "Unregistered")
        with pytest.raises(NotificationError) as gone:
            await notifier.send(note("job-c", PushTarget("apns", APNS_TOKEN)))
        apns_standin.script(APNS_TOKEN, 503, "ServiceUnavailable")
        with pytest.raises(NotificationError) as busy:
            await notifier.send(note("job-d", PushTarget("apns", APNS_TOKEN)))
    assert not gone.value.retriable and "Unregistered" in str(gone.value)
    assert busy.value.retriable
    first, second = apns_standin.log.received[:2]
    assert (first.status, second.status) == (200, 200)
    assert first.headers["apns-topic"] == TOPIC and first.headers["apns-push-type"] == "alert"
    assert first.body["aps"]["alert"]["title"] == "Your video is ready" and first.body["job_id"] == "job-a"
    assert len(apns_standin.tokens_seen) == 1  # one provider token for every push


async def test_apns_bad_device_token_and_unverified_tls(fcm_standin: FcmStandIn, apns_standin: ApnsStandIn,
                                                       tmp_path: Path) -> None:
    settings = push_settings(fcm_standin, apns_standin, tmp_path)
    apns_standin.script(APNS_TOKEN, 400, "BadDeviceToken")
    async with http_client(settings, http2=True) as client:
        with pytest.raises(NotificationError) as bad:
            await ApnsNotifier.from_settings(settings, client).send(note("job-a", PushTarget("apns", APNS_TOKEN)))
    assert not bad.value.retriable and "BadDeviceToken" in str(bad.value)
    untrusting = settings.with_overrides(push_ca_file="")  # the stand-in's CA is not a system CA
    async with http_client(untrusting, http2=True) as client:
        with pytest.raises(NotificationError) as tls:
            await ApnsNotifier.from_settings(untrusting, client).send(note("job-b", PushTarget("apns", APNS_TOKEN)))
    assert tls.value.retriable and "ConnectError" in str(tls.value)


async def test_the_apns_standin_speaks_only_http2(apns_standin: ApnsStandIn, tmp_path: Path) -> None:
    trusting = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    async with httpx.AsyncClient(http2=False, verify=trusting) as client:
        response = await client.post(f"{apns_standin.url}/3/device/{APNS_TOKEN}", content=b"{}")
    assert response.http_version == "HTTP/1.1" and response.status_code == 505


# --- the push deliveries on the broker -------------------------------------------------------------

def snapshot(job_id: str, push: PushTarget | None, status: str = "completed") -> dict[str, Any]:
    done = status == "completed"
    return {"job_id": job_id, "tenant": "t", "user_id": "u", "model": "m", "provider": "p", "provider_job_id": None,
            "status": status, "progress": 1.0 if done else 0.3, "video_url": f"https://cdn.example/{job_id}.mp4"
            if done else None, "error": "no luck" if status == "failed" else None, "attempt": 0,
            "created_at": 1_790_000_000_000, "updated_at": 1_790_000_060_000, "webhook_url": None, "metadata": {},
            "version": 4, "push": push.to_record() if push else None}


def publish(settings: Settings, snapshots: list[dict[str, Any]]) -> dict[str, bytes]:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    values = {}
    for snap in snapshots:
        value, headers = codec.encode("JobSnapshot", snap)
        producer.produce(TopicNames(settings).results, value, snap["job_id"].encode(), headers=list(headers))
        values[snap["job_id"]] = value
    assert producer.flush(30) == 0
    return values


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.kafka
async def test_push_deliveries_send_final_states_and_dead_letter_dead_tokens(
        settings_for: Callable[..., Settings], fcm_standin: FcmStandIn, apns_standin: ApnsStandIn,
        tmp_path: Path) -> None:
    base = settings_for(app_id=unique_name("app-"), session_timeout=6.0, webhook_secrets=Secret(""))
    settings = push_settings(fcm_standin, apns_standin, tmp_path, base)
    ensure_topics(settings.kafka_bootstrap, TopicNames(settings).layout({}), replication=1)
    fcm_dead, apns_dead, fcm_busy = "fcm-dead:APA91b", "dd" * 32, "fcm-busy:APA91b"
    fcm_standin.script(fcm_dead, *fcm_error(404, "NOT_FOUND", "UNREGISTERED"))
    fcm_standin.script(fcm_busy, *fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"))
    apns_standin.script(apns_dead, 410, "Unregistered")
    values = publish(settings, [
        snapshot("job-fcm", PushTarget("fcm", FCM_TOKEN)),
        snapshot("job-apns", PushTarget("apns", APNS_TOKEN), status="failed"),
        snapshot("job-busy", PushTarget("fcm", fcm_busy)),
        snapshot("job-fcm-dead", PushTarget("fcm", fcm_dead)),
        snapshot("job-apns-dead", PushTarget("apns", apns_dead)),
        snapshot("job-running", PushTarget("fcm", FCM_TOKEN), status="running"),
        snapshot("job-cancelled", PushTarget("apns", APNS_TOKEN), status="cancelled"),
        snapshot("job-no-phone", None),
    ])
    service = PushDeliveries(settings, policy=FAST, commit_interval=0.05)
    await service.start()
    try:
        await eventually(lambda: service.stats.delivered + service.stats.failed + service.stats.skipped == 8,
                         "all results handled")
    finally:
        await service.stop()
    stats = service.stats
    assert (stats.delivered, stats.failed, stats.skipped, stats.retries, stats.dead_lettered) == (3, 2, 3, 1, 2)
    assert service.group_id.endswith("-push")

    def ok(log: list[Received]) -> list[str]:
        return sorted(r.body.get("job_id") or r.body["message"]["data"]["job_id"] for r in log if r.status == 200)

    assert ok(fcm_standin.log.received) == ["job-busy", "job-fcm"]
    assert ok(apns_standin.log.received) == ["job-apns"]
    # Final answers are not retried: one attempt each.
    assert sum(r.token == fcm_dead for r in fcm_standin.log.received) == 1
    assert sum(r.token == apns_dead for r in apns_standin.log.received) == 1

    messages = await asyncio.to_thread(consume_until, settings.kafka_bootstrap, TopicNames(settings).dlq,
                                       lambda m: len(m) >= 2)
    letters = {codec.decode("JobSnapshot", (d := codec.decode("DeadLetter", m.value(), m.headers()))["original"],
                            d["headers"])["job_id"]: d for m in messages}
    assert set(letters) == {"job-fcm-dead", "job-apns-dead"}
    fcm_reason = letters["job-fcm-dead"]["reason"]
    assert "UNREGISTERED" in fcm_reason and "after 1 attempt" in fcm_reason
    assert "Unregistered" in letters["job-apns-dead"]["reason"]
    assert letters["job-fcm-dead"]["original"] == values["job-fcm-dead"]
    for letter in letters.values():  # device tokens stay out of the reason
        assert fcm_dead not in letter["reason"] and apns_dead not in letter["reason"]
