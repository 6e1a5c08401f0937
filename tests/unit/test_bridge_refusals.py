"""The bridge refuses a delivery whose proof is malformed with 401 problem+json and a challenge,
as it refuses a wrong one, never with a 500: a callback path whose MAC is not ASCII hex, a
timestamp too long for ``int()``, a signature header that is not hex. Nothing refused reaches
Kafka (a fake producer)."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.providers import callback
from connectors.providers.kling import KlingProvider
from connectors.providers.wavespeed import WaveSpeedProvider
from floodgate.api.app import build_app
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings

SETTINGS = Settings(secret=Secret("s" * 32))
SETUP = dev_setup("http://127.0.0.1:9")
CALLBACK_SECRET = "c" * 32


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        self.sent.append(topic)


@pytest.fixture
async def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
async def client(sender: RecordingSender) -> AsyncIterator[TestClient]:
    connectors = {
        "sora": SETUP.build_connectors()["sora"],  # Standard Webhooks signatures (floodgate.signing)
        "kling": KlingProvider("kling", "ak", "sk", CALLBACK_SECRET),  # per-job callback paths only
        "ws": WaveSpeedProvider("ws", "key", "whsec_wavespeed-secret", CALLBACK_SECRET),
    }
    app = build_app(SETTINGS, SETUP, roles={"bridge"}, producer=sender, view=None, connectors=connectors)
    async with TestClient(TestServer(app)) as c:
        yield c


async def assert_refused(resp: Any, sender: RecordingSender) -> None:
    assert resp.status == 401, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["detail"] == "webhook verification failed"
    # Every 401 carries a challenge (RFC 9110, 15.5.2); the provider's secret is its own realm.
    assert resp.headers.get("WWW-Authenticate") == 'Signature realm="floodgate-webhooks"'
    assert sender.sent == []


@pytest.mark.parametrize("mac", ["%C3%A9%C3%A9", "%C3%A9" * callback.MAC_HEX, "%D9%A0" * callback.MAC_HEX],
                         ids=["short-non-ascii", "non-ascii", "non-ascii-digits"])
async def test_a_callback_path_whose_mac_is_not_hex_is_401(client: TestClient, sender: RecordingSender,
                                                           mac: str) -> None:
    resp = await client.post(f"/webhooks/kling/job_x/{mac}/text2video", data=b'{"task_id": "t"}')
    await assert_refused(resp, sender)


async def test_a_timestamp_too_long_for_int_is_401(client: TestClient, sender: RecordingSender) -> None:
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "9" * 5000, "webhook-signature": "v1,AAAA"}
    await assert_refused(await client.post("/webhooks/sora", data=b"{}", headers=headers), sender)


@pytest.mark.parametrize("signature", ["v3," + "é" * 64, "v3," + "z" * 64], ids=["non-ascii", "non-hex"])
async def test_a_wavespeed_signature_that_is_not_hex_is_401(client: TestClient, sender: RecordingSender,
                                                            signature: str) -> None:
    mac = callback.mac(CALLBACK_SECRET, "ws", "job_x")
    headers = {"webhook-id": "wh_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": signature}
    await assert_refused(await client.post(f"/webhooks/ws/job_x/{mac}", data=b"{}", headers=headers), sender)
