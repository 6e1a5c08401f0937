"""A job's whole life on the real broker, the real simulator and the real processes: accepted over
HTTP (and the SDK, and a raw JSON line on `requests`), routed, submitted, rendered, its webhooks
verified and normalised, its state followed over GET, SSE and WebSocket."""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from floodgate import codec
from floodgate.ids import new_job_id
from tests.e2e.stack_util import TERMINAL, get_job, make_stack, simulator_config, submit, until
from tests.helpers import simulator_stats
from tests.kafka_util import consume_until, produce, wait_consumed

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    home = tmp_path_factory.mktemp("happy")
    # The worker yields the CPU (FLOODGATE_WORKER_NICE), as on a host it shares with the API.
    with make_stack(kafka_bootstrap, home, sim_config=simulator_config(home / "sim.json"), worker_nice=5) as s:
        yield s


def _unsigned(job: dict) -> str:
    """The job's video link without its query (expiry and signature)."""
    return str(job["result"]["video_url"]).partition("?")[0]


async def _completed(session: aiohttp.ClientSession, api: str, job_id: str, token: str) -> dict:
    async def check() -> dict | None:
        job = await get_job(session, api, job_id, token)
        return job if job["status"] in TERMINAL else None

    return await until(check, timeout=60, what=f"{job_id} to finish")


