"""Providers that go quiet, and the worker's poll timer that notices (one stack for both):

* kling loses a fifth of its webhooks: the poller learns the rest by asking kling, so every job
  still ends, once, and none is submitted twice;
* wan accepts jobs and then never answers (simulator ``hang_rate``): past FLOODGATE_JOB_TIMEOUT
  each job is cancelled at wan (which must see the cancel, or the job would hold a slot there for
  good), then failed, and its slot here is freed.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from floodgate.devstack import Stack
from tests.e2e.stack_util import make_stack, routing_file, simulator_config, until
from tests.helpers import final_states, fire, provider_jobs, scrape, sim_stats, value

pytestmark = pytest.mark.kafka

LOSSY_JOBS = 40
HUNG_JOBS = 4
TIMEOUT = 3.0


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("quiet")
    sim = simulator_config(home / "sim.json", only={"kling": {"drop_rate": 0.2}, "wan": {"hang_rate": 1.0}})
    routes = routing_file(home / "routes.json", {"wan": 10, "kling": 10})
    # A job quiet for a second is polled (the poll tick is then one second too): well before the
    # timeout, so a job whose webhook was lost is never mistaken for a hung one.
    with make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes), poll_after=1.0,
                    job_timeout=TIMEOUT) as s:
        yield s


def results_of(stack: Stack, ids: set[str], timeout: float) -> dict[str, list[dict]]:
    """Every result record of the jobs ``ids`` (the topic also holds the other test's)."""
    finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=timeout)
    return {job_id: records for job_id, records in finals.items() if job_id in ids}


async def worker_metric(stack: Stack, name: str, provider: str) -> float:
    async with aiohttp.ClientSession() as session:
        return value(await scrape(session, stack.metrics_urls["worker-0"]), name, provider=provider)


def test_a_fifth_of_webhooks_lost_every_job_still_completes_once(stack: Stack) -> None:
    accepted = asyncio.run(fire(stack.api_url, LOSSY_JOBS, "kling-2.1"))
    ids = {a["job_id"] for a in accepted}
    finals = results_of(stack, ids, timeout=60)
    stats = asyncio.run(sim_stats(stack.simulator_url))["kling"]
    seen = asyncio.run(provider_jobs(stack.simulator_url, "kling"))
    polls = asyncio.run(worker_metric(stack, "floodgate_provider_polls_total", "kling"))

    assert set(finals) == ids
    for job_id, records in finals.items():
        assert len(records) == 1, f"{job_id} reached a terminal state {len(records)} times"
        assert records[0]["status"] == "completed" and records[0]["video_url"], records[0]
    # The faults happened: some jobs' only news of their end was lost on the way.
    lost_end = [job for job in seen if "video.completed" in job["webhooks_dropped"]]
    assert lost_end, "no terminal webhook was dropped: the test proves nothing"
    assert stats["webhooks_dropped"] >= len(lost_end)
    assert polls > 0, "the jobs whose end was lost can only have been learnt by polling"
    # One provider job per Floodgate job: no resubmission, not even one the provider deduplicated.
    assert stats["jobs_created"] == LOSSY_JOBS and stats["duplicate_idempotency_keys"] == 0, stats
    assert sorted(job["job_id"] for job in seen) == sorted(ids)
    assert all(job["status"] == "completed" for job in seen)


def test_a_job_past_its_timeout_is_cancelled_at_the_provider_then_failed(stack: Stack) -> None:
    accepted = asyncio.run(fire(stack.api_url, HUNG_JOBS, "wan-2.6"))
    ids = {a["job_id"] for a in accepted}
    finals = results_of(stack, ids, timeout=30)

    async def provider_quiet() -> dict | None:
        stats = (await sim_stats(stack.simulator_url))["wan"]
        return stats if stats["cancelled"] == HUNG_JOBS and stats["in_flight"] == 0 else None

    async def slots_free() -> bool:
        return (await worker_metric(stack, "floodgate_provider_inflight", "wan") == 0
                and await worker_metric(stack, "floodgate_provider_timeouts_total", "wan") >= HUNG_JOBS)

    stats = asyncio.run(until(provider_quiet, timeout=15, what="the provider to see every cancel"))
    asyncio.run(until(slots_free, timeout=15, what="the worker to free every slot"))
    seen = asyncio.run(provider_jobs(stack.simulator_url, "wan"))

    assert stats["jobs_created"] == HUNG_JOBS, "each job reached the provider once, and hung there"
    assert stats["completed"] == stats["failed"] == 0
    for job_id, records in finals.items():
        assert [r["status"] for r in records] == ["failed"], (job_id, records)
        assert records[0]["provider"] == "wan" and "no result from wan" in records[0]["error"], records[0]
    # The provider let each job go before Floodgate called it failed (and freed its slot).
    failed_at = {job_id: records[0]["updated_at"] / 1000 for job_id, records in finals.items()}
    assert sorted(job["job_id"] for job in seen) == sorted(ids)
    for job in seen:
        assert job["status"] == "cancelled" and job["completed_at"] <= failed_at[job["job_id"]] + 0.001, job
