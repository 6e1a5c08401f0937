"""An Idempotency-Key reused with another body is a 422 on whichever API instance answers, and
after a restart: the worker's snapshots carry the first request's hash, so a second instance (or
the same one restarted, with an empty cache) compares hashes, not the few fields a job shows.

The stack's API process accepts the first request; a second API, in this process, answers the
retries, once before and once after a restart.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from floodgate.api.server import ApiServer
from floodgate.topics import TopicNames
from tests.e2e.stack_util import TERMINAL, get_job, make_stack, simulator_config, submit, until
from tests.integration.api_helpers import record_count, running_api

pytestmark = pytest.mark.kafka

BODY: dict[str, Any] = {"model": "kling-2.1", "user_id": "u1",
                        "input": {"prompt": "a lighthouse in a storm", "params": {"duration": "5"}}}
KEY = {"Idempotency-Key": "order-cross-instance"}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    home = tmp_path_factory.mktemp("idem")
    with make_stack(kafka_bootstrap, home, sim_config=simulator_config(home / "sim.json")) as s:
        yield s


async def _conflict(session: aiohttp.ClientSession, api: str, body: dict[str, Any]) -> None:
    async with session.post(f"{api}/v1/jobs", json=body, headers=KEY) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 422, problem
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"]


async def _knows(api: ApiServer, job_id: str) -> bool:
    """Whether the instance's view holds the worker's snapshot of the job (not its own guess)."""
    assert api.view is not None
    seen = await api.view.lookup(job_id)
    return seen is not None and seen["version"] >= 1


async def _answers_as_the_first_instance_did(session: aiohttp.ClientSession, api: ApiServer,
                                             first: dict[str, Any]) -> None:
    await until(lambda: _knows(api, first["job_id"]), timeout=30, what="the job's snapshot in the second view")
    # Same tenant, user, model, metadata: only the prompt, or only a param, differs.
    await _conflict(session, api.url, {**BODY, "input": {**BODY["input"], "prompt": "a lighthouse in fog"}})
    await _conflict(session, api.url, {**BODY, "input": {**BODY["input"], "params": {"duration": "10"}}})
    again = await submit(session, api.url, BODY, **KEY)  # a true retry
    assert again["job_id"] == first["job_id"]


async def test_key_reused_with_another_body_is_422_on_another_instance_and_after_restart(stack) -> None:
    settings = stack.settings.with_overrides(kafka_bootstrap=stack.bootstrap, simulator_url=stack.simulator_url,
                                             allow_private_webhooks=True)
    async with aiohttp.ClientSession() as session:
        first = await submit(session, stack.api_url, BODY, **KEY)
        async with running_api(settings) as other:
            await _answers_as_the_first_instance_did(session, other, first)
        async with running_api(settings) as restarted:  # a fresh process: empty cache, view rebuilt
            await _answers_as_the_first_instance_did(session, restarted, first)

        async def finished() -> dict[str, Any] | None:
            job = await get_job(session, stack.api_url, first["job_id"], first["token"])
            return job if job["status"] in TERMINAL else None

        assert (await until(finished, timeout=60, what="the job to finish"))["status"] == "completed"
    assert record_count(stack.bootstrap, TopicNames(stack.settings).requests) == 1