async def test_http_job_completes_and_is_followed_by_get_sse_and_websocket(stack) -> None:
    async with aiohttp.ClientSession() as session:
        accepted = await submit(session, stack.api_url, {
            "model": "wan-2.6", "user_id": "alice", "input": {"prompt": "a red kite over the sea"}})
        job_id, token = accepted["job_id"], accepted["token"]
        first = await get_job(session, stack.api_url, job_id, token)  # right after the 202: never 404
        assert first["status"] in ("queued", "submitted", "running", "completed")

        sse_events: list[dict] = []

        async def follow_sse() -> None:
            async with session.get(accepted["events_url"], headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:"):
                        sse_events.append(json.loads(line[5:]))
                        if sse_events[-1]["status"] in TERMINAL:
                            return

        ws_events: list[dict] = []

        async def follow_ws() -> None:
            async with session.ws_connect(f"{stack.api_url}/v1/stream") as ws:
                await ws.send_json({"type": "subscribe", "job_id": job_id, "token": token})
                async for msg in ws:
                    data = msg.json()
                    if data.get("type") == "job":
                        ws_events.append(data["job"])
                        if data["job"]["status"] in TERMINAL:
                            return

        await asyncio.wait_for(asyncio.gather(follow_sse(), follow_ws()), timeout=60)
        final = await _completed(session, stack.api_url, job_id, token)

    assert final["status"] == "completed", final
    assert final["provider"] == "wan"
    # Our signed link to the stored video, made at each read (so its expiry may differ between reads).
    assert final["result"]["video_url"].startswith(f"{stack.api_url}/v1/videos/{job_id}?expires=")
    assert sse_events[-1]["status"] == "completed" and _unsigned(sse_events[-1]) == _unsigned(final)
    assert ws_events[-1]["status"] == "completed" and _unsigned(ws_events[-1]) == _unsigned(final)


async def test_retired_sora_falls_back_to_kling(stack) -> None:
    async with aiohttp.ClientSession() as session:
        accepted = await submit(session, stack.api_url, {
            "model": "sora-2", "user_id": "bob", "input": {"prompt": "a paper boat in rain"}})
        final = await _completed(session, stack.api_url, accepted["job_id"], accepted["token"])
    assert final["status"] == "completed"
    assert final["provider"] == "kling"  # Sora 2's API was retired on 2026-09-24


async def test_sdk_job_reaches_results(stack) -> None:
    from floodgate.sdk import FloodgateClient

    with FloodgateClient(stack.bootstrap, topic_prefix=stack.settings.topic_prefix) as client:
        job_id = client.submit("kling-2.1", "a fox in snow", user_id="carol")
    results = consume_until(stack.bootstrap, stack.settings.topic("results"),
                            lambda ms: any(m.key() == job_id.encode() for m in ms), timeout=60)
    final = [codec.decode("JobSnapshot", m.value(), m.headers()) for m in results if m.key() == job_id.encode()][0]
    assert final["status"] == "completed" and final["video_url"]


def test_json_line_replay_completes_and_garbage_goes_to_dlq(stack) -> None:
    job_id = new_job_id()
    line = orjson.dumps({"job_id": job_id, "model": "wan-2.6", "user_id": "dave", "input": {"prompt": "tides"}})
    produce(stack.bootstrap, stack.settings.topic("requests"), [(None, b"{this is not json"), (job_id.encode(), line)])
    dead = consume_until(stack.bootstrap, stack.settings.topic("dlq"), lambda ms: len(ms) >= 1, timeout=60)
    letter = codec.decode("DeadLetter", dead[0].value(), dead[0].headers())
    assert letter["original"] == b"{this is not json" and "invalid request" in letter["reason"]
    results = consume_until(stack.bootstrap, stack.settings.topic("results"),
                            lambda ms: any(m.key() == job_id.encode() for m in ms), timeout=60)
    final = [codec.decode("JobSnapshot", m.value(), m.headers()) for m in results if m.key() == job_id.encode()][0]
    assert final["status"] == "completed"
    # The same line replayed (here through librdkafka's default CRC32 partitioner, so it may land
    # on another partition first) is a duplicate, not a second job.
    before = asyncio.run(_wan_stats(stack.simulator_url))
    produce(stack.bootstrap, stack.settings.topic("requests"), [(job_id.encode(), line)])
    wait_consumed(stack.bootstrap, stack.settings.app_id, stack.settings.topic("requests"))
    wait_consumed(stack.bootstrap, stack.settings.app_id, stack.settings.topic("events"))
    results = consume_until(stack.bootstrap, stack.settings.topic("results"),
                            lambda ms: any(m.key() == job_id.encode() for m in ms), timeout=30)
    assert sum(1 for m in results if m.key() == job_id.encode()) == 1
    after = asyncio.run(_wan_stats(stack.simulator_url))
    # Dropped at admission: the provider never heard of it again (not even as an idempotent retry).
    assert (after["jobs_created"], after["duplicate_idempotency_keys"]) == (
        before["jobs_created"], before["duplicate_idempotency_keys"])


async def _wan_stats(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        return (await simulator_stats(session, url))["wan"]

def test_kcat_json_line_replay(stack) -> None:
    import shutil
    import subprocess

    kcat = shutil.which("kcat")
    assert kcat, "kcat is missing: `make test` installs it (Debian package kcat)"
    job_id = new_job_id()
    line = orjson.dumps({"job_id": job_id, "model": "kling-2.1", "user_id": "erin", "input": {"prompt": "dunes"}})
    subprocess.run([kcat, "-P", "-b", stack.bootstrap, "-t", stack.settings.topic("requests"), "-k", job_id],
                   input=line + b"\n", check=True, timeout=30)
    results = consume_until(stack.bootstrap, stack.settings.topic("results"),
                            lambda ms: any(m.key() == job_id.encode() for m in ms), timeout=60)
    final = [codec.decode("JobSnapshot", m.value(), m.headers()) for m in results if m.key() == job_id.encode()][0]
    assert final["status"] == "completed" and final["provider"] == "kling"


async def test_final_result_is_posted_to_the_jobs_webhook_signed(stack) -> None:
    import time

    from connectors.notifiers.webhook import tenant_secret
    from connectors.simulator import run_receiver
    from floodgate.signing import verify

    async with run_receiver() as receiver, aiohttp.ClientSession() as session:
        accepted = await submit(session, stack.api_url, {
            "model": "wan-2.6", "user_id": "frank", "input": {"prompt": "fireflies"}, "webhook_url": receiver.url})
        deliveries = await receiver.wait_count(1, timeout=60)
    body = json.loads(deliveries[0].body)
    # The tenant's secret: derived from the stack's server secret (no per-tenant secret configured).
    verify(tenant_secret(stack.settings, "default"), deliveries[0].headers, deliveries[0].body, now=time.time())
    assert body["type"] == "job.completed"
    assert body["data"]["job_id"] == accepted["job_id"]
    assert body["data"]["result"]["video_url"].startswith(f"{stack.api_url}/v1/videos/{accepted['job_id']}?")
    assert deliveries[0].headers["webhook-id"].startswith(accepted["job_id"])


async def test_poison_on_every_internal_topic_is_parked_and_the_pipeline_goes_on(stack) -> None:
    s = stack.settings
    topics = [s.topic("events"), s.topic("dispatch.wan"), s.topic("release.wan"), s.topic("webhooks")]
    for i, topic in enumerate(topics):
        produce(stack.bootstrap, topic, [(f"poison-{i}".encode(), b"\x00\xffnot avro " + topic.encode())])
    dead = consume_until(stack.bootstrap, s.topic("dlq"),
                         lambda ms: {codec.decode("DeadLetter", m.value(), m.headers())["source_topic"] for m in ms}
                         >= set(topics), timeout=60)
    letters = [codec.decode("DeadLetter", m.value(), m.headers()) for m in dead]
    for topic in topics:
        letter = next(x for x in letters if x["source_topic"] == topic)
        assert letter["original"] == b"\x00\xffnot avro " + topic.encode()
        assert letter["reason"]
    async with aiohttp.ClientSession() as session:
        accepted = await submit(session, stack.api_url, {
            "model": "wan-2.6", "user_id": "gus", "input": {"prompt": "after the poison"}})
        final = await _completed(session, stack.api_url, accepted["job_id"], accepted["token"])
    assert final["status"] == "completed"


def test_every_thread_of_the_worker_yields_the_cpu(stack) -> None:
    """With FLOODGATE_WORKER_NICE the worker runs below the API and the broker: all its threads,
    Kafka's and RocksDB's included, which inherit the niceness it sets before they start."""
    api, worker = stack.children["api"].proc.pid, stack.children["worker-0"].proc.pid
    threads = [int(t) for t in os.listdir(f"/proc/{worker}/task")]
    assert len(threads) > 3  # the event loop, the Kafka client's and RocksDB's threads
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in threads} == {max(5, ours)}
    assert os.getpriority(os.PRIO_PROCESS, api) == ours
