"""A provider's request rate holds across workers: two workers, each owning one of the provider's
two dispatch partitions, together submit no faster than its ``rate_per_second``, as counted by
the provider (the simulator's record of when it created each job)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.stack_util import make_stack, routing_file, simulator_config
from tests.helpers import final_states, fire, provider_jobs, scrape, sim_stats, value

pytestmark = pytest.mark.kafka

RATE = 8.0
BURST = RATE  # the provider's bucket size, max(1, rate): what may go at once after a quiet spell
JOBS = 40
LATE = 0.25
"""Seconds a send may leave after its token's time (a busy event loop, the network): sends held
up that long can bunch with the next ones, RATE * LATE more in a window than the bucket's bound."""


def most_in_a_window(times: list[float], excess_over: float) -> float:
    """The largest ``count - excess_over * span`` over every window of ``times`` (sorted): how
    far the submissions went over a steady ``excess_over`` per second, at worst."""
    worst = 0.0
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - excess_over * (times[j] - start))
    return worst


async def submissions_by_worker(metrics_urls: list[str]) -> list[float]:
    async with aiohttp.ClientSession() as session:
        return [value(await scrape(session, url), "floodgate_provider_submissions_total", provider="wan")
                for url in metrics_urls]


def test_two_workers_together_keep_the_providers_rate(kafka_bootstrap: str, tmp_path: Path) -> None:
    sim = simulator_config(tmp_path / "sim.json")
    routes = routing_file(tmp_path / "routes.json", {"wan": 10, "kling": 10}, rates={"wan": RATE})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=sim, routing_file=str(routes), workers=2,
                    dispatch_partitions=2) as stack:
        accepted = asyncio.run(fire(stack.api_url, JOBS, "wan-2.6"))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=60)
        stats = asyncio.run(sim_stats(stack.simulator_url))["wan"]
        seen = asyncio.run(provider_jobs(stack.simulator_url, "wan"))
        by_worker = asyncio.run(submissions_by_worker([stack.metrics_urls[f"worker-{i}"] for i in range(2)]))

    assert {records[-1]["status"] for records in finals.values()} == {"completed"}
    assert {records[-1]["provider"] for records in finals.values()} == {"wan"}
    # Every submission created a job (no 429, no retry), so the jobs' times are the submissions'.
    assert stats["rejected_429"] == 0 and stats["jobs_created"] == JOBS, stats
    assert all(n > 0 for n in by_worker), f"both workers must submit to wan: {by_worker}"
    created = sorted(job["created_at"] for job in seen)
    # In any window of T seconds, at most BURST + RATE * T submissions (and the bunching of late sends).
    assert most_in_a_window(created, RATE) <= BURST + RATE * LATE, (created, by_worker)
    # And the rate is used, not just respected: the whole run took about (JOBS - BURST) / RATE.
    span = created[-1] - created[0]
    assert span <= 2 * (JOBS - BURST) / RATE, f"{JOBS} submissions took {span:.1f}s"
