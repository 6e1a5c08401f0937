"""Admission control at POST /v1/jobs on the real broker: a request refused with 429 (a tenant's
quota) or 503 (the backlog guard) never reaches ``requests``, and every 202 is there."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Producer

from floodgate import codec, provider_config
from floodgate.api.server import ApiServer
from floodgate.jobs.record import JobRecord
from floodgate.jobs.state import JobState
from floodgate.metrics import api_metrics
from floodgate.settings import Secret, Settings
from floodgate.spillover import LineReport
from floodgate.topics import TopicNames
from tests.e2e.stack_util import until
from tests.integration.api_helpers import (
    DEV_SIMULATOR,
    aproduce_snapshots,
    aread_records,
    record_count,
    running_api,
    snapshot,
)

pytestmark = pytest.mark.kafka

BODY = {"model": "kling-2.1", "user_id": "user-1", "input": {"prompt": "a lighthouse in a storm"}}
KEYS = Secret("key-a=acme,key-b=globex")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def post(http: aiohttp.ClientSession, api: ApiServer, key: str | None = None) -> tuple[int, Any, Any]:
    headers = {"X-API-Key": key} if key else {}
    async with http.post(f"{api.url}/v1/jobs", json=BODY, headers=headers) as resp:
        body = await resp.json(content_type=None)
        return resp.status, resp.headers, body


async def accept(http: aiohttp.ClientSession, api: ApiServer, count: int, key: str | None = None) -> list[str]:
    """``count`` requests one after another, each answered 202; their job ids."""
    accepted = []
    for _ in range(count):
        status, _, body = await post(http, api, key)
        assert status == 202
        accepted.append(body["job_id"])
    return accepted


async def ids_in_requests(settings: Settings) -> list[str]:
    topic = TopicNames(settings).requests
    count = record_count(settings.kafka_bootstrap, topic)
    records = await aread_records(settings.kafka_bootstrap, topic, count)
    return [codec.decode("JobRequest", m.value(), m.headers())["job_id"] for m in records]


async def assert_documented(http: aiohttp.ClientSession, api: ApiServer, status: int, body: Any) -> None:
    """The refusal is one the served contract describes for POST /v1/jobs: its status, its
    Retry-After header and a body matching the Problem schema."""
    async with http.get(f"{api.url}/openapi.json") as resp:
        doc = await resp.json()
    answer = doc["paths"]["/v1/jobs"]["post"]["responses"][str(status)]
    assert "Retry-After" in answer["headers"]
    schema = doc["components"]["schemas"]["Problem"]
    assert set(schema["required"]) <= set(body)
    kinds = {"string": str, "integer": int, "array": list}
    for name, value in body.items():
        declared = schema["properties"][name]  # an undocumented member fails here
        assert isinstance(value, kinds[declared["type"]]) and value >= declared.get("minimum", value)


def quota_refusals() -> float:
    found = api_metrics().registry.get_sample_value("floodgate_requests_rejected_total", {"reason": "quota"})
    return found or 0.0


def assert_refusal(status: int, headers: Any, body: Any, expected: int, type_: str) -> int:
    assert status == expected
    assert headers["Content-Type"] == "application/problem+json"
    assert body["type"] == type_ and body["status"] == expected and body["title"] and body["detail"]
    retry = int(headers["Retry-After"])
    assert retry >= 1 and body["retry_after"] == retry
    return retry


async def test_over_the_rate_quota_is_429_and_writes_nothing(settings_for: Callable[..., Settings],
                                                             http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, api_keys=KEYS, tenant_rate_limit=3,
                            tenant_rate_limits="globex=100")
    refused_before = quota_refusals()
    async with running_api(settings) as api:
        accepted = await accept(http, api, 3, "key-a")
        status, headers, body = await post(http, api, "key-a")
        retry = assert_refusal(status, headers, body, 429, "urn:floodgate:problem:rate-quota")
        assert retry <= 20 and body["limit"] == 3 and "3 job requests per minute" in body["detail"]
        await assert_documented(http, api, status, body)
        # Another tenant's quota is its own.
        for _ in range(5):
            status, _, body = await post(http, api, "key-b")
            assert status == 202
            accepted.append(body["job_id"])
        async with http.get(f"{api.url}/metrics") as resp:
            assert "floodgate_requests_rejected_total{" in await resp.text()
    # (The counter is the process's: other tests' refusals in this process count too.)
    assert quota_refusals() - refused_before == 1
    assert sorted(await ids_in_requests(settings)) == sorted(accepted)


async def test_a_concurrent_burst_gets_exactly_the_quota_and_every_202_is_in_kafka(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, api_keys=KEYS, tenant_rate_limit=10)
    async with running_api(settings, roles={"ingress"}) as api:
        started = time.monotonic()
        answers = await asyncio.gather(*(post(http, api, key) for key in ["key-a", "key-b"] * 25))
        elapsed = time.monotonic() - started
    assert elapsed < 6.0, "the burst must fit within one interval (60 s / 10) for the count to be exact"
    accepted = [body["job_id"] for status, _, body in answers if status == 202]
    assert sorted(status for status, _, _ in answers) == [202] * 20 + [429] * 30
    assert sorted(await ids_in_requests(settings)) == sorted(accepted)


async def test_over_the_queued_quota_is_429_until_a_job_ends(settings_for: Callable[..., Settings],
                                                            http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, tenant_queued_limit=2)
    async with running_api(settings) as api:
        assert api.view is not None
        accepted = await accept(http, api, 2)
        status, headers, body = await post(http, api)
        assert_refusal(status, headers, body, 429, "urn:floodgate:problem:queued-quota")
        assert body["limit"] == 2
        # The first job ends (as the job-state agent would write it): the tenant has room again.
        changes = api.view.subscribe(accepted[0])
        await aproduce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications,
                                 snapshot(accepted[0], 1, "queued"), snapshot(accepted[0], 5, "completed"))
        while (await asyncio.wait_for(changes.get(), 20))["status"] != "completed":
            pass
        status, _, body = await post(http, api)
        assert status == 202
        accepted.append(body["job_id"])
        status, _, _ = await post(http, api)
        assert status == 429
    assert sorted(await ids_in_requests(settings)) == sorted(accepted)


async def wait_for_verdict(api: ApiServer, shedding: bool, timeout: float = 20.0) -> None:
    """Wait, refresh by refresh, until the backlog monitor's verdict is ``shedding``."""
    monitor = api.backlog
    assert monitor is not None
    deadline = time.monotonic() + timeout
    while (monitor.refusal is not None) != shedding:
        monitor.refreshed.clear()
        await asyncio.wait_for(monitor.refreshed.wait(), max(0.1, deadline - time.monotonic()))


