"""Reading jobs in memory (no Kafka): what the SSE and WebSocket handlers of
``floodgate.api.read`` leave behind and answer at the edges of a job's life."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from floodgate.api.app import build_app
from floodgate.api.view import JobView
from floodgate.ids import job_token, new_job_id
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings

SETTINGS = Settings(secret=Secret("s" * 32))
DEADLINE = 10.0


class NoSend:
    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        raise AssertionError("reading sends nothing")


def snapshot(job_id: str, version: int, status: str) -> dict[str, Any]:
    return {"job_id": job_id, "tenant": "default", "user_id": "u1", "model": "kling-2.1", "status": status,
            "version": version, "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_000,
            "progress": 1.0 if status == "completed" else 0.5, "metadata": {},
            "video_url": "https://cdn.example/v.mp4" if status == "completed" else None}


def token_for(job_id: str) -> str:
    return job_token(SETTINGS.secret.reveal().encode(), job_id)


@pytest.fixture
async def view() -> JobView:
    return JobView()


@pytest.fixture
async def client(view: JobView) -> AsyncIterator[TestClient]:
    # A long wait for unknown jobs: a pump that did start sits in it, holding its subscription.
    app = build_app(SETTINGS, dev_setup("http://127.0.0.1:9"), roles={"read"}, producer=NoSend(), view=view,
                    wait_for_job=DEADLINE)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize("leave", ["unsubscribe", "close"])
async def test_a_subscription_ended_at_once_leaves_no_subscriber(client: TestClient, view: JobView,
                                                                 leave: str) -> None:
    # The client's next message ends the subscription before its pump has taken a step: whatever
    # the pump registered with the view must be gone all the same, or every such client leaks a
    # queue (and the view keeps telling it every change of the job) for the life of the process.
    job_id = new_job_id()
    view.apply(snapshot(job_id, 1, "running"))
    for _ in range(20):
        ws = await client.ws_connect("/v1/stream")
        await ws.send_json({"type": "subscribe", "job_id": job_id, "token": token_for(job_id)})
        if leave == "close":
            await ws.close()
            continue
        await ws.send_json({"type": "unsubscribe", "job_id": job_id})
        while (msg := await asyncio.wait_for(ws.receive_json(), DEADLINE))["type"] != "unsubscribed":
            assert msg["type"] in ("subscribed", "job"), msg
        # The reply comes once the pump has ended (unsubscribe waits for it).
        assert not view.watches(job_id.encode())
        await ws.close()
    await client.close()  # the server ends only after every socket's handler has run its cleanup
    assert not view.watches(job_id.encode())


@pytest.mark.parametrize(("status", "last_event_id", "answer"), [
    ("completed", None, 200),
    ("completed", "6", 200),
    ("completed", "7", 204),
    ("completed", "8", 204),
    ("running", "7", 200),  # not finished: something may still follow, the stream stays open
])
async def test_events_of_a_finished_job_already_seen_are_204(client: TestClient, view: JobView, status: str,
                                                             last_event_id: str | None, answer: int) -> None:
    # An EventSource reconnects after any 200 that ends, but stops on a 204 (WHATWG HTML, server-
    # sent events): a client that has seen the final event must not be sent an empty stream.
    job_id = new_job_id()
    view.apply(snapshot(job_id, 7, status))
    headers = {"Authorization": f"Bearer {token_for(job_id)}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with client.get(f"/v1/jobs/{job_id}/events", headers=headers) as resp:
        assert resp.status == answer
        if answer == 204:
            assert await asyncio.wait_for(resp.read(), DEADLINE) == b""
        else:
            assert resp.headers["Content-Type"] == "text/event-stream"
        if status == "completed" and answer == 200:  # the final event, then the end of the stream
            body = await asyncio.wait_for(resp.content.read(), DEADLINE)
            assert body.startswith(b"event: job\nid: 7\n") and b'"status":"completed"' in body
    await client.close()
    assert not view.watches(job_id.encode())
