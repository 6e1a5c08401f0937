"""A tenant's rate quota across API processes, on the real broker: two ingress processes behind a
balancer that alternates between them admit the quota once, not once each; a process that stops
says so and the other takes the whole quota; ``FLOODGATE_QUOTA_SCOPE=process`` keeps one quota per
process. Every 202 is in ``requests`` and nothing else is."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from floodgate.api.server import ApiServer
from floodgate.settings import Secret, Settings
from floodgate.topics import TopicNames
from tests.integration.api_helpers import DEV_SIMULATOR, record_count, running_api
from tests.integration.test_api_admission import BODY, ids_in_requests

pytestmark = pytest.mark.kafka

KEYS = Secret("key-a=acme")
LIMIT = 20
# A beat a second, so a peer is counted gone after 3 s unheard (TTL_BEATS). At 0.2 s (0.6 s to
# live), one suite run with three test processes on two cores saw both APIs admit the whole quota
# mid-burst (40 × 202): each had counted itself alone, which one stall of this test process's
# event loop (both APIs, the burst's 60 requests and the beats' reads share it) longer than 0.6 s
# explains. Not reproduced in three runs beside three busy loops; the beat is not what is tested.
HEARTBEAT = 1.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def alternate(http: aiohttp.ClientSession, apis: list[ApiServer], count: int) -> list[tuple[int, str | None]]:
    """``count`` requests of one tenant at once, handed to the processes in turn."""
    async def post(api: ApiServer) -> tuple[int, str | None]:
        async with http.post(f"{api.url}/v1/jobs", json=BODY, headers={"X-API-Key": "key-a"}) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body.get("job_id") if resp.status == 202 else body["type"]

    return await asyncio.gather(*(post(apis[n % len(apis)]) for n in range(count)))


@contextlib.asynccontextmanager
async def two_apis(settings: Settings) -> AsyncIterator[tuple[ApiServer, ApiServer]]:
    async with running_api(settings, roles={"ingress"}) as first, running_api(settings, roles={"ingress"}) as second:
        yield first, second


async def test_two_processes_admit_a_tenant_s_quota_once_between_them(settings_for: Callable[..., Settings],
                                                                      http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, api_keys=KEYS, tenant_rate_limit=LIMIT,
                            instance_heartbeat=HEARTBEAT)
    async with two_apis(settings) as (first, second):
        assert first.beacon is not None and second.beacon is not None
        # The second read the first's heartbeat before it listened; the first hears the second's.
        assert second.beacon.roster.live == 2
        await until(lambda: first.beacon is not None and first.beacon.roster.live == 2, "the first to count two")
        started = time.monotonic()
        answers = await alternate(http, [first, second], 3 * LIMIT)
        elapsed = time.monotonic() - started
        assert elapsed < 6.0, "the burst must fit within one interval of a share (60 s × 2 / 20) to be exact"
        statuses = sorted(status for status, _ in answers)
        assert statuses == [202] * LIMIT + [429] * (2 * LIMIT), f"one quota between them, not one each: {statuses}"
        assert {kind for status, kind in answers if status == 429} == {"urn:floodgate:problem:rate-quota"}
        accepted = sorted(str(job) for status, job in answers if status == 202)

        # The second stops and says so: the first counts itself alone and paces at the whole quota.
        await second.close()
        await until(lambda: first.beacon is not None and first.beacon.roster.live == 1,
                    "the first to count itself alone")
    assert sorted(await ids_in_requests(settings)) == accepted
    instances = TopicNames(settings).instances
    assert record_count(settings.kafka_bootstrap, instances) >= 4, "beats of both, and the last ones saying gone"


async def test_process_scope_keeps_a_quota_per_process(settings_for: Callable[..., Settings],
                                                       http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, api_keys=KEYS, tenant_rate_limit=LIMIT,
                            quota_scope="process")
    async with two_apis(settings) as (first, second):
        assert first.beacon is None and second.beacon is None, "no heartbeats where nothing is shared"
        answers = await alternate(http, [first, second], 3 * LIMIT)
    assert sorted(status for status, _ in answers) == [202] * (2 * LIMIT) + [429] * LIMIT
    assert sorted(await ids_in_requests(settings)) == sorted(str(job) for status, job in answers if status == 202)


async def test_without_rate_quotas_a_process_with_the_job_view_writes_no_heartbeat(
        settings_for: Callable[..., Settings]) -> None:
    """Its queued-jobs quota counts every job (the view's count), so it shares nothing. (One without
    the view shares its queued quota and beats: test_api_queued_quota_ingress_only.py.)"""
    settings = settings_for(simulator_url=DEV_SIMULATOR, tenant_queued_limit=5)
    async with running_api(settings) as api:
        assert api.view is not None and api.beacon is None and api.ended is None
    assert record_count(settings.kafka_bootstrap, TopicNames(settings).instances) == 0
