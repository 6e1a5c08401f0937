"""The webhook bridge, served alone, on the real broker: only verified deliveries reach Kafka."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.simulator import DEV_WEBHOOK_SECRET
from floodgate import codec
from floodgate.api.bridge import MAX_WEBHOOK_BYTES
from floodgate.api.server import ApiServer
from floodgate.ids import new_job_id
from floodgate.settings import Settings
from floodgate.signing import signature_headers
from floodgate.topics import TopicNames
from tests.integration.api_helpers import DEV_SIMULATOR, aread_records, record_count, running_api

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(simulator_url=DEV_SIMULATOR)


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[ApiServer]:
    async with running_api(settings, roles={"bridge"}) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def event_body(job_id: str) -> bytes:
    """A completion webhook shaped like the simulator's (OpenAI Videos event)."""
    return orjson.dumps({
        "id": "evt_123", "object": "event", "type": "video.completed", "created_at": int(time.time()),
        "data": {"id": "video_9", "object": "video", "status": "completed", "progress": 100,
                 "video_url": "https://files.example/v.mp4", "metadata": {"job_id": job_id}},
    })


def signed(body: bytes, *, at: float | None = None, secret: str = DEV_WEBHOOK_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json",
            **signature_headers(secret, "msg_abc", body, time.time() if at is None else at)}


async def test_a_verified_webhook_is_stored_keyed_by_job(bridge: ApiServer, http: aiohttp.ClientSession,
                                                         settings: Settings) -> None:
    job_id = new_job_id()
    body = event_body(job_id)
    headers = {**signed(body), "X-Provider-Trace": "t-1"}
    async with http.post(f"{bridge.url}/webhooks/kling", data=body, headers=headers) as resp:
        assert resp.status == 200 and await resp.json() == {"received": True}
    [msg] = await aread_records(settings.kafka_bootstrap, TopicNames(settings).webhooks, 1)
    assert msg.key() == job_id.encode()
    envelope: dict[str, Any] = codec.decode("WebhookEnvelope", msg.value(), msg.headers())
    assert envelope["webhook_id"] == "msg_abc" and envelope["provider"] == "kling"
    assert envelope["body"] == body  # byte for byte: signatures must still verify downstream
    assert envelope["headers"]["x-provider-trace"] == "t-1"
    assert envelope["headers"]["webhook-signature"] == headers["webhook-signature"]
    assert abs(envelope["received_at"] - time.time() * 1000) < 60_000


async def test_an_unparseable_but_authentic_webhook_is_forwarded_without_key(
        bridge: ApiServer, http: aiohttp.ClientSession, settings: Settings) -> None:
    body = b'{"surprise": true}'
    async with http.post(f"{bridge.url}/webhooks/wan", data=body, headers=signed(body)) as resp:
        assert resp.status == 200
    [msg] = await aread_records(settings.kafka_bootstrap, TopicNames(settings).webhooks, 1)
    assert msg.key() is None and codec.decode("WebhookEnvelope", msg.value(), msg.headers())["provider"] == "wan"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: signed(body, secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"), id="forged"),
        pytest.param(lambda body: signed(body, at=time.time() - 301), id="stale"),
        # The header carries whole seconds (truncated), so +301 could sign a time only 300.0x s
        # ahead, inside the 300 s window once the request has taken a few milliseconds.
        pytest.param(lambda body: signed(body, at=time.time() + 302), id="future"),
        pytest.param(lambda body: {**signed(b"other body")}, id="body-swapped"),
        pytest.param(lambda body: {"Content-Type": "application/json"}, id="unsigned"),
    ],
)
async def test_unverified_webhooks_never_reach_kafka(bridge: ApiServer, http: aiohttp.ClientSession,
                                                     settings: Settings,
                                                     headers: Callable[[bytes], dict[str, str]]) -> None:
    body = event_body(new_job_id())
    async with http.post(f"{bridge.url}/webhooks/kling", data=body, headers=headers(body)) as resp:
        assert resp.status == 401 and resp.headers["Content-Type"] == "application/problem+json"
    # The 401 is sent after the decision and nothing is sent to Kafka before it: the topic stays empty.
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).webhooks) == 0


async def test_unknown_provider_and_oversize(bridge: ApiServer, http: aiohttp.ClientSession,
                                             settings: Settings) -> None:
    body = event_body(new_job_id())
    async with http.post(f"{bridge.url}/webhooks/veo", data=body, headers=signed(body)) as resp:
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"
    big = b"x" * (MAX_WEBHOOK_BYTES + 1)
    async with http.post(f"{bridge.url}/webhooks/kling", data=big, headers=signed(big)) as resp:
        assert resp.status == 413 and resp.headers["Content-Type"] == "application/problem+json"
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).webhooks) == 0


async def test_the_bridge_alone_serves_no_job_routes(bridge: ApiServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{bridge.url}/v1/jobs", json={}) as resp:
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"
    async with http.get(f"{bridge.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["roles"] == ["bridge"]
    async with http.get(f"{bridge.url}/openapi.json") as resp:
        assert set((await resp.json())["paths"]) == {"/webhooks/{provider}", "/webhooks/{provider}/{job_id}/{mac}",
                                                     "/webhooks/{provider}/{job_id}/{mac}/{extra}",
                                                     "/healthz", "/openapi.json", "/metrics"}
