"""Admission control on the running stack: while the API answers 429 (a tenant's queued-jobs quota)
and 503 (the backlog guard), every job it answered 202 still completes, exactly once, and nothing
it refused reaches ``requests``. (tests/integration/test_api_admission.py holds the refusals' exact
rules against an API alone; here the worker and the simulator run, so the jobs accepted are seen
to the end.)"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from floodgate import codec
from floodgate.devstack import Stack
from floodgate.settings import Secret
from tests.e2e.stack_util import make_stack, routing_file, simulator_config, until
from tests.helpers import final_states, provider_jobs, sim_stats
from tests.integration.api_helpers import aread_records, record_count

pytestmark = pytest.mark.kafka

QUOTA = 4
"""acme's queued-jobs quota."""
DEPTH = 8
"""The backlog guard's depth: past it, 503."""
BODY = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "a lighthouse"}}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("admission")
    sim = simulator_config(home / "sim.json", only={
        "kling": {"concurrency_limit": 2, "render_time": {"kind": "uniform", "min": 0.4, "max": 0.5}}})
    routes = routing_file(home / "routes.json", {"wan": 10, "kling": 2})
    with make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes), dispatch_partitions=1,
                    api_keys=Secret("key-a=acme,key-b=globex"), tenant_queued_limit=QUOTA,
                    tenant_queued_limits="globex=0", backlog_max_depth=DEPTH, backlog_refresh=0.2) as s:
        yield s


async def post(http: aiohttp.ClientSession, stack: Stack, key: str) -> tuple[int, dict[str, str], Any]:
    async with http.post(f"{stack.api_url}/v1/jobs", json=BODY, headers={"X-API-Key": key}) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def refused(answers: list[tuple[int, dict[str, str], Any]], status: int, problem: str) -> list[Any]:
    """The answers refused with ``status``, each checked to be the problem+json that says why and
    when to come back."""
    found = [(headers, body) for code, headers, body in answers if code == status]
    for headers, body in found:
        assert headers["Content-Type"].startswith("application/problem+json"), headers
        assert body["type"] == problem and int(headers["Retry-After"]) >= 1, (headers, body)
    return [body for _, body in found]


async def run(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        # acme bursts past its queued-jobs quota: exactly the quota is accepted, the rest refused.
        burst = await asyncio.gather(*(post(http, stack, "key-a") for _ in range(3 * QUOTA)))
        accepted = [body["job_id"] for code, _, body in burst if code == 202]
        assert len(accepted) == QUOTA, [code for code, _, _ in burst]
        assert len(refused(burst, 429, "urn:floodgate:problem:queued-quota")) == 2 * QUOTA
        # globex, without a quota, fills the line past the guard's depth: paced, so that the
        # guard's readings (every 0.2 s) catch up, until it sheds.
        shed: list[tuple[int, dict[str, str], Any]] = []
        for _ in range(200):
            answer = await post(http, stack, "key-b")
            if answer[0] == 202:
                accepted.append(answer[2]["job_id"])
            else:
                shed.append(answer)
                break
            await asyncio.sleep(0.02)  # pacing the load, not waiting for a state
        assert len(refused(shed, 503, "urn:floodgate:problem:backlog")) == 1, shed
        assert len(accepted) > QUOTA, "globex was served until the guard shed"

        # Every 202 completes, once; nothing refused reached Kafka.
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), set(accepted), timeout=90)
        assert {job: [s["status"] for s in states] for job, states in finals.items()} == {
            job: ["completed"] for job in accepted}
        topic = stack.settings.topic("requests")
        records = await aread_records(stack.bootstrap, topic, record_count(stack.bootstrap, topic))
        assert sorted(codec.decode("JobRequest", m.value(), m.headers())["job_id"] for m in records) == sorted(accepted)
        made = [job["job_id"] for job in await provider_jobs(stack.simulator_url, "kling")]
        assert sorted(made) == sorted(accepted), "one provider job per accepted job, none for a refused one"
        stats = await sim_stats(stack.simulator_url)
        assert stats["kling"]["max_concurrency"] <= 2 and stats["kling"]["duplicate_idempotency_keys"] == 0

        # With its jobs ended and the line drained, both are served again.
        async def served() -> bool:
            return (await post(http, stack, "key-a"))[0] == 202
        await until(served, timeout=30, what="acme served again once its jobs ended")
        assert (await post(http, stack, "key-b"))[0] == 202


def test_while_the_api_sheds_and_refuses_every_job_it_accepted_completes_once(stack: Stack) -> None:
    asyncio.run(run(stack))
