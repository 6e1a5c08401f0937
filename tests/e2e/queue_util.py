"""Helpers for the waiting-line tests on a running stack: posting jobs as a tenant (its API key),
following a job over Server-Sent Events, and where a topic's log ends."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from confluent_kafka import Consumer, TopicPartition

from tests.e2e.stack_util import TERMINAL
from tests.kafka_util import unique_name


@dataclass(frozen=True)
class Accepted:
    """A job the API answered 202 for, and when (wall clock, as the simulator dates its jobs)."""

    job_id: str
    token: str
    tenant: str
    accepted_at: float


async def post_jobs(session: aiohttp.ClientSession, api: str, key: str, tenant: str, n: int, model: str, *,
                    concurrency: int = 32, **fields: Any) -> list[Accepted]:
    """POST ``n`` jobs for ``model`` with ``tenant``'s API key (none: an open API), ``concurrency`` at a time;
    ``fields`` go into every body (``priority``, ``deadline_s``). Returned in acceptance order."""
    sem = asyncio.Semaphore(concurrency)
    accepted: list[Accepted] = []

    async def one(i: int) -> None:
        body = {"model": model, "user_id": f"{tenant}-{i % 7}", "input": {"prompt": f"{tenant} shot {i}"}, **fields}
        async with sem, session.post(f"{api}/v1/jobs", json=body, headers={"X-API-Key": key} if key else {}) as resp:
            data = await resp.json(content_type=None)
            assert resp.status == 202, (resp.status, data)
            accepted.append(Accepted(data["job_id"], data["token"], tenant, time.time()))

    await asyncio.gather(*(one(i) for i in range(n)))
    return accepted


@dataclass(frozen=True)
class Event:
    """One job message (SSE ``job`` event, WebSocket ``job`` message): the job as shown, when it
    came (monotonic), and for SSE its id (the snapshot version; None over a WebSocket)."""

    job: dict[str, Any]
    at: float
    version: int | None = None


async def follow_sse(session: aiohttp.ClientSession, api: str, job: Accepted, *, timeout: float) -> list[Event]:
    """Every ``job`` event of ``job``'s SSE stream until its terminal state (or ``timeout``)."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    url = f"{api}/v1/jobs/{job.job_id}/events?token={job.token}"
    async with asyncio.timeout(timeout), session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if fields.get("event") == "job":
                body = json.loads(fields["data"])
                events.append(Event(body, time.monotonic(), int(fields["id"])))
                if body["status"] in TERMINAL:
                    break
            fields = {}
    return events


async def follow_ws(session: aiohttp.ClientSession, api: str, job: Accepted, *, timeout: float) -> list[Event]:
    """Every ``job`` message for ``job`` on a ``/v1/stream`` WebSocket until its terminal state."""
    events: list[Event] = []
    async with asyncio.timeout(timeout), session.ws_connect(f"{api}/v1/stream") as ws:
        await ws.send_json({"type": "subscribe", "job_id": job.job_id, "token": job.token})
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            body = json.loads(msg.data)
            assert body["type"] in ("subscribed", "job"), body
            if body["type"] == "job":
                events.append(Event(body["job"], time.monotonic()))
                if body["job"]["status"] in TERMINAL:
                    break
    return events


def end_offsets(bootstrap: str, topic: str) -> int:
    """Records ever written to ``topic`` (the sum of its partitions' end offsets)."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("probe")})
    try:
        parts = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        probe.close()
