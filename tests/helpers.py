"""Helpers that more than one test file uses, so no test file imports from another. What a test
needs from the broker is in ``tests/kafka_util.py``, a full stack in ``tests/e2e/stack_util.py``,
a running API in ``tests/integration/api_helpers.py``; the rest is here: a burst of jobs over HTTP,
the final state of each job read back from Kafka, simulator stats, Prometheus samples, a local
S3-compatible server, and in-memory API apps served to test clients."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from floodgate import codec
from tests.kafka_util import consume_until

# (metric or sample name, its labels) → value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def fire(api: str, n: int, model: str, concurrency: int = 64) -> list[dict[str, Any]]:
    """POST ``n`` jobs for ``model`` to the API, ``concurrency`` at a time; each must get its 202."""
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> dict[str, Any]:
            async with sem, session.post(f"{api}/v1/jobs", json={
                    "model": model, "user_id": f"u{i % 50}", "input": {"prompt": f"shot {i}"}}) as resp:
                assert resp.status == 202, await resp.text()
                accepted: dict[str, Any] = await resp.json()
                return accepted
        return await asyncio.gather(*(one(i) for i in range(n)))


def final_states(bootstrap: str, topic: str, job_ids: set[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Every result record per job, read until each accepted job has one (or the deadline)."""
    def done(ms: list[Any]) -> bool:
        return job_ids <= {m.key().decode() for m in ms}
    out: dict[str, list[dict[str, Any]]] = {}
    for m in consume_until(bootstrap, topic, done, timeout=timeout):
        out.setdefault(m.key().decode(), []).append(codec.decode("JobSnapshot", m.value(), m.headers()))
    return out


async def simulator_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The provider simulator's ``/stats``, per provider."""
    async with session.get(f"{url}/stats") as resp:
        stats: dict[str, Any] = (await resp.json())["providers"]
        return stats


async def sim_stats(url: str) -> dict[str, Any]:
    """:func:`simulator_stats` in a session of its own."""
    async with aiohttp.ClientSession() as session:
        return await simulator_stats(session, url)


async def provider_jobs(url: str, provider: str) -> list[dict[str, Any]]:
    """The simulator's record of ``provider``'s jobs (``GET /_admin/{provider}/jobs``), oldest first."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_admin/{provider}/jobs") as resp:
        assert resp.status == 200, await resp.text()
        jobs: list[dict[str, Any]] = (await resp.json())["jobs"]
        return jobs


def samples(text: str) -> Samples:
    """Every sample of a Prometheus (or OpenMetrics) text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    async with session.get(url) as resp:
        assert resp.status == 200, (url, resp.status)
        return samples(await resp.text())


def value(got: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series is not there (yet)."""
    return got.get((name, frozenset(labels.items())), 0.0)


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A real S3-compatible HTTP server (moto's server mode) on loopback with ``bucket`` created;
    yields the ``FLOODGATE_VIDEO_S3_*`` settings that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket=bucket)
        yield {"FLOODGATE_VIDEO_STORE": "s3", "FLOODGATE_VIDEO_S3_BUCKET": bucket,
               "FLOODGATE_VIDEO_S3_ENDPOINT": endpoint, "FLOODGATE_VIDEO_S3_REGION": "us-east-1",
               "FLOODGATE_VIDEO_S3_ACCESS_KEY_ID": "testing", "FLOODGATE_VIDEO_S3_SECRET_ACCESS_KEY": "testing"}
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def app_clients() -> AsyncIterator[Callable[[web.Application], Awaitable[TestClient]]]:
    """A function that serves an app on loopback and answers its test client; every client it
    made is closed when the context ends."""
    clients: list[TestClient] = []

    async def serve(app: web.Application) -> TestClient:
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield serve
    finally:
        for client in clients:
            await client.close()