async def test_a_backlog_past_its_depth_is_503_and_writes_nothing(settings_for: Callable[..., Settings],
                                                                 http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, backlog_max_depth=3, backlog_refresh=0.1)
    async with running_api(settings) as api:
        accepted = await accept(http, api, 3)  # no worker reads them: three jobs queued
        await wait_for_verdict(api, shedding=True)
        status, headers, body = await post(http, api)
        assert_refusal(status, headers, body, 503, "urn:floodgate:problem:backlog")
        assert "3 jobs queued" in body["detail"]
        await assert_documented(http, api, status, body)
        async with http.get(f"{api.url}/metrics") as resp:
            metrics = await resp.text()
    assert "floodgate_backlog_depth 3.0" in metrics and "floodgate_backlog_shedding 1.0" in metrics
    assert 'floodgate_requests_rejected_total{reason="backlog"} 1.0' in metrics
    assert sorted(await ids_in_requests(settings)) == sorted(accepted)


def _admit(bootstrap: str, topic: str, requests: list[Any]) -> None:
    """Write, as the workers' jobs agent does, each request's job as admitted and queued: its
    state names the request record that admitted it. The workers' group commits nothing."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for msg in requests:
        job_id = codec.decode("JobRequest", msg.value(), msg.headers())["job_id"]
        state = JobState(job_id=job_id, tenant="default", model="kling-2.1", provider="kling", version=1)
        producer.produce(topic, key=job_id.encode(), value=JobRecord(state, admitted_by=(msg.partition(),
                                                                                           msg.offset())).encode())
    assert producer.flush(20) == 0


async def test_a_job_admitted_since_the_workers_last_commit_counts_once(settings_for: Callable[..., Settings],
                                                                         http: aiohttp.ClientSession) -> None:
    # The workers commit their offsets every few seconds; meanwhile the jobs they admitted are in
    # the view as queued and, counted from the commit, in the lag on requests too. Counted twice,
    # three jobs came to six, past a depth of five, and a burst was shed early.
    settings = settings_for(simulator_url=DEV_SIMULATOR, backlog_max_depth=5, backlog_refresh=0.1)
    names = TopicNames(settings)
    async with running_api(settings) as api:
        accepted = await accept(http, api, 3)
        requests = await aread_records(settings.kafka_bootstrap, names.requests, 3)
        await asyncio.to_thread(_admit, settings.kafka_bootstrap, names.notifications, requests)
        monitor, view = api.backlog, api.view
        assert monitor is not None and view is not None

        async def admitted() -> bool:
            return all((snap := view.get(job)) is not None and snap["version"] == 1 for job in accepted)
        await until(admitted, timeout=20, what="the view to read the jobs admitted")
        for _ in range(2):  # (the first may have begun before the view had them): a whole reading after
            monitor.refreshed.clear()
            await asyncio.wait_for(monitor.refreshed.wait(), 10)
        assert view.open_jobs.waiting == 3 and monitor.probe.depth() == 3
        assert monitor.refusal is None
        status, _, body = await post(http, api)
        assert status == 202, body


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(count):
        producer.produce(topic, key=f"job-{i}".encode(), value=b"order")
    assert producer.flush(20) == 0


async def test_an_ingress_only_api_counts_the_dispatch_backlog(settings_for: Callable[..., Settings],
                                                               http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, backlog_max_depth=4, backlog_refresh=0.1)
    provider = sorted(provider_config.load(settings).routing.providers)[0]
    async with running_api(settings, roles={"ingress"}) as api:
        status, _, body = await post(http, api)
        assert status == 202
        # Orders the workers' group has not read yet, on a provider's dispatch topic.
        await asyncio.to_thread(_produce, settings.kafka_bootstrap, TopicNames(settings).dispatch(provider), 3)
        await wait_for_verdict(api, shedding=True)
        status, headers, refused = await post(http, api)
        assert_refusal(status, headers, refused, 503, "urn:floodgate:problem:backlog")
    assert await ids_in_requests(settings) == [body["job_id"]]


async def test_an_ingress_only_api_counts_the_orders_waiting_in_dispatchers_lines(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    # Orders parked in a dispatcher's line are acknowledged (not in any lag): only the dispatcher's
    # line report says they wait. Two partitions' reports: the newest of each counts, stale ones not.
    settings = settings_for(simulator_url=DEV_SIMULATOR, backlog_max_depth=5, backlog_refresh=0.1)
    names = TopicNames(settings)
    async with running_api(settings, roles={"ingress"}) as api:
        status, _, body = await post(http, api)
        assert status == 202
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})

        def send() -> None:
            # Dispatchers publish their reports every second; only those younger than FRESH_FOR
            # count, so a busy machine must not let the test's reports age out before it looks.
            now = time.time()
            reports = [LineReport("wan", 0, free_slots=0, waiting=2, start_rate=1.0, at=now - 1),
                       LineReport("wan", 0, free_slots=0, waiting=3, start_rate=1.0, at=now),
                       LineReport("kling", 0, free_slots=0, waiting=2, start_rate=1.0, at=now),
                       LineReport("sora", 0, free_slots=0, waiting=50, start_rate=None, at=now - 600)]
            for r in reports:
                producer.produce(names.lines, key=f"{r.provider}:{r.partition}".encode(), value=r.encode())
            assert producer.flush(20) == 0

        async def publish() -> None:
            while True:
                await asyncio.to_thread(send)
                await asyncio.sleep(0.5)

        publisher = asyncio.create_task(publish())
        try:
            await wait_for_verdict(api, shedding=True)
            monitor = api.backlog
            assert monitor is not None
            deadline = time.monotonic() + 20
            while monitor.probe.depth() != 6 and time.monotonic() < deadline:  # the next refreshes read them all
                monitor.refreshed.clear()
                await asyncio.wait_for(monitor.refreshed.wait(), 5)
            assert monitor.probe.depth() == 6, "1 unread request + the newest fresh reports' 3 + 2 waiting"
            # Nothing has finished: the backlog drains at the full lines' pace (wan's newest 1/s,
            # kling's 1/s), where the count of finished jobs alone knew no rate at all.
            assert monitor.probe.drain_rate() == 2.0 and monitor.probe.estimated_wait() == 3.0
            status, headers, refused = await post(http, api)
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
    assert_refusal(status, headers, refused, 503, "urn:floodgate:problem:backlog")
    assert await ids_in_requests(settings) == [body["job_id"]]


async def test_a_long_line_sheds_its_models_jobs_and_accepts_the_others(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    """kling's line is full and 20 s long at its pace, wan has a free slot; the wait bound is 10 s:
    a job for kling-2.1 is refused with the time kling's line needs, a job for wan-2.6 is
    accepted, though the whole backlog's wait (every line together) is past the bound too."""
    settings = settings_for(simulator_url=DEV_SIMULATOR, backlog_max_wait=10.0, backlog_refresh=0.1)
    names = TopicNames(settings)
    async with running_api(settings, roles={"ingress"}) as api:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})

        def send() -> None:
            now = time.time()
            for r in (LineReport("kling", 0, free_slots=0, waiting=20, start_rate=1.0, at=now),
                      LineReport("wan", 0, free_slots=2, waiting=0, start_rate=0.5, at=now)):
                producer.produce(names.lines, key=f"{r.provider}:{r.partition}".encode(), value=r.encode())
            assert producer.flush(20) == 0

        async def publish() -> None:
            while True:  # as dispatchers do: a report stays fresh for FRESH_FOR seconds only
                await asyncio.to_thread(send)
                await asyncio.sleep(0.5)

        publisher = asyncio.create_task(publish())
        try:
            monitor = api.backlog
            assert monitor is not None
            deadline = time.monotonic() + 20
            while monitor.refusal_for("kling-2.1") is None and time.monotonic() < deadline:
                monitor.refreshed.clear()
                await asyncio.wait_for(monitor.refreshed.wait(), 5)
            assert monitor.probe.estimated_wait() == 20.0  # the whole backlog's: 20 jobs at kling's 1/s
            assert monitor.refusal is None and monitor.refusal_for("wan-2.6") is None
            status, headers, refused = await post(http, api)  # BODY is a kling-2.1 job
            async with http.post(f"{api.url}/v1/jobs", json={**BODY, "model": "wan-2.6"}) as resp:
                wan_status, wan_body = resp.status, await resp.json()
            async with http.get(f"{api.url}/metrics") as resp:
                metrics = await resp.text()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
    retry = assert_refusal(status, headers, refused, 503, "urn:floodgate:problem:backlog")
    assert "kling-2.1" in refused["detail"] and "20s at kling" in refused["detail"]
    assert retry == 11  # 20 s less the 10 s bound, plus one start at 1/s
    assert wan_status == 202
    assert 'floodgate_backlog_line_wait_seconds{provider="kling"} 20.0' in metrics
    assert 'floodgate_backlog_line_wait_seconds{provider="wan"} 0.0' in metrics
    assert await ids_in_requests(settings) == [wan_body["job_id"]]  # the refused job never reached Kafka


async def test_without_bounds_there_is_no_monitor(settings_for: Callable[..., Settings],
                                                  http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR)
    async with running_api(settings, roles={"ingress"}) as api:
        assert api.backlog is None
        status, _, _ = await post(http, api)
        assert status == 202
