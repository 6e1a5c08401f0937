"""Spillover on the running stack: kling (2 slots, renders of about a second) gets a burst while
wan (10 slots, fast) idles. kling-2.1 names wan-2.6 as its equivalent with max_wait_s 2: jobs
that would wait longer at kling move to wan, each once, and say so; jobs that would not (a free
slot, or a short line: a wait under max_wait_s), stay."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from floodgate.devstack import Stack
from tests.e2e.stack_util import get_job, make_stack, routing_file, simulator_config, submit, until
from tests.helpers import final_states, provider_jobs, sim_stats

pytestmark = pytest.mark.kafka

BURST = 30


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("spill")
    sim = simulator_config(home / "sim.json", only={
        "kling": {"concurrency_limit": 2, "render_time": {"kind": "uniform", "min": 1.0, "max": 1.2}}})
    routes = routing_file(home / "routes.json", {"wan": 10, "kling": 2},
                          spillover={"kling-2.1": {"equivalents": ["wan-2.6"], "max_wait_s": 2}})
    with make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes), dispatch_partitions=1) as s:
        yield s


BODY = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "a lighthouse"}}


async def run(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        # Two jobs find kling's two slots free: no wait, no spill.
        first = [await submit(http, stack.api_url, BODY) for _ in range(2)]
        firsts = {a["job_id"] for a in first}
        await until(lambda: _ended(stack, firsts), timeout=30, what="the first two jobs")
        # A short line: two take the slots, two wait a render or two (at most about 2.2 s of work
        # ahead of the last, for two slots: under max_wait_s by kling's pace), and all four stay.
        short = {a["job_id"] for a in await asyncio.gather(*(submit(http, stack.api_url, BODY) for _ in range(4)))}
        await until(lambda: _ended(stack, short), timeout=30, what="the short line's four jobs")
        firsts |= short
        burst = await asyncio.gather(*(submit(http, stack.api_url, BODY) for _ in range(BURST)))
        ids = {a["job_id"] for a in burst}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids | firsts, timeout=90)
        assert set(finals) >= ids | firsts
        assert all(len(finals[j]) == 1 and finals[j][0]["status"] == "completed" for j in ids | firsts)

        kling = {job["job_id"] for job in await provider_jobs(stack.simulator_url, "kling")}
        wan = {job["job_id"] for job in await provider_jobs(stack.simulator_url, "wan")}
        assert firsts <= kling and not firsts & wan, "jobs that had no wait, or a short one, stayed"
        spilled = ids & wan
        assert len(spilled) >= BURST // 3, f"only {len(spilled)} of {BURST} moved while kling's line was long"
        assert not kling & wan, "a job went to one provider only (spilled once, never back)"
        # A moved job joined wan's line when it moved, at the back: its final snapshot says when.
        assert all(finals[j][0]["lined_at"] > finals[j][0]["created_at"] for j in spilled)
        assert all(finals[j][0]["lined_at"] is None for j in (ids | firsts) - spilled)
        stats = await sim_stats(stack.simulator_url)
        assert stats["kling"]["duplicate_idempotency_keys"] == 0 and stats["wan"]["duplicate_idempotency_keys"] == 0
        assert stats["kling"]["max_concurrency"] <= 2, "kling's limit held"

        tokens = {a["job_id"]: a["token"] for a in burst}
        moved = await get_job(http, stack.api_url, next(iter(spilled)), tokens[next(iter(spilled))])
        assert moved["model"] == "kling-2.1" and moved["serving_model"] == "wan-2.6"
        assert moved["provider"] == "wan" and "spilled from kling-2.1" in moved["route_note"]
        stayed = ids & kling
        if stayed:
            job = next(iter(stayed))
            kept = await get_job(http, stack.api_url, job, tokens[job])
            assert kept["serving_model"] == "kling-2.1" and kept["route_note"] is None


async def _ended(stack: Stack, ids: set[str]) -> bool:
    jobs = await provider_jobs(stack.simulator_url, "kling")
    return ids <= {job["job_id"] for job in jobs if job["status"] == "completed"}


def test_a_long_line_spills_to_an_equivalent_with_room_and_a_short_one_does_not(stack: Stack) -> None:
    asyncio.run(run(stack))
