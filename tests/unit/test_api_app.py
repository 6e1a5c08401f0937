"""The API app in memory (no Kafka): a fake producer lets us see what happens when the broker
refuses, how concurrent idempotent retries coalesce, and what the error middleware returns."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from floodgate.api.app import build_app, parse_roles
from floodgate.api.kafka_io import KafkaUnavailable
from floodgate.api.spill import SpillStore
from floodgate.api.view import JobView
from floodgate.errors import ConfigError
from floodgate.ids import job_token, new_job_id
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from floodgate.topics import TopicNames

SETTINGS = Settings(secret=Secret("s" * 32))
SETUP = dev_setup("http://127.0.0.1:9")
BODY = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "a cat"}}


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, key))


@pytest.fixture
async def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
async def view() -> JobView:
    return JobView()


@pytest.fixture
async def client(sender: FakeSender, view: JobView) -> AsyncIterator[TestClient]:
    app = build_app(SETTINGS, SETUP, producer=sender, view=view, wait_for_job=0.05)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_kafka_unavailable_is_503_and_nothing_is_accepted(client: TestClient, sender: FakeSender,
                                                                view: JobView) -> None:
    sender.fail = KafkaUnavailable("down")
    resp = await client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
    assert resp.status == 503
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(view) == 0
    sender.fail = None  # the retry with the same key goes through: the failure was not remembered
    resp = await client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "k1"})
    assert resp.status == 202 and len(sender.sent) == 1


async def test_concurrent_retries_with_one_key_produce_once(client: TestClient, sender: FakeSender) -> None:
    sender.gate = asyncio.Event()
    posts = [asyncio.create_task(client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": "same"}))
             for _ in range(5)]
    other = asyncio.create_task(client.post("/v1/jobs", json={**BODY, "user_id": "u2"},
                                            headers={"Idempotency-Key": "same"}))
    conflict = await asyncio.wait_for(other, 10)  # answered while the first is still in flight
    assert conflict.status == 422
    sender.gate.set()
    responses = await asyncio.wait_for(asyncio.gather(*posts), 10)
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {202}
    assert len({b["job_id"] for b in bodies}) == 1 and len(sender.sent) == 1


class ReadingView(JobView):
    """A view whose lookups, like those of a view that has spilled (a read in a thread), yield:
    each waits until ``readers`` of them are under way, so that many requests read at once, and
    ``all_read`` is set once all of them have returned."""

    def __init__(self, readers: int) -> None:
        super().__init__()
        self.readers = readers
        self.entered = self.left = 0
        self.all_reading = asyncio.Event()
        self.all_read = asyncio.Event()

    async def lookup(self, job_id: str) -> dict[str, Any] | None:
        self.entered += 1
        if self.entered == self.readers:
            self.all_reading.set()
        await self.all_reading.wait()
        try:
            return await super().lookup(job_id)
        finally:
            self.left += 1
            if self.left == self.readers:
                self.all_read.set()


@pytest.mark.parametrize("same_body", [True, False], ids=["same-body", "other-body"])
async def test_concurrent_retries_with_one_key_produce_once_when_the_view_reads_disk(
        sender: FakeSender, same_body: bool) -> None:
    # Both requests find the key new, then both read the view; the one that resumes second must
    # find the first one's produce under way and wait for it (or conflict with it), not begin
    # a second one. (Once the first is accepted, the view itself has its snapshot.)
    view = ReadingView(readers=2)
    sender.gate = asyncio.Event()
    app = build_app(SETTINGS, SETUP, producer=sender, view=view, wait_for_job=0.05)
    second = BODY if same_body else {**BODY, "user_id": "u2"}
    async with TestClient(TestServer(app)) as c:
        posts = [asyncio.create_task(c.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same"}))
                 for body in (BODY, second)]
        await asyncio.wait_for(view.all_read.wait(), 10)
        sender.gate.set()  # only now: the second request has looked again while the first produced
        responses = await asyncio.wait_for(asyncio.gather(*posts), 10)
        statuses = sorted(r.status for r in responses)
        assert statuses == ([202, 202] if same_body else [202, 422])
        accepted = [await r.json() for r in responses if r.status == 202]
        assert len({a["job_id"] for a in accepted}) == 1 and len(sender.sent) == 1


async def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"
    assert (await resp.json())["status"] == 404
    resp = await client.delete("/v1/jobs")
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert (await resp.json())["title"]


async def test_unexpected_errors_are_500_without_internals(client: TestClient, sender: FakeSender) -> None:
    sender.fail = RuntimeError("database password is hunter2")
    resp = await client.post("/v1/jobs", json=BODY)
    assert resp.status == 500 and resp.headers["Content-Type"] == "application/problem+json"
    assert "hunter2" not in await resp.text()


async def test_healthz_reports_readiness(client: TestClient, view: JobView) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 503 and (await resp.json())["status"] == "starting"
    view.ready.set()
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["roles"] == ["bridge", "ingress", "read"]


async def test_openapi_is_served(client: TestClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and "/v1/jobs" in (await resp.json())["paths"]


def test_roles_need_their_dependencies() -> None:
    with pytest.raises(ConfigError):
        build_app(SETTINGS, SETUP, roles={"bridge"}, producer=None, view=None)
    with pytest.raises(ConfigError):
        build_app(SETTINGS, SETUP, roles={"read"}, producer=FakeSender(), view=None)
    with pytest.raises(ConfigError):  # cancels are written from the read role
        build_app(SETTINGS, SETUP, roles={"read"}, producer=None, view=JobView())
    assert isinstance(build_app(SETTINGS, SETUP, roles={"read"}, producer=FakeSender(), view=JobView()),
                      web.Application)
    # The ingress alone needs no view: it accepts without consuming anything.
    assert isinstance(build_app(SETTINGS, SETUP, roles={"ingress"}, producer=FakeSender(), view=None),
                      web.Application)


async def test_ingress_without_a_view_accepts_replays_and_refuses_key_reuse(sender: FakeSender) -> None:
    app = build_app(SETTINGS, SETUP, roles={"ingress"}, producer=sender, view=None)
    async with TestClient(TestServer(app)) as c:
        assert (await (await c.get("/healthz")).json())["status"] == "ok"  # no view to catch up
        headers = {"Idempotency-Key": "k1"}
        first = await c.post("/v1/jobs", json=BODY, headers=headers)
        again = await c.post("/v1/jobs", json=BODY, headers=headers)
        other = await c.post("/v1/jobs", json={**BODY, "metadata": {"x": "y"}}, headers=headers)
        assert (first.status, again.status, other.status) == (202, 202, 422)
        assert (await first.json())["job_id"] == (await again.json())["job_id"]
        assert len(sender.sent) == 1
    with pytest.raises(ConfigError):
        parse_roles("ingress,admin")
    assert parse_roles("read, bridge") == {"read", "bridge"} and parse_roles(None) == parse_roles("")


@pytest.mark.parametrize(("spilled", "status"), [(True, "completed"), (False, "queued")],
                         ids=["with-spill", "without-spill"])
async def test_an_evicted_finished_job_reads_completed_not_queued(tmp_path: Path, spilled: bool,
                                                                  status: str) -> None:
    # Without a spill store the view forgets evicted jobs and the read presumes "queued": the
    # wrong answer about a finished video that the spill store exists to prevent.
    store = SpillStore(tmp_path / "view.sqlite") if spilled else None
    view = JobView(max_jobs=2, spill=store)
    job_id = new_job_id()
    url = "https://cdn.example/done.mp4"
    base = {"tenant": "default", "user_id": "u1", "model": "kling-2.1", "provider": "kling", "attempt": 0,
            "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_000, "metadata": {}}
    await view.apply_batch([{**base, "job_id": job_id, "status": "completed", "progress": 1.0,
                             "video_url": url, "version": 5}])
    await view.apply_batch([{**base, "job_id": new_job_id(), "status": "completed", "version": 1}
                            for _ in range(3)])  # newer finished jobs push it out of memory
    assert view.get(job_id) is None
    token = job_token(SETTINGS.secret.reveal().encode(), job_id)
    app = build_app(SETTINGS, SETUP, roles={"read"}, producer=FakeSender(), view=view, wait_for_job=0.05)
    try:
        async with TestClient(TestServer(app)) as c:
            resp = await c.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == status
            assert body["result"] == ({"video_url": url} if spilled else None)
            async with c.get(f"/v1/jobs/{job_id}/events", params={"token": token}) as events:
                first = b""
                while not first.endswith(b"\n\n"):
                    first += await asyncio.wait_for(events.content.readline(), 10)
                assert f'"status":"{status}"'.encode() in first
                if spilled:  # a terminal first state ends the stream
                    assert await asyncio.wait_for(events.content.read(), 10) == b""
    finally:
        if store is not None:
            store.close()


async def test_the_ingress_writes_with_its_own_producer_when_given_one(view: JobView) -> None:
    producer, intake = FakeSender(), FakeSender()
    app = build_app(SETTINGS, SETUP, producer=producer, view=view, wait_for_job=0.05, intake=intake)
    async with TestClient(TestServer(app)) as c:
        resp = await c.post("/v1/jobs", json=BODY)
        assert resp.status == 202
        accepted = await resp.json()
        resp = await c.post(f"/v1/jobs/{accepted['job_id']}/cancel",
                            headers={"Authorization": f"Bearer {accepted['token']}"})
        assert resp.status == 202
    topics = TopicNames(SETTINGS)
    assert intake.sent == [(topics.requests, accepted["job_id"])]
    assert producer.sent == [(topics.events, accepted["job_id"])]  # the cancel: not the ingress's
