"""The bridge writes a finished job's webhook before its slot release (no Kafka: a fake producer).

The two records are not one write. A release that lands while its webhook does not (the broker
going away between them) frees the slot, and with it the poller's watch over the job, while the
jobs table never learns that the job ended: a chaos run's broker restart left such a job
`running` for good. So the release waits for the webhook, and a webhook that is not stored
writes no release."""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from connectors.simulator import DEV_WEBHOOK_SECRET
from floodgate.api.app import build_app
from floodgate.api.kafka_io import KafkaUnavailable
from floodgate.ids import new_job_id
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from floodgate.signing import signature_headers
from floodgate.topics import TopicNames

SETTINGS = Settings(secret=Secret("s" * 32))
TOPICS = TopicNames(SETTINGS)


class OrderedSender:
    """Records each write as it starts and as it is acknowledged; ``refuse`` fails one topic's
    writes; ``hold`` keeps the acknowledgements of one topic's writes until released."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.refuse: str | None = None
        self.hold: dict[str, asyncio.Event] = {}
        self.sending = asyncio.Event()
        """Set when any write starts."""

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        self.events.append(("sent", topic))
        self.sending.set()
        if topic in self.hold:
            await self.hold[topic].wait()
        if topic == self.refuse:
            raise KafkaUnavailable("broker going away")
        self.events.append(("acked", topic))


@pytest.fixture
async def sender() -> OrderedSender:
    return OrderedSender()


@pytest.fixture
async def client(sender: OrderedSender) -> AsyncIterator[TestClient]:
    app = build_app(SETTINGS, dev_setup("http://127.0.0.1:9"), roles={"bridge"}, producer=sender, view=None)
    async with TestClient(TestServer(app)) as c:
        yield c


def completion() -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({
        "id": "evt_1", "object": "event", "type": "video.completed", "created_at": int(time.time()),
        "data": {"id": "video_9", "object": "video", "status": "completed", "progress": 100,
                 "video_url": "https://files.example/v.mp4", "metadata": {"job_id": new_job_id()}},
    })
    return body, {"Content-Type": "application/json",
                  **signature_headers(DEV_WEBHOOK_SECRET, "msg_1", body, time.time())}


async def test_the_release_is_sent_only_once_the_webhook_is_acknowledged(client: TestClient,
                                                                         sender: OrderedSender) -> None:
    sender.hold[TOPICS.webhooks] = held = asyncio.Event()
    body, headers = completion()
    answer = asyncio.create_task(client.post("/webhooks/kling", data=body, headers=headers))
    await asyncio.wait_for(sender.sending.wait(), 10)
    assert sender.events == [("sent", TOPICS.webhooks)]  # and nothing else while it is not acknowledged
    held.set()
    resp = await asyncio.wait_for(answer, 10)
    assert resp.status == 200
    assert sender.events == [("sent", TOPICS.webhooks), ("acked", TOPICS.webhooks),
                             ("sent", TOPICS.release("kling")), ("acked", TOPICS.release("kling"))]


async def test_a_webhook_not_stored_writes_no_release_and_asks_for_a_redelivery(client: TestClient,
                                                                              sender: OrderedSender) -> None:
    sender.refuse = TOPICS.webhooks
    body, headers = completion()
    resp = await client.post("/webhooks/kling", data=body, headers=headers)
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert sender.events == [("sent", TOPICS.webhooks)]  # the slot stays held: the poller watches it


async def test_a_release_not_stored_asks_for_a_redelivery(client: TestClient, sender: OrderedSender) -> None:
    sender.refuse = TOPICS.release("kling")
    body, headers = completion()
    resp = await client.post("/webhooks/kling", data=body, headers=headers)
    assert resp.status == 503
    assert sender.events == [("sent", TOPICS.webhooks), ("acked", TOPICS.webhooks), ("sent", TOPICS.release("kling"))]


async def answers_timed(client: TestClient) -> float:
    """``floodgate_webhook_answer_seconds``'s count, as the bridge's ``/metrics`` tells it."""
    text = await (await client.get("/metrics")).text()
    match = re.search(r"^floodgate_webhook_answer_seconds_count (\S+)$", text, re.M)
    assert match is not None, "the bridge serves the webhook answer time"
    return float(match.group(1))


async def test_the_answer_is_timed_once_kafka_has_the_delivery_and_refusals_are_not(
        client: TestClient, sender: OrderedSender) -> None:
    timed = await answers_timed(client)  # (the registry is the process's: other tests' count too)
    sender.hold[TOPICS.webhooks] = held = asyncio.Event()
    body, headers = completion()
    answer = asyncio.create_task(client.post("/webhooks/kling", data=body, headers=headers))
    await asyncio.wait_for(sender.sending.wait(), 10)
    assert await answers_timed(client) == timed  # still waiting for Kafka: not answered, not timed
    held.set()
    assert (await asyncio.wait_for(answer, 10)).status == 200
    assert await answers_timed(client) == timed + 1
    sender.refuse = TOPICS.webhooks
    body, headers = completion()
    assert (await client.post("/webhooks/kling", data=body, headers=headers)).status == 503
    assert await answers_timed(client) == timed + 1
