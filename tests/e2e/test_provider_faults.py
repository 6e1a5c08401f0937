"""Providers misbehave: a tighter real limit than configured (429s), and an outage (503s).
Jobs still complete; 429s are retried after Retry-After; an outage moves jobs to the fallback."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.stack_util import TERMINAL, get_job, make_stack, routing_file, simulator_config, submit, until
from tests.helpers import sim_stats

pytestmark = pytest.mark.kafka


async def _run_jobs(api: str, n: int, model: str) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        accepted = await asyncio.gather(*(submit(session, api, {
            "model": model, "user_id": "u", "input": {"prompt": f"p{i}"}}) for i in range(n)))

        async def all_done() -> list[dict] | None:
            jobs = [await get_job(session, api, a["job_id"], a["token"]) for a in accepted]
            return jobs if all(j["status"] in TERMINAL for j in jobs) else None

        return await until(all_done, timeout=180, what=f"{n} jobs to finish", interval=0.5)


def test_429s_are_retried_and_the_real_limit_holds(kafka_bootstrap: str, tmp_path: Path) -> None:
    # We believe wan allows 8 at once; it really allows 3.
    sim = simulator_config(tmp_path / "sim.json", concurrency_limit=3,
                           render_time={"kind": "uniform", "min": 0.1, "max": 0.3})
    routes = routing_file(tmp_path / "routes.json", {"wan": 8, "kling": 8})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=sim, routing_file=str(routes)) as stack:
        jobs = asyncio.run(_run_jobs(stack.api_url, 40, "wan-2.6"))
        stats = asyncio.run(sim_stats(stack.simulator_url))
    assert {j["status"] for j in jobs} == {"completed"}
    assert stats["wan"]["rejected_429"] > 0, "the test must actually provoke 429s"
    assert stats["wan"]["max_concurrency"] <= 3
    assert stats["wan"]["jobs_created"] == 40
    assert {j["provider"] for j in jobs} == {"wan"}, "429 means busy, not down: no fallback"


def test_outage_moves_jobs_to_the_fallback(kafka_bootstrap: str, tmp_path: Path) -> None:
    sim = simulator_config(tmp_path / "sim.json")
    routes = routing_file(tmp_path / "routes.json", {"wan": 10, "kling": 10})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=sim, routing_file=str(routes)) as stack:
        asyncio.run(_outage(stack.simulator_url, "wan", 300))
        jobs = asyncio.run(_run_jobs(stack.api_url, 12, "wan-2.6"))
        stats = asyncio.run(sim_stats(stack.simulator_url))
    assert {j["status"] for j in jobs} == {"completed"}
    assert {j["provider"] for j in jobs} == {"kling"}
    assert stats["wan"]["outage_rejections"] > 0 and stats["wan"]["jobs_created"] == 0


async def _outage(url: str, provider: str, seconds: float) -> None:
    async with aiohttp.ClientSession() as session, \
            session.post(f"{url}/_admin/{provider}/outage", json={"seconds": seconds}) as resp:
        assert resp.status == 200, await resp.text()
