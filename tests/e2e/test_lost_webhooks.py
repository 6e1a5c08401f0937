"""A provider loses a fifth of its webhooks: the worker's poller learns the rest by asking the
provider, so every job still ends, once, and none is submitted twice."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.stack_util import make_stack, simulator_config
from tests.helpers import final_states, fire, provider_jobs, scrape, sim_stats, value

pytestmark = pytest.mark.kafka

JOBS = 50


async def worker_polls(metrics_url: str, provider: str) -> float:
    async with aiohttp.ClientSession() as session:
        return value(await scrape(session, metrics_url), "floodgate_provider_polls_total", provider=provider)


def test_a_fifth_of_webhooks_lost_every_job_still_completes_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = simulator_config(tmp_path / "sim.json", drop_rate=0.2)
    # A job quiet for a second is polled (the poll tick is then one second too).
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config, poll_after=1.0) as stack:
        accepted = asyncio.run(fire(stack.api_url, JOBS, "kling-2.1"))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=60)
        stats = asyncio.run(sim_stats(stack.simulator_url))["kling"]
        seen = asyncio.run(provider_jobs(stack.simulator_url, "kling"))
        polls = asyncio.run(worker_polls(stack.metrics_urls["worker-0"], "kling"))

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
    assert stats["jobs_created"] == JOBS and stats["duplicate_idempotency_keys"] == 0, stats
    assert sorted(job["job_id"] for job in seen) == sorted(ids)
    assert all(job["status"] == "completed" for job in seen)
