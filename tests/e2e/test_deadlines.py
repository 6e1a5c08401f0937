"""Deadlines on the running stack: a job still waiting for a slot when its ``deadline_s`` passes
ends ``expired`` and never reaches the provider; FLOODGATE_DEFAULT_DEADLINE_S gives one to a
request naming none; a job whose deadline is far off waits and completes.

kling has one slot (renders of 4 s) and a default deadline of 2 s: the first job takes the slot,
the next three wait behind it with deadlines of 1 s, the default (2 s) and 600 s.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from floodgate.provider_config import DEV_WEBHOOK_SECRET_REF
from tests.e2e.queue_util import Accepted, post_jobs
from tests.e2e.stack_util import get_job, make_stack, simulator_config, until
from tests.helpers import final_states, provider_jobs, sim_stats

pytestmark = pytest.mark.kafka

DEFAULT_DEADLINE = 2
RENDER = 4.0


async def run(api: str, sim: str) -> tuple[dict[str, Accepted], dict[str, dict[str, Any]]]:
    async with aiohttp.ClientSession() as session:
        first = (await post_jobs(session, api, "", "t", 1, "kling-2.1"))[0]

        async def taken() -> bool:
            return any(job["job_id"] == first.job_id for job in await provider_jobs(sim, "kling"))

        await until(taken, timeout=30, what="the first job to take kling's slot")
        jobs = {"first": first,
                "one_second": (await post_jobs(session, api, "", "t", 1, "kling-2.1", deadline_s=1))[0],
                "default": (await post_jobs(session, api, "", "t", 1, "kling-2.1"))[0],
                "far_off": (await post_jobs(session, api, "", "t", 1, "kling-2.1", deadline_s=600))[0]}

        async def both_expired() -> dict[str, dict[str, Any]] | None:
            shown = {name: await get_job(session, api, job.job_id, job.token)
                     for name, job in jobs.items() if name in ("one_second", "default")}
            return shown if all(job["status"] == "expired" for job in shown.values()) else None

        shown = await until(both_expired, timeout=30, what="the two short deadlines to pass")
    return jobs, shown


def test_waiting_jobs_past_their_deadline_expire_unsubmitted_and_the_rest_complete(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    sim = simulator_config(tmp_path / "sim.json", only={"kling": {"concurrency_limit": 2, "render_time": RENDER}})
    routes = tmp_path / "routes.json"
    conn = {"base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": "k", "webhook_secret": DEV_WEBHOOK_SECRET_REF}
    routes.write_text(json.dumps({
        "providers": {"kling": {"kind": "simulator", "concurrency_limit": 1, "connection": conn}},
        "routes": {"kling-2.1": [{"provider": "kling"}]}}))
    # A poll tick of a second: that is when waiting orders are checked against their deadlines.
    with make_stack(kafka_bootstrap, tmp_path, sim_config=sim, routing_file=str(routes), dispatch_partitions=1,
                    default_deadline_s=DEFAULT_DEADLINE, poll_after=3.0) as stack:
        jobs, shown = asyncio.run(run(stack.api_url, stack.simulator_url))
        ids = {job.job_id: name for name, job in jobs.items()}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), set(ids), timeout=60)
        seen = asyncio.run(provider_jobs(stack.simulator_url, "kling"))
        kling = asyncio.run(sim_stats(stack.simulator_url))["kling"]

    outcome = {ids[job_id]: [r["status"] for r in records] for job_id, records in finals.items()}
    assert outcome == {"first": ["completed"], "one_second": ["expired"], "default": ["expired"],
                       "far_off": ["completed"]}, outcome
    # Never submitted: the provider saw only the two that completed.
    assert sorted(job["job_id"] for job in seen) == sorted([jobs["first"].job_id, jobs["far_off"].job_id]), seen
    assert kling["max_concurrency"] <= 1, kling
    for name in ("one_second", "default"):
        job, record = shown[name], finals[jobs[name].job_id][-1]
        assert job["result"] is None and job["queue_position"] is None and "deadline" in job["error"], job
        # Not before its deadline: the default's 2 s (not 1 s) applied to the request naming none.
        # (Counted from acceptance, a little before the 202 the test dates it by.)
        waited = record["updated_at"] / 1000 - jobs[name].accepted_at
        deadline = 1 if name == "one_second" else DEFAULT_DEADLINE
        assert waited >= deadline - 0.3, (name, waited)
    expired_at = {name: finals[jobs[name].job_id][-1]["updated_at"] for name in ("one_second", "default")}
    assert expired_at["one_second"] <= expired_at["default"], expired_at
