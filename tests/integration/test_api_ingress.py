"""POST /v1/jobs on the real broker: a 202 means the JobRequest is in Kafka, keyed by its job id."""
from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from floodgate import codec
from floodgate.api.kafka_io import MAX_REQUEST_BYTES, KafkaSender, KafkaUnavailable, RecordTooLarge
from floodgate.api.server import BRIDGE_LINGER_MS, INGRESS_LINGER_MS, ApiServer
from floodgate.ids import check_token, is_job_id, job_id_for_key, new_job_id
from floodgate.settings import Secret, Settings
from floodgate.topics import TopicNames
from floodgate.validation import request_hash, validate_job_request
from tests.integration.api_helpers import (
    DEV_SIMULATOR,
    aread_records,
    produce_snapshots,
    record_count,
    running_api,
    snapshot,
)

pytestmark = pytest.mark.kafka

BODY = {
    "model": "kling-2.1",
    "user_id": "user-1",
    "input": {"prompt": "a lighthouse in a storm", "params": {"duration": "5"}},
    "metadata": {"order": "42"},
}


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(simulator_url=DEV_SIMULATOR, max_body_bytes=4096)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[ApiServer]:
    async with running_api(settings, wait_for_job=0.2) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_202_means_the_request_is_in_kafka(api: ApiServer, http: aiohttp.ClientSession,
                                                 settings: Settings) -> None:
    before = int(time.time() * 1000)
    async with http.post(f"{api.url}/v1/jobs", json=BODY) as resp:
        assert resp.status == 202
        accepted = await resp.json()
        location = resp.headers["Location"]
    job_id = accepted["job_id"]
    assert is_job_id(job_id) and accepted["status"] == "queued"
    assert accepted["status_url"] == location == f"{api.url}/v1/jobs/{job_id}"
    assert accepted["events_url"] == f"{location}/events"
    assert check_token(settings.secret.reveal().encode(), job_id, accepted["token"])

    topic = TopicNames(settings).requests
    assert record_count(settings.kafka_bootstrap, topic) == 1  # acknowledged before the 202 left
    [msg] = await aread_records(settings.kafka_bootstrap, topic, 1)
    assert msg.key() == job_id.encode()
    record = codec.decode("JobRequest", msg.value(), msg.headers())
    normalized = validate_job_request(BODY, known_models={"kling-2.1"})
    assert record == {
        "job_id": job_id, "tenant": "default", "user_id": "user-1", "model": "kling-2.1",
        "input": {"prompt": "a lighthouse in a storm", "image_url": None, "params": {"duration": "5"}},
        "webhook_url": None, "metadata": {"order": "42"}, "idempotency_key": None,
        "request_hash": request_hash(normalized, "default"), "accepted_at": record["accepted_at"], "source": "http",
        "notify": None, "priority": "standard", "deadline_s": None,
    }
    assert before <= record["accepted_at"] <= int(time.time() * 1000)


async def test_a_phone_to_tell_needs_that_platform_configured(api: ApiServer, http: aiohttp.ClientSession) -> None:
    body = {**BODY, "notify": {"push": {"platform": "fcm", "token": "fcm-device:APA91b"}}}
    async with http.post(f"{api.url}/v1/jobs", json=body) as resp:
        problem = await resp.json(content_type=None)
    assert resp.status == 400 and resp.content_type == "application/problem+json"
    assert problem["errors"] == [{"field": "notify.push.platform",
                                  "message": "push to fcm is not configured on this server"}]


async def test_get_right_after_202_is_queued(api: ApiServer, http: aiohttp.ClientSession) -> None:
    for _ in range(5):
        async with http.post(f"{api.url}/v1/jobs", json=BODY) as resp:
            accepted = await resp.json()
        async with http.get(accepted["status_url"], headers={"Authorization": f"Bearer {accepted['token']}"}) as resp:
            assert resp.status == 200
            job = await resp.json()
        assert job["job_id"] == accepted["job_id"] and job["status"] == "queued"
        assert job["model"] == "kling-2.1" and job["metadata"] == {"order": "42"} and job["result"] is None


