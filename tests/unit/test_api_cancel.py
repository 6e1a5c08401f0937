"""``POST /v1/jobs/{job_id}/cancel`` in memory (no Kafka): authorisation like GET, the record it
writes, 409 for a finished job, idempotent repeats, and a 202 only after the broker's ack."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from floodgate import codec
from floodgate.api.app import build_app
from floodgate.api.cancel import CANCEL_REASON
from floodgate.api.kafka_io import KafkaUnavailable
from floodgate.api.resources import job_resource
from floodgate.api.view import JobView
from floodgate.ids import job_token, new_job_id
from floodgate.jobs.events import event_from_record
from floodgate.jobs.state import JobEvent
from floodgate.problems import JOB_FINISHED, NOT_FOUND, UNAUTHORIZED
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings

SETTINGS = Settings(secret=Secret("s" * 32))
SECRET = SETTINGS.secret.reveal().encode()
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, bytes, Any]] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, key, value, headers))

    def events(self) -> list[JobEvent]:
        return [event_from_record(codec.decode("JobEvent", value, headers)) for _, _, value, headers in self.sent]


def snap(job_id: str, status: str, version: int = 3) -> dict[str, Any]:
    return {"job_id": job_id, "tenant": "default", "user_id": "u1", "model": "wan-2.6", "provider": "wan",
            "provider_job_id": "video_1", "status": status, "progress": 0.5, "video_url": None,
            "error": None, "attempt": 0, "created_at": 1_767_225_500_000, "updated_at": 1_767_225_590_000,
            "webhook_url": None, "metadata": {"k": "v"}, "version": version}


@pytest.fixture
async def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
async def view() -> JobView:
    return JobView()


@pytest.fixture
async def client(sender: RecordingSender, view: JobView) -> AsyncIterator[TestClient]:
    app = build_app(SETTINGS, dev_setup("http://127.0.0.1:9"), producer=sender, view=view, wait_for_job=0.05,
                    clock=lambda: NOW)
    async with TestClient(TestServer(app)) as c:
        yield c


def bearer(job_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {job_token(SECRET, job_id)}"}


async def test_missing_token_is_401_and_nothing_is_written(client: TestClient, sender: RecordingSender) -> None:
    resp = await client.post(f"/v1/jobs/{new_job_id()}/cancel")
    assert resp.status == 401
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert (body["type"], body["status"]) == (UNAUTHORIZED, 401)
    assert sender.sent == []


async def test_wrong_token_is_404_like_an_unknown_job(client: TestClient, sender: RecordingSender,
                                                      view: JobView) -> None:
    job_id, other = new_job_id(), new_job_id()
    view.apply(snap(job_id, "running"))
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(other))
    assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"
    body = await resp.json()
    assert (body["type"], body["status"]) == (NOT_FOUND, 404)
    unknown = await client.post(f"/v1/jobs/{other}/cancel", headers=bearer(job_id))
    assert unknown.status == 404 and await unknown.json() == body
    assert sender.sent == []


@pytest.mark.parametrize("status", ["queued", "submitted", "running"])
async def test_a_live_job_gets_a_cancelled_event_keyed_by_its_id_and_a_202_with_the_job(
        client: TestClient, sender: RecordingSender, view: JobView, status: str) -> None:
    job_id = new_job_id()
    view.apply(snap(job_id, status))
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    assert resp.status == 202, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    # The body is the job as GET returns it: its current state (the cancel is applied later).
    assert await resp.json() == job_resource(snap(job_id, status))
    got = await client.get(f"/v1/jobs/{job_id}", headers=bearer(job_id))
    assert await got.json() == await resp.json()
    [(topic, key, _, _)] = sender.sent
    assert (topic, key) == (SETTINGS.topic("events"), job_id)
    [event] = sender.events()
    assert (event.job_id, event.kind, event.provider, event.attempt) == (job_id, "cancelled", None, 0)
    assert event.at == NOW and event.error == CANCEL_REASON and event.event_id


async def test_a_token_bearing_job_this_instance_has_not_seen_yet_is_cancelled_as_queued(
        client: TestClient, sender: RecordingSender) -> None:
    job_id = new_job_id()
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    assert resp.status == 202 and (await resp.json())["status"] == "queued"
    assert [e.kind for e in sender.events()] == ["cancelled"]


async def test_token_in_the_query_works_as_for_get(client: TestClient, sender: RecordingSender) -> None:
    job_id = new_job_id()
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", params={"token": job_token(SECRET, job_id)})
    assert resp.status == 202 and len(sender.sent) == 1


@pytest.mark.parametrize("status", ["completed", "failed"])
async def test_a_finished_job_is_409_naming_its_status(client: TestClient, sender: RecordingSender,
                                                       view: JobView, status: str) -> None:
    job_id = new_job_id()
    view.apply(snap(job_id, status))
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    assert resp.status == 409 and resp.headers["Content-Type"] == "application/problem+json"
    body = await resp.json()
    assert (body["type"], body["status"]) == (JOB_FINISHED, 409)
    assert status in body["detail"]
    assert sender.sent == []


async def test_cancelling_twice_is_202_twice_with_distinct_event_ids(client: TestClient,
                                                                     sender: RecordingSender, view: JobView) -> None:
    job_id = new_job_id()
    view.apply(snap(job_id, "running"))
    first = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    second = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    assert (first.status, second.status) == (202, 202)
    ids = [e.event_id for e in sender.events()]
    assert len(ids) == 2 and len(set(ids)) == 2
    # Once the view shows the cancel, a further cancel is still a 202, with nothing more to write.
    view.apply({**snap(job_id, "cancelled", version=4), "error": CANCEL_REASON})
    third = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    assert third.status == 202 and (await third.json())["status"] == "cancelled"
    assert len(sender.sent) == 2


async def test_the_202_waits_for_the_broker(client: TestClient, sender: RecordingSender) -> None:
    sender.gate = asyncio.Event()
    job_id = new_job_id()
    pending = asyncio.create_task(client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id)))
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done, "answered before Kafka acknowledged the cancel"
    sender.gate.set()
    resp = await asyncio.wait_for(pending, 10)
    assert resp.status == 202 and len(sender.sent) == 1


async def test_kafka_unavailable_is_503_with_retry_after(client: TestClient, sender: RecordingSender) -> None:
    sender.fail = KafkaUnavailable("down")
    job_id = new_job_id()
    resp = await client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(job_id))
    assert resp.status == 503 and resp.headers["Content-Type"] == "application/problem+json"
    assert int(resp.headers["Retry-After"]) >= 1


def test_cancel_is_served_by_the_read_role_only() -> None:
    # Its answer depends on the job's state (409 once finished): the view's, which the read role holds.
    setup = dev_setup("http://127.0.0.1:9")
    for roles, expected in (({"ingress"}, False), ({"read"}, True), ({"bridge"}, False)):
        app = build_app(SETTINGS, setup, roles=roles, producer=RecordingSender(), view=JobView())
        paths = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        assert (("POST", "/v1/jobs/{job_id}/cancel") in paths) is expected, roles
