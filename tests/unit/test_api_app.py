"""The API app in memory (no Kafka): a fake producer lets us see what happens when the broker
refuses, how concurrent idempotent retries coalesce, and what the error middleware returns."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from floodgate.api.app import build_app, parse_roles
from floodgate.api.kafka_io import KafkaUnavailable
from floodgate.api.view import JobView
from floodgate.errors import ConfigError
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings

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
        build_app(SETTINGS, SETUP, roles={"read"}, producer=None, view=None)
    assert isinstance(build_app(SETTINGS, SETUP, roles={"read"}, producer=None, view=JobView()), web.Application)
    with pytest.raises(ConfigError):
        parse_roles("ingress,admin")
    assert parse_roles("read, bridge") == {"read", "bridge"} and parse_roles(None) == parse_roles("")