async def test_idempotent_replay_and_key_reuse(api: ApiServer, http: aiohttp.ClientSession,
                                               settings: Settings) -> None:
    headers = {"Idempotency-Key": "order-42"}
    async with http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
        assert resp.status == 202
        first = await resp.json()
    reordered = {"metadata": {"order": "42"}, "input": BODY["input"], "user_id": "user-1", "model": "kling-2.1"}
    async with http.post(f"{api.url}/v1/jobs", json=reordered, headers=headers) as resp:
        assert resp.status == 202
        assert await resp.json() == first
    assert first["job_id"] == job_id_for_key(settings.secret.reveal().encode(), "default", "order-42")

    async with http.post(f"{api.url}/v1/jobs", json={**BODY, "user_id": "user-2"}, headers=headers) as resp:
        assert resp.status == 422
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert [e["field"] for e in (await resp.json())["errors"]] == ["Idempotency-Key"]

    topic = TopicNames(settings).requests
    assert record_count(settings.kafka_bootstrap, topic) == 1
    [msg] = await aread_records(settings.kafka_bootstrap, topic, 1)
    assert codec.decode("JobRequest", msg.value(), msg.headers())["idempotency_key"] == "order-42"


async def test_restarted_api_still_recognises_a_key_from_the_view(settings: Settings,
                                                                  http: aiohttp.ClientSession) -> None:
    headers = {"Idempotency-Key": "k-restart"}
    async with running_api(settings) as api, http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
        first = await resp.json()
    # The fresh process has an empty cache; the job-state agent's snapshot is its memory.
    produce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications, [
        snapshot(first["job_id"], 1, "queued", user_id="user-1", metadata={"order": "42"})])
    async with running_api(settings) as api:
        async with http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
            assert resp.status == 202 and (await resp.json())["job_id"] == first["job_id"]
        async with http.post(f"{api.url}/v1/jobs", json={**BODY, "model": "wan-2.6"}, headers=headers) as resp:
            assert resp.status == 422
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 1


async def test_a_key_is_recognised_for_a_job_the_view_keeps_on_disk_only(settings: Settings,
                                                                        http: aiohttp.ClientSession) -> None:
    """Long after acceptance the job's snapshot lives in the spill, not in memory: a reuse of
    its key with another body must still be refused, and a plain retry still answered."""
    headers = {"Idempotency-Key": "k-spilled"}
    async with running_api(settings) as api, http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
        first = await resp.json()
    notifications = TopicNames(settings).notifications
    async with running_api(settings, view_max_jobs=2) as api:  # a fresh cache; the view spills
        view = api.view
        assert view is not None
        # The job's snapshot first, then newer ones that push it out of memory (the view evicts
        # the oldest finished job; across partitions only waiting makes "first" certain).
        produce_snapshots(settings.kafka_bootstrap, notifications, [
            snapshot(first["job_id"], 2, "completed", user_id="user-1", metadata={"order": "42"}, progress=1.0)])
        await _eventually(lambda: view.get(first["job_id"]) is not None, "the snapshot to reach the view")
        produce_snapshots(settings.kafka_bootstrap, notifications,
                          [snapshot(new_job_id(), 2, "completed", progress=1.0) for _ in range(3)])
        await _eventually(lambda: view.get(first["job_id"]) is None, "the snapshot to be evicted and written")
        assert await view.lookup(first["job_id"]) is not None
        async with http.post(f"{api.url}/v1/jobs", json={**BODY, "model": "wan-2.6"}, headers=headers) as resp:
            assert resp.status == 422, await resp.text()
        async with http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
            assert resp.status == 202 and (await resp.json())["job_id"] == first["job_id"]
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 1


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["input", "model", "user_id"]),
        ({**BODY, "model": "veo-9"}, ["model"]),
        ({**BODY, "input": {"prompt": " "}, "user_id": "bad id!", "colour": "red"},
         ["colour", "input.prompt", "user_id"]),
        ({**BODY, "webhook_url": "ftp://example.com/x", "metadata": {"n": 1}}, ["metadata.n", "webhook_url"]),
        ({**BODY, "webhook_url": "http://127.0.0.1:8080/hook"}, ["webhook_url"]),
        ([1, 2], ["body"]),
    ],
)
async def test_invalid_bodies_name_every_field(api: ApiServer, http: aiohttp.ClientSession, settings: Settings,
                                               body: object, fields: list[str]) -> None:
    async with http.post(f"{api.url}/v1/jobs", json=body) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/problem+json"
        problem = await resp.json()
    assert sorted(e["field"] for e in problem["errors"]) == fields
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 0


