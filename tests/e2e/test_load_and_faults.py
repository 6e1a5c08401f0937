"""The promises under load and faults: the provider's concurrency limit holds across partitions,
chaotic webhooks converge to one correct final state, and a killed worker loses nothing."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.stack_util import make_stack, simulator_config, until
from tests.helpers import final_states, fire, sim_stats, simulator_stats

pytestmark = pytest.mark.kafka


def test_two_thousand_jobs_never_exceed_the_limit(kafka_bootstrap: str, tmp_path: Path) -> None:
    with make_stack(kafka_bootstrap, tmp_path, sim_config=simulator_config(tmp_path / "sim.json")) as stack:
        accepted = asyncio.run(fire(stack.api_url, 2000, "wan-2.6"))
        ids = {a["job_id"] for a in accepted}
        assert len(ids) == 2000
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=400)
        stats = asyncio.run(sim_stats(stack.simulator_url))
    assert {f[-1]["status"] for f in finals.values()} == {"completed"}
    wan = stats["wan"]
    assert wan["concurrency_limit"] == 10
    assert wan["max_concurrency"] <= 10, wan
    assert wan["max_concurrency"] >= 8, "the limit should also be used, not just respected"
    assert wan["rejected_429"] == 0, wan
    assert wan["jobs_created"] == 2000


def test_limit_is_shared_by_two_workers(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Two workers split the dispatch partitions; their shares still add up to the limit."""
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.1, "max": 0.3})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config, workers=2) as stack:
        accepted = asyncio.run(fire(stack.api_url, 300, "wan-2.6"))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=240)
        stats = asyncio.run(sim_stats(stack.simulator_url))
        logs = [stack.children[f"worker-{i}"].log.read_text() for i in range(2)]
    assert {f[-1]["status"] for f in finals.values()} == {"completed"}
    assert stats["wan"]["max_concurrency"] <= 10, stats["wan"]
    assert stats["wan"]["rejected_429"] == 0
    assert all("worker=ready" in log for log in logs), "both workers joined the group"


def test_duplicated_and_reordered_webhooks_converge(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = simulator_config(tmp_path / "sim.json", duplicate_rate=1.0, reorder_rate=1.0)
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config) as stack:
        accepted = asyncio.run(fire(stack.api_url, 60, "kling-2.1"))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=120)
        stats = asyncio.run(sim_stats(stack.simulator_url))
        tokens = {a["job_id"]: a["token"] for a in accepted}

        async def read_all() -> list[dict]:
            async with aiohttp.ClientSession() as session:
                out = []
                for job_id, token in tokens.items():
                    async with session.get(f"{stack.api_url}/v1/jobs/{job_id}",
                                           headers={"Authorization": f"Bearer {token}"}) as resp:
                        out.append(await resp.json())
                return out

        seen = asyncio.run(read_all())
    assert stats["kling"]["webhooks_duplicated"] > 0 and stats["kling"]["webhooks_reordered"] > 0
    for job_id, records in finals.items():
        assert len(records) == 1, f"{job_id} reached a terminal state {len(records)} times"
        assert records[0]["status"] == "completed" and records[0]["video_url"]
    # A late `in_progress` after `completed` changed nothing that a reader sees.
    assert all(j["status"] == "completed" and j["result"]["video_url"] for j in seen)


def test_killed_worker_loses_no_job(kafka_bootstrap: str, tmp_path: Path) -> None:
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.2, "max": 0.6})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config) as stack:
        accepted = asyncio.run(fire(stack.api_url, 300, "wan-2.6"))
        ids = {a["job_id"] for a in accepted}

        async def some_done() -> bool:
            async with aiohttp.ClientSession() as session:
                stats = await simulator_stats(session, stack.simulator_url)
            return stats["wan"]["completed"] >= 30

        asyncio.run(until(some_done, timeout=60, what="the first jobs to complete"))
        stack.kill("worker-0")  # SIGKILL mid-run: no shutdown, no final commit
        stack.start_worker(1)
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=300)
        stats = asyncio.run(sim_stats(stack.simulator_url))
    assert set(finals) == ids
    assert {recs[-1]["status"] for recs in finals.values()} == {"completed"}
    assert stats["wan"]["max_concurrency"] <= 10, stats["wan"]
    # Re-submissions after the crash reuse the job's idempotency key instead of creating a second job.
    assert stats["wan"]["jobs_created"] == 300
