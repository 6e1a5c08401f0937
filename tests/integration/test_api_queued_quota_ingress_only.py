"""The queued-jobs quota in API processes without a job view (``--roles ingress``), on the real
broker: a process counts the jobs it answered 202 until their result is on ``results``, and
processes taking requests share the limit. Every 202 is in ``requests`` and no refusal is."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from floodgate.api.server import ApiServer
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from tests.integration.api_helpers import DEV_SIMULATOR, aproduce_snapshots, running_api, snapshot
from tests.integration.test_api_admission import accept, assert_refusal, ids_in_requests, post
from tests.integration.test_api_quota_instances import KEYS, alternate, two_apis, until
from tests.kafka_util import unique_name

pytestmark = pytest.mark.kafka

QUEUED = "urn:floodgate:problem:queued-quota"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def ended(api: ApiServer, settings: Settings, job_id: str) -> None:
    """Write ``job_id``'s result as the job-state agent does, and wait until ``api`` has read it."""
    reader = api.ended
    assert reader is not None
    seen = reader.read
    await aproduce_snapshots(settings.kafka_bootstrap, TopicNames(settings).results,
                             snapshot(job_id, 5, "completed", tenant="default"))
    await until(lambda: reader.read > seen, f"the result of {job_id} to be read")


async def test_an_ingress_only_process_counts_its_jobs_until_their_results(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, tenant_queued_limit=2)
    async with running_api(settings, roles={"ingress"}) as api:
        assert api.view is None and api.ended is not None
        accepted = await accept(http, api, 2)
        status, headers, body = await post(http, api)
        assert_refusal(status, headers, body, 429, QUEUED)
        assert body["limit"] == 2
        # A job another process accepted ends: this process's count does not move.
        await ended(api, settings, unique_name("elsewhere"))
        status, _, _ = await post(http, api)
        assert status == 429
        # One of its own ends: the tenant has room for one more, and only one.
        await ended(api, settings, accepted[0])
        status, _, body = await post(http, api)
        assert status == 202
        accepted.append(body["job_id"])
        status, _, _ = await post(http, api)
        assert status == 429
    assert sorted(await ids_in_requests(settings)) == sorted(accepted)


async def test_two_ingress_only_processes_share_the_queued_limit(settings_for: Callable[..., Settings],
                                                                 http: aiohttp.ClientSession) -> None:
    # A beat a second: 3 s to live, past a loaded run's event-loop stalls (test_api_quota_instances.py).
    settings = settings_for(simulator_url=DEV_SIMULATOR, tenant_queued_limit=4, instance_heartbeat=1.0,
                            api_keys=KEYS)
    async with two_apis(settings) as (first, second):
        assert first.beacon is not None and second.beacon is not None  # heartbeats without a rate quota
        await until(lambda: first.beacon is not None and first.beacon.roster.live == 2, "the first to count two")
        answers = await alternate(http, [first, second], 8)
        statuses = sorted(status for status, _ in answers)
        assert statuses == [202] * 4 + [429] * 4, f"one limit between them, 2 each: {statuses}"
        assert {kind for status, kind in answers if status == 429} == {QUEUED}
    assert sorted(await ids_in_requests(settings)) == sorted(str(job) for status, job in answers if status == 202)