@pytest.mark.parametrize(("field", "url"), [
    ("input.image_url", "http://169.254.169.254/latest/meta-data"),
    ("input.image_url", "http://[::ffff:127.0.0.1]:8080/a.png"),
    ("input.image_url", "http://2130706433/a.png"),
    ("webhook_url", "http://localhost./hook"),
    ("webhook_url", "http://10.0.0.1/hook"),
])
async def test_private_urls_are_refused_naming_the_field(api: ApiServer, http: aiohttp.ClientSession,
                                                         settings: Settings, field: str, url: str) -> None:
    body = {**BODY, "input": {**BODY["input"]}}  # type: ignore[dict-item]
    if field == "webhook_url":
        body["webhook_url"] = url
    else:
        body["input"]["image_url"] = url  # type: ignore[index]
    async with http.post(f"{api.url}/v1/jobs", json=body) as resp:
        assert resp.status == 400 and resp.headers["Content-Type"] == "application/problem+json"
        problem = await resp.json()
    assert [e["field"] for e in problem["errors"]] == [field]
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 0


async def test_malformed_requests(api: ApiServer, http: aiohttp.ClientSession, settings: Settings) -> None:
    url = f"{api.url}/v1/jobs"
    async with http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "body"
    async with http.post(url, data=b"model=x", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415 and resp.headers["Content-Type"] == "application/problem+json"
    huge = {**BODY, "metadata": {"pad": "x" * 5000}}
    async with http.post(url, json=huge) as resp:
        assert resp.status == 413 and resp.headers["Content-Type"] == "application/problem+json"

    async def chunks():  # no Content-Length: the limit must hold while streaming too
        yield b'{"model": "kling-2.1", "pad": "'
        for _ in range(10):
            yield b"x" * 1000

    async with http.post(url, data=chunks(), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
    async with http.post(url, json=BODY, headers={"Idempotency-Key": "k" * 256}) as resp:
        assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "Idempotency-Key"
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 0


async def test_api_keys(settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, api_keys=Secret("key-a=acme,key-b=globex"))
    async with running_api(settings, roles={"ingress"}) as api:
        url = f"{api.url}/v1/jobs"
        async with http.post(url, json=BODY) as resp:
            assert resp.status == 401 and resp.headers["Content-Type"] == "application/problem+json"
            assert resp.headers["WWW-Authenticate"] == 'ApiKey realm="floodgate", header="X-API-Key"'
        async with http.post(url, json=BODY, headers={"X-API-Key": "key-c"}) as resp:
            assert resp.status == 403 and resp.headers["Content-Type"] == "application/problem+json"
        assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 0
        async with http.post(url, json=BODY, headers={"X-API-Key": "key-b", "Idempotency-Key": "k"}) as resp:
            assert resp.status == 202
            accepted = await resp.json()
    assert accepted["job_id"] == job_id_for_key(settings.secret.reveal().encode(), "globex", "k")
    [msg] = await aread_records(settings.kafka_bootstrap, TopicNames(settings).requests, 1)
    assert codec.decode("JobRequest", msg.value(), msg.headers())["tenant"] == "globex"


async def test_priority_high_needs_a_grant(settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, api_keys=Secret("key-a=acme,key-b=globex"),
                            priority_grants="globex")
    async with running_api(settings, roles={"ingress"}) as api:
        url = f"{api.url}/v1/jobs"
        async with http.post(url, json={**BODY, "priority": "high"}, headers={"X-API-Key": "key-a"}) as resp:
            assert resp.status == 400
            [problem] = (await resp.json())["errors"]
            assert problem == {"field": "priority", "message": "high is not granted to this API key"}
        assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 0
        async with http.post(url, json={**BODY, "priority": "low", "deadline_s": 120},
                             headers={"X-API-Key": "key-a"}) as resp:
            assert resp.status == 202
        async with http.post(url, json={**BODY, "priority": "high"}, headers={"X-API-Key": "key-b"}) as resp:
            assert resp.status == 202
    records = [codec.decode("JobRequest", m.value(), m.headers())
               for m in await aread_records(settings.kafka_bootstrap, TopicNames(settings).requests, 2)]
    assert sorted((r["tenant"], r["priority"], r["deadline_s"]) for r in records) == [
        ("acme", "low", 120), ("globex", "high", None)]


async def test_an_ingress_only_process_consumes_nothing(settings: Settings, http: aiohttp.ClientSession,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The job view's feed reads every notification; on an ingress-only process that is CPU the
    # accept path needs during a spike. Any consumer the feed module makes fails the test.
    import floodgate.api.feed

    made: list[object] = []

    def no_consumer(*args: object, **kwargs: object) -> None:
        made.append(args)
        raise AssertionError("an ingress-only API must not consume notifications")

    monkeypatch.setattr(floodgate.api.feed, "Consumer", no_consumer)
    async with running_api(settings, roles={"ingress"}) as api:
        assert api.view is None and api.outgoing is None
        assert [p.linger_ms for p in api.producers] == [INGRESS_LINGER_MS]  # one producer: nothing else writes
        headers = {"Idempotency-Key": "only-ingress"}
        async with http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
            assert resp.status == 202
        async with http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
            assert resp.status == 202  # the replay, from the process's own cache
        async with http.post(f"{api.url}/v1/jobs", json={**BODY, "metadata": {}}, headers=headers) as resp:
            assert resp.status == 422
        async with http.get(f"{api.url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["roles"] == ["ingress"]
    assert made == []
    assert not (settings.cache_dir / "api").exists()  # no spill store either
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 1


async def test_the_ingress_batches_longer_than_the_bridge_in_one_process(settings: Settings,
                                                                         http: aiohttp.ClientSession) -> None:
    # A slot's release must not wait for a batch to fill; an accepted request may, a few ms.
    async with running_api(settings, roles={"ingress", "bridge"}) as api:
        assert [p.linger_ms for p in api.producers] == [INGRESS_LINGER_MS, BRIDGE_LINGER_MS]
        assert BRIDGE_LINGER_MS < INGRESS_LINGER_MS
        async with http.post(f"{api.url}/v1/jobs", json=BODY) as resp:
            assert resp.status == 202
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).requests) == 1
    async with running_api(settings, roles={"bridge"}) as api:
        assert [p.linger_ms for p in api.producers] == [BRIDGE_LINGER_MS]


def test_outgoing_webhooks_run_by_default_except_on_an_ingress_only_process() -> None:
    from floodgate.api.server import ingress_only

    assert ingress_only("ingress") and ingress_only({"ingress"})
    assert not any(ingress_only(r) for r in (None, "", "ingress,read", "bridge", {"read"}))


async def test_public_url_shapes_the_links(settings_for: Callable[..., Settings],
                                           http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, public_url="https://api.example.com/")
    async with running_api(settings, roles={"ingress"}) as api, http.post(f"{api.url}/v1/jobs", json=BODY) as resp:
        accepted = await resp.json()
    assert accepted["status_url"] == f"https://api.example.com/v1/jobs/{accepted['job_id']}"


async def test_sender_reports_an_unacknowledged_record(kafka_bootstrap: str) -> None:
    sender = KafkaSender(kafka_bootstrap, send_timeout=1.0)
    await sender.start()
    try:
        with pytest.raises(KafkaUnavailable):
            await sender.send_and_wait("no-such-topic-for-floodgate", "k", b"v", [])
    finally:
        await sender.stop()


async def test_sender_refuses_a_record_past_the_size_bound(kafka_bootstrap: str) -> None:
    sender = KafkaSender(kafka_bootstrap, send_timeout=1.0)
    await sender.start()
    try:
        with pytest.raises(RecordTooLarge):
            await sender.send_and_wait("no-such-topic-for-floodgate", "k", b"v" * (MAX_REQUEST_BYTES + 1), [])
    finally:
        await sender.stop()
        await sender.stop()  # twice is harmless


def test_run_prints_its_url_and_stops_cleanly_on_sigterm(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "FLOODGATE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "FLOODGATE_TOPIC_PREFIX": settings.topic_prefix, "FLOODGATE_PARTITIONS": "2",
           "FLOODGATE_SIMULATOR_URL": DEV_SIMULATOR, "FLOODGATE_LOG_LEVEL": "warning"}
    stderr = tmp_path / "api.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "floodgate.api", "--port", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # the deadline for the first line
        assert ready, f"no output within 30 s: {stderr.read_text()}"
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"api=(http://127\.0\.0\.1:\d+)\n", line)
        assert match, (line, stderr.read_text())
        with urllib.request.urlopen(f"{match[1]}/healthz", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    errors = stderr.read_text()
    assert "Traceback" not in errors and "still running" not in errors and "destroyed" not in errors, errors
