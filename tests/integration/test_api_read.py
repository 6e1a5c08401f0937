"""Reading jobs on the real broker: GET, SSE and WebSocket, fed by JobSnapshots written to the
test's notifications topic (standing in for the job-state agent), and by the providers' webhooks
this process's bridge stored (heard before the jobs table has them)."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from connectors.simulator import DEV_WEBHOOK_SECRET
from floodgate.api.read import MAX_SUBSCRIPTIONS, TOO_MANY_SUBSCRIPTIONS
from floodgate.api.server import ApiServer, serve, spill_dir
from floodgate.api.spill import FILE_NAME
from floodgate.ids import job_token, new_job_id
from floodgate.settings import Settings
from floodgate.signing import signature_headers
from floodgate.topics import TopicNames
from tests.integration.api_helpers import (
    DEV_SIMULATOR,
    aproduce_snapshots,
    aread_records,
    produce_snapshots,
    running_api,
    snapshot,
)

pytestmark = pytest.mark.kafka

BODY = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "waves"}}
DEADLINE = 15.0


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    # The provider's video_url as written (no store): these tests are about the view.
    # tests/integration/test_videos.py covers our signed links.
    return settings_for(simulator_url=DEV_SIMULATOR, video_store="off")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiServer]:
    async with running_api(settings, keepalive=0.3, wait_for_job=0.3) as server:
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


def token_for(settings: Settings, job_id: str) -> str:
    return job_token(settings.secret.reveal().encode(), job_id)


async def test_token_checks(api: ApiServer, http: aiohttp.ClientSession, settings: Settings) -> None:
    job = await submit(http, api)
    other = await submit(http, api)
    url = job["status_url"]
    async with http.get(url) as resp:
        assert resp.status == 401 and resp.headers["Content-Type"] == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for bad in ("nope", other["token"]):
        async with http.get(url, headers={"Authorization": f"Bearer {bad}"}) as resp:
            assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"
        async with http.get(f"{url}/events", params={"token": bad}) as resp:
            assert resp.status == 404
    unknown = f"{api.url}/v1/jobs/job_00000000000000000000000000"
    async with http.get(unknown, headers={"Authorization": f"Bearer {job['token']}"}) as resp:
        assert resp.status == 404
    async with http.get(url, params={"token": job["token"]}) as resp:
        assert resp.status == 200 and (await resp.json())["job_id"] == job["job_id"]


async def test_a_job_accepted_elsewhere_is_queued(api: ApiServer, http: aiohttp.ClientSession,
                                                  settings: Settings) -> None:
    stranger = new_job_id()  # accepted by "another instance": a valid token, nothing in this view yet
    async with http.get(f"{api.url}/v1/jobs/{stranger}", params={"token": token_for(settings, stranger)}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "queued" and body["job_id"] == stranger and body["created_at"].endswith("Z")


async def test_a_read_waits_for_a_job_about_to_arrive(settings: Settings, http: aiohttp.ClientSession) -> None:
    async with running_api(settings, wait_for_job=DEADLINE) as api:
        job_id = new_job_id()
        url = f"{api.url}/v1/jobs/{job_id}"
        get = asyncio.create_task(http.get(url, params={"token": token_for(settings, job_id)}))
        await aproduce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications,
                                 snapshot(job_id, 3, "running", progress=0.5))
        async with await asyncio.wait_for(get, DEADLINE) as resp:
            body = await resp.json()
    assert body["status"] == "running" and body["progress"] == 0.5


async def test_view_is_rebuilt_from_notifications_at_start(settings: Settings,
                                                           http: aiohttp.ClientSession) -> None:
    job_id = new_job_id()
    async with running_api(settings, roles={"read"}):
        pass  # a first run creates the topics, as a deployment's first start would
    # Out of order on purpose: the highest version must win, not the last written.
    produce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications, [
        snapshot(job_id, 1, "queued"),
        snapshot(job_id, 4, "completed", progress=1.0, video_url="https://cdn.example/v.mp4",
                 metadata={"k": "v"}),
        snapshot(job_id, 3, "running", progress=0.7),
    ])
    async with running_api(settings, roles={"read"}) as api:
        assert api.view is not None and api.view.ready.is_set()
        async with http.get(f"{api.url}/v1/jobs/{job_id}",
                            headers={"Authorization": f"Bearer {token_for(settings, job_id)}"}) as resp:
            body = await resp.json()
    assert body == {
        "job_id": job_id, "status": "completed", "model": "kling-2.1", "provider": "kling", "progress": 1.0,
        "result": {"video_url": "https://cdn.example/v.mp4"}, "error": None,
        "created_at": "2023-11-14T22:13:20.000Z", "updated_at": "2023-11-14T22:13:20.004Z", "metadata": {"k": "v"},
        "priority": "standard", "serving_model": "kling-2.1", "route_note": None,
        "queue_position": None, "provider_queue_position": None, "eta_seconds": None, "eta_ready_seconds": None,
        "final": True,
    }


async def test_jobs_beyond_the_memory_bound_read_back_from_disk(settings: Settings,
                                                                 http: aiohttp.ClientSession) -> None:
    ids = [new_job_id() for _ in range(6)]
    async with running_api(settings, roles={"read"}):
        pass  # creates the topics
    produce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications, [
        snapshot(job_id, 2, "completed", progress=1.0, video_url=f"https://cdn.example/{n}.mp4")
        for n, job_id in enumerate(ids)])
    # A restarted API replays the topic and evicts as it goes: 4 of the 6 jobs end up on disk.
    async with running_api(settings, roles={"read"}, view_max_jobs=2) as api:
        assert api.view is not None and api.view.ready.is_set() and len(api.view) == 2
        assert len(list(spill_dir(settings).glob(f"*/{FILE_NAME}"))) == 1
        for n, job_id in enumerate(ids):
            async with http.get(f"{api.url}/v1/jobs/{job_id}",
                                headers={"Authorization": f"Bearer {token_for(settings, job_id)}"}) as resp:
                body = await resp.json()
            assert (body["status"], body["result"]) == ("completed", {"video_url": f"https://cdn.example/{n}.mp4"})
    assert list(spill_dir(settings).iterdir()) == []  # each process removes its own file


async def read_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """SSE blocks as dicts; a comment block comes as {"comment": ...}."""
    block: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if block:
                yield block
            block = {}
        elif line.startswith(":"):
            block["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(": ")
            block[name] = value


async def test_sse_streams_every_change_then_closes(api: ApiServer, http: aiohttp.ClientSession,
                                                    settings: Settings) -> None:
    job = await submit(http, api)
    topic = TopicNames(settings).notifications
    async with http.get(job["events_url"], params={"token": job["token"]}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        events = read_sse(resp)
        first = await asyncio.wait_for(anext(events), DEADLINE)
        assert first["event"] == "job" and first["id"] == "0"
        assert orjson.loads(first["data"])["status"] == "queued"

        keepalive = await asyncio.wait_for(anext(events), DEADLINE)  # nothing happens for a while
        assert keepalive == {"comment": "keep-alive"}

        await aproduce_snapshots(settings.kafka_bootstrap, topic, snapshot(job["job_id"], 1, "running", progress=0.4))
        update = await next_event(events)
        assert update["id"] == "1" and orjson.loads(update["data"])["progress"] == 0.4

        await aproduce_snapshots(settings.kafka_bootstrap, topic,
                                 snapshot(job["job_id"], 2, "completed", progress=1.0, video_url="https://v/x.mp4"))
        done = await next_event(events)
        assert orjson.loads(done["data"])["result"] == {"video_url": "https://v/x.mp4"}
        with pytest.raises(StopAsyncIteration):  # the server closes the stream after a terminal state
            await asyncio.wait_for(anext(events), DEADLINE)


async def next_event(events: AsyncIterator[dict[str, str]]) -> dict[str, str]:
    """The next ``job`` event, skipping keep-alives."""
    while True:
        block = await asyncio.wait_for(anext(events), DEADLINE)
        if "comment" not in block:
            return block


async def test_websocket_subscriptions(api: ApiServer, http: aiohttp.ClientSession, settings: Settings) -> None:
    first, second = await submit(http, api), await submit(http, api)
    topic = TopicNames(settings).notifications
    ws_url = api.url.replace("http://", "ws://") + "/v1/stream"
    async with http.ws_connect(ws_url, params={"job_id": first["job_id"], "token": first["token"]}) as ws:
        async def receive() -> dict[str, Any]:
            msg: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), DEADLINE)
            return msg

        assert await receive() == {"type": "subscribed", "job_id": first["job_id"]}
        current = await receive()
        assert current["type"] == "job" and current["job"]["status"] == "queued"

        await ws.send_json({"type": "subscribe", "job_id": second["job_id"], "token": first["token"]})
        assert await receive() == {"type": "error", "job_id": second["job_id"], "detail": "no such job"}
        await ws.send_json({"type": "subscribe", "job_id": second["job_id"], "token": second["token"]})
        assert await receive() == {"type": "subscribed", "job_id": second["job_id"]}
        assert (await receive())["job"]["job_id"] == second["job_id"]

        await aproduce_snapshots(settings.kafka_bootstrap, topic, snapshot(first["job_id"], 1, "running"))
        changed = await receive()
        assert changed["type"] == "job" and changed["job"]["job_id"] == first["job_id"]
        assert changed["job"]["status"] == "running"

        await ws.send_json({"type": "unsubscribe", "job_id": first["job_id"]})
        assert await receive() == {"type": "unsubscribed", "job_id": first["job_id"]}
        await aproduce_snapshots(settings.kafka_bootstrap, topic,
                                 snapshot(first["job_id"], 2, "failed", error="boom"),
                                 snapshot(second["job_id"], 1, "completed", video_url="https://v/2.mp4"))
        after = await receive()  # only the job still subscribed speaks
        assert after["job"]["job_id"] == second["job_id"] and after["job"]["status"] == "completed"

        await ws.send_str("not json")
        assert (await receive())["type"] == "error"


async def test_websocket_subscription_limit(api: ApiServer, http: aiohttp.ClientSession,
                                            settings: Settings) -> None:
    ids = [new_job_id() for _ in range(MAX_SUBSCRIPTIONS + 1)]
    ws_url = api.url.replace("http://", "ws://") + "/v1/stream"
    async with http.ws_connect(ws_url) as ws:

        async def replies_for(wanted: list[str]) -> dict[str, dict[str, Any]]:
            replies: dict[str, dict[str, Any]] = {}
            while len(replies) < len(wanted):
                msg = await asyncio.wait_for(ws.receive_json(), DEADLINE)
                if msg["type"] in ("subscribed", "error") and msg["job_id"] in wanted:
                    replies[msg["job_id"]] = msg
            return replies

        for job_id in ids:
            await ws.send_json({"type": "subscribe", "job_id": job_id, "token": token_for(settings, job_id)})
        replies = await replies_for(ids)
        assert [replies[j]["type"] for j in ids] == ["subscribed"] * MAX_SUBSCRIPTIONS + ["error"]
        refused = replies[ids[-1]]
        assert refused["code"] == TOO_MANY_SUBSCRIPTIONS and refused["limit"] == MAX_SUBSCRIPTIONS
        assert str(MAX_SUBSCRIPTIONS) in refused["detail"]

        # The cap is on unfinished jobs: a job that ends frees its place on the same connection.
        await aproduce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications,
                                 snapshot(ids[0], 1, "completed", video_url="https://v/0.mp4"))
        while True:
            msg = await asyncio.wait_for(ws.receive_json(), DEADLINE)
            if msg["type"] == "job" and msg["job"]["job_id"] == ids[0] and msg["job"]["status"] == "completed":
                break
        # The pump that sent the terminal state ends right after it; a retry settles the race.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while True:
            await ws.send_json({"type": "subscribe", "job_id": ids[-1], "token": token_for(settings, ids[-1])})
            again = (await replies_for([ids[-1]]))[ids[-1]]
            if again["type"] == "subscribed" or loop.time() > deadline:
                break
        assert again["type"] == "subscribed"


async def test_shutdown_ends_open_streams(settings: Settings, http: aiohttp.ClientSession) -> None:
    api = await serve(settings, host="127.0.0.1", port=0)
    try:
        job = await submit(http, api)
        sse = await http.get(job["events_url"], params={"token": job["token"]})
        await asyncio.wait_for(anext(read_sse(sse)), DEADLINE)
        ws = await http.ws_connect(api.url.replace("http://", "ws://") + "/v1/stream",
                                   params={"job_id": job["job_id"], "token": job["token"]})
        assert (await asyncio.wait_for(ws.receive_json(), DEADLINE))["type"] == "subscribed"
        started = asyncio.get_running_loop().time()
        closing = asyncio.create_task(api.close())
        # Streams end because the server says so, well before its 5 s shutdown timeout.
        while (msg := await asyncio.wait_for(ws.receive(), DEADLINE)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 1001
        assert await asyncio.wait_for(sse.content.read(), DEADLINE) == b""
        await asyncio.wait_for(closing, DEADLINE)
        assert asyncio.get_running_loop().time() - started < 4.0
        sse.release()
        await ws.close()
    finally:
        await api.close()


# -- a provider's word heard at this process's bridge (floodgate.api.heard) -------------------

def webhook(job_id: str, status: str, progress: int, msg_id: str, **data: Any) -> tuple[bytes, dict[str, str]]:
    """A signed simulator webhook (OpenAI Videos' event shape) for provider job ``video_1``."""
    kind = {"in_progress": "video.in_progress", "completed": "video.completed"}[status]
    body = orjson.dumps({
        "id": f"evt_{msg_id}", "object": "event", "type": kind, "created_at": int(time.time()),
        "data": {"id": "video_1", "object": "video", "status": status, "progress": progress,
                 "metadata": {"job_id": job_id}, **data}})
    return body, {"Content-Type": "application/json",
                  **signature_headers(DEV_WEBHOOK_SECRET, msg_id, body, time.time())}


@pytest.mark.parametrize("recorded", ["completed", "cancelled"])
@pytest.mark.parametrize("bridge", ["this process", "another process"])
async def test_a_watcher_hears_the_providers_word_before_the_jobs_table_and_the_table_has_the_last_say(
        api: ApiServer, settings: Settings, bridge: str, recorded: str) -> None:
    """``this process``: the bridge that stored the webhook tells its own watchers (and its feed,
    reading the same record, tells nothing twice); ``another process``: a bridge-only API process
    stores it, and this one's feed reads it from ``webhooks``. The end the table records is the
    one heard (``completed``) or another (``cancelled``: a cancel overtook the completion)."""
    job_id = new_job_id()
    topics = TopicNames(settings)
    await aproduce_snapshots(settings.kafka_bootstrap, topics.notifications, snapshot(job_id, 1, "submitted"))
    token = token_for(settings, job_id)
    ws_url = api.url.replace("http://", "ws://") + "/v1/stream"
    async with contextlib.AsyncExitStack() as stack:
        webhooks_to = api if bridge == "this process" else await stack.enter_async_context(
            running_api(settings, roles={"bridge"}))
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))
        ws = await stack.enter_async_context(http.ws_connect(ws_url, params={"job_id": job_id, "token": token}))

        async def receive() -> dict[str, Any]:
            while True:
                msg: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), DEADLINE)
                if msg["type"] == "job":
                    job: dict[str, Any] = msg["job"]
                    return job

        first = await receive()
        while first["status"] != "submitted":  # (the feed may still be catching up with the topic)
            first = await receive()

        body, headers = webhook(job_id, "in_progress", 40, "msg_1")
        async with http.post(f"{webhooks_to.url}/webhooks/kling", data=body, headers=headers) as resp:
            assert resp.status == 200
        running = await receive()
        assert (running["status"], running["progress"]) == ("running", 0.4)

        body, headers = webhook(job_id, "completed", 100, "msg_2", video_url="https://files.example/v.mp4")
        async with http.post(f"{webhooks_to.url}/webhooks/kling", data=body, headers=headers) as resp:
            assert resp.status == 200
        done = await receive()
        assert done["status"] == "completed" and done["result"] == {"video_url": "https://files.example/v.mp4"}
        assert done["final"] is False, "the worker has not recorded it"
        # Both words are on Kafka for the worker (whose table never ran here: only a view that
        # heard them could have told them).
        assert len(await aread_records(settings.kafka_bootstrap, topics.webhooks, 2)) == 2
        async with http.get(f"{api.url}/v1/jobs/{job_id}", params={"token": token}) as resp:
            read = await resp.json()
            assert (read["status"], read["final"]) == ("completed", False), "a read agrees with the watcher"

        # The table records the end: the one heard, or a cancel that reached the worker before
        # the webhooks. The watcher, whose subscription a heard end did not close, is told which,
        # and that it is final; then the subscription ends.
        end = (snapshot(job_id, 2, "completed", progress=1.0, video_url="https://files.example/v.mp4")
               if recorded == "completed" else snapshot(job_id, 2, "cancelled", error="cancelled by the user"))
        await aproduce_snapshots(settings.kafka_bootstrap, topics.notifications, end)
        last = await receive()
        assert (last["status"], last["final"]) == (recorded, True)
        async with http.get(f"{api.url}/v1/jobs/{job_id}", params={"token": token}) as resp:
            read = await resp.json()
            assert (read["status"], read["final"]) == (recorded, True)
