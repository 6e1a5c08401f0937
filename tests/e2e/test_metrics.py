"""Metrics on real processes: after a few jobs through the whole stack, the API's, the worker's and
the simulator's /metrics show them — counters moved, histograms observed, gauges back at rest."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from floodgate.devstack import Stack
from floodgate.provider_config import dev_setup
from tests.e2e.stack_util import TERMINAL, get_job, make_stack, simulator_config, submit, until
from tests.helpers import Samples, scrape, value

pytestmark = pytest.mark.kafka

N = 12
async def follow_sse(session: aiohttp.ClientSession, url: str, token: str) -> list[dict]:
    events: list[dict] = []
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["status"] in TERMINAL:
                    return events
    return events


def test_metrics_of_api_worker_and_simulator_move(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Renders long enough that an SSE stream opened right after the 202 sees live changes.
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.5, "max": 1.0})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config) as stack:
        assert set(stack.metrics_urls) == {"simulator", "api", "worker-0"}
        asyncio.run(_scenario(stack))


async def _scenario(stack: Stack) -> None:
    urls = stack.metrics_urls
    limit = dev_setup("http://unused").routing.providers["wan"].concurrency_limit
    async with aiohttp.ClientSession() as session:
        accepted = [await submit(session, stack.api_url, {
            "model": "wan-2.6", "user_id": f"u{i}", "input": {"prompt": f"shot {i}"}}) for i in range(N)]
        sse = asyncio.create_task(follow_sse(session, accepted[0]["events_url"], accepted[0]["token"]))
        async with session.post(f"{stack.api_url}/v1/jobs", json={"model": "wan-2.6", "user_id": "x"}) as bad:
            assert bad.status == 400

        async def all_done() -> bool:
            jobs = [await get_job(session, stack.api_url, a["job_id"], a["token"]) for a in accepted]
            return all(j["status"] in TERMINAL for j in jobs)

        await until(all_done, timeout=120, what=f"{N} jobs to finish")
        events = await asyncio.wait_for(sse, timeout=30)
        assert events[-1]["status"] == "completed"

        api = await scrape(session, urls["api"])
        assert value(api, "floodgate_requests_accepted_total", source="http") >= N
        assert value(api, "floodgate_accept_latency_seconds_count") >= N
        assert value(api, "floodgate_accept_latency_seconds_bucket", le="1.0") >= N  # all within 1 s
        assert value(api, "floodgate_requests_rejected_total", reason="validation") >= 1
        assert value(api, "floodgate_webhooks_received_total", provider="wan", outcome="accepted") >= N
        assert value(api, "floodgate_notification_latency_seconds_count", channel="sse") >= 1
        assert value(api, "floodgate_notification_subscribers", channel="sse") == 0
        assert value(api, "floodgate_api_event_loop_lag_seconds_count") >= 1  # the probe runs while serving

        async def worker_settled() -> Samples | None:
            worker = await scrape(session, urls["worker-0"])
            settled = (value(worker, "floodgate_job_latency_seconds_count", outcome="completed") >= N
                       and value(worker, "floodgate_provider_inflight", provider="wan") == 0
                       and value(worker, "floodgate_provider_concurrency_limit", provider="wan") == limit
                       and value(worker, "floodgate_queue_depth", provider="wan") == 0)
            return worker if settled else None

        # Slots are freed and offsets committed a moment after the last job's result: poll.
        worker = await until(worker_settled, timeout=60, what="the worker's gauges to settle")
        assert value(worker, "floodgate_jobs_admitted_total", source="http") >= N
        assert value(worker, "floodgate_worker_event_loop_lag_seconds_count") >= 1  # probing since ready
        assert value(worker, "floodgate_provider_submissions_total", provider="wan") >= N
        assert value(worker, "floodgate_job_transitions_total", status="completed") >= N
        assert value(worker, "floodgate_events_processed_total", agent="admission") >= N
        assert value(worker, "floodgate_events_processed_total", agent="submit-wan") >= N
        assert value(worker, "floodgate_webhooks_normalised_total", provider="wan") >= N
        assert value(worker, "floodgate_dead_letters_total", stage="admission") == 0

        sim = await scrape(session, urls["simulator"])
        assert value(sim, "floodgate_sim_jobs_created_total", provider="wan") >= N
        assert value(sim, "floodgate_sim_inflight", provider="wan") == 0
        assert value(sim, "floodgate_sim_max_concurrency", provider="wan") <= limit
