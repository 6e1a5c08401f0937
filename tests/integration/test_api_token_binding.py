"""A job's token opens that job and no other, on every route that takes one (GET, SSE, cancel,
WebSocket), on a running API with the real broker: job A's token on job B is a 404 (or a
WebSocket error) exactly like an unknown job, and a cancel it asks for never reaches Kafka."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from floodgate.api.server import ApiServer
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from tests.integration.api_helpers import DEV_SIMULATOR, record_count, running_api

pytestmark = pytest.mark.kafka

BODY = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "waves"}}


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(simulator_url=DEV_SIMULATOR)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiServer]:
    async with running_api(settings, wait_for_job=0.3) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def submit(http: aiohttp.ClientSession, api: ApiServer) -> dict[str, Any]:
    async with http.post(f"{api.url}/v1/jobs", json=BODY) as resp:
        assert resp.status == 202
        accepted: dict[str, Any] = await resp.json()
        return accepted


async def test_a_token_of_job_a_never_reads_or_cancels_job_b(api: ApiServer, http: aiohttp.ClientSession,
                                                             settings: Settings) -> None:
    a, b = await submit(http, api), await submit(http, api)
    job_b = f"{api.url}/v1/jobs/{b['job_id']}"
    bearer = {"Authorization": f"Bearer {a['token']}"}
    events = TopicNames(settings).events
    before = record_count(settings.kafka_bootstrap, events)
    async with http.get(job_b, headers=bearer) as resp:
        assert resp.status == 404
    async with http.get(job_b, params={"token": a["token"]}) as resp:
        assert resp.status == 404
    async with http.get(f"{job_b}/events", headers=bearer) as resp:
        assert resp.status == 404
    async with http.post(f"{job_b}/cancel", headers=bearer) as resp:
        assert resp.status == 404
    assert record_count(settings.kafka_bootstrap, events) == before  # the refused cancel wrote nothing
    async with http.ws_connect(api.url.replace("http://", "ws://") + "/v1/stream") as ws:
        await ws.send_json({"type": "subscribe", "job_id": b["job_id"], "token": a["token"]})
        assert await ws.receive_json(timeout=15) == {"type": "error", "job_id": b["job_id"], "detail": "no such job"}
        # The same socket, the right pairing: the refusal was about the token, not the socket.
        await ws.send_json({"type": "subscribe", "job_id": a["job_id"], "token": a["token"]})
        assert await ws.receive_json(timeout=15) == {"type": "subscribed", "job_id": a["job_id"]}
    # Each token still opens its own job.
    for job in (a, b):
        async with http.get(job["status_url"], headers={"Authorization": f"Bearer {job['token']}"}) as resp:
            assert resp.status == 200 and (await resp.json())["job_id"] == job["job_id"]
