"""A provider accepts jobs and then never answers: past FLOODGATE_JOB_TIMEOUT each job is failed,
cancelled at the provider (which must see the cancel, or the job would hold a slot there for
good) and its slot here is freed."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.stack_util import make_stack, simulator_config, until
from tests.helpers import final_states, fire, provider_jobs, scrape, sim_stats, value

pytestmark = pytest.mark.kafka

JOBS = 4
TIMEOUT = 3.0


def test_a_job_past_its_timeout_is_failed_and_cancelled_at_the_provider(kafka_bootstrap: str,
                                                                         tmp_path: Path) -> None:
    config = simulator_config(tmp_path / "sim.json", hang_rate=1.0)
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config, job_timeout=TIMEOUT, poll_after=1.0) as stack:
        accepted = asyncio.run(fire(stack.api_url, JOBS, "kling-2.1"))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=30)

        async def provider_quiet() -> dict | None:
            stats = (await sim_stats(stack.simulator_url))["kling"]
            return stats if stats["cancelled"] == JOBS and stats["in_flight"] == 0 else None

        async def slots_free() -> bool:
            async with aiohttp.ClientSession() as session:
                got = await scrape(session, stack.metrics_urls["worker-0"])
            return (value(got, "floodgate_provider_inflight", provider="kling") == 0
                    and value(got, "floodgate_provider_timeouts_total", provider="kling") >= JOBS)

        stats = asyncio.run(until(provider_quiet, timeout=15, what="the provider to see every cancel"))
        asyncio.run(until(slots_free, timeout=15, what="the worker to free every slot"))
        seen = asyncio.run(provider_jobs(stack.simulator_url, "kling"))

    assert stats["jobs_created"] == JOBS, "each job reached the provider once, and hung there"
    assert stats["completed"] == stats["failed"] == 0
    for job_id, records in finals.items():
        assert [r["status"] for r in records] == ["failed"], (job_id, records)
        assert "no result from kling" in records[0]["error"], records[0]
    # The provider let each job go before Floodgate called it failed (and freed its slot).
    failed_at = {job_id: records[0]["updated_at"] / 1000 for job_id, records in finals.items()}
    assert sorted(job["job_id"] for job in seen) == sorted(ids)
    for job in seen:
        assert job["status"] == "cancelled" and job["completed_at"] <= failed_at[job["job_id"]] + 0.001, job
