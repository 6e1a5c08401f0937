"""An Idempotency-Key reused with another body is a 422 on every ingress-only API process, on the
real broker: such a process has no job view, so it learns every process's keyed requests from
``requests`` (their hash rides in a header), including those accepted before it started."""
from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from floodgate import codec
from floodgate.api.ingress import DEFAULT_TENANT
from floodgate.api.server import ApiServer
from floodgate.ids import job_id_for_key
from floodgate.ops.replay_cli import Replay, add_arguments, plan_from
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.validation import REQUEST_HASH_HEADER
from tests.integration.api_helpers import DEV_SIMULATOR, aread_records, record_count, running_api
from tests.integration.test_api_quota_instances import until

pytestmark = pytest.mark.kafka

BODY: dict[str, Any] = {"model": "kling-2.1", "user_id": "u1",
                        "input": {"prompt": "a lighthouse in a storm", "params": {"duration": "5"}}}
KEY = "order-ingress-only"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def post(http: aiohttp.ClientSession, api: ApiServer, body: dict[str, Any],
               key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    async with http.post(f"{api.url}/v1/jobs", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def learned(api: ApiServer, count: int) -> None:
    reader = api.keyed
    assert api.view is None and reader is not None
    await until(lambda: reader.learned >= count, f"{count} keyed requests read by {api.url}")


async def answers_as_the_first_process_did(http: aiohttp.ClientSession, api: ApiServer, job_id: str) -> None:
    # Same tenant, user and model: only the prompt, or only a param, differs.
    for body in ({**BODY, "input": {**BODY["input"], "prompt": "a lighthouse in fog"}},
                 {**BODY, "input": {**BODY["input"], "params": {"duration": "10"}}}):
        status, problem = await post(http, api, body)
        assert status == 422, problem
        assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"]
    status, again = await post(http, api, BODY)  # a true retry
    assert (status, again["job_id"]) == (202, job_id)


async def test_a_key_reused_with_another_body_is_422_on_every_ingress_only_process(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR)
    topic = TopicNames(settings).requests
    async with running_api(settings, roles={"ingress"}) as first, running_api(settings, roles={"ingress"}) as other:
        status, accepted = await post(http, first, BODY)
        assert status == 202
        status, unkeyed = await post(http, first, BODY, key=None)
        assert status == 202
        await learned(other, 1)
        await answers_as_the_first_process_did(http, other, accepted["job_id"])
        await answers_as_the_first_process_did(http, first, accepted["job_id"])
    async with running_api(settings, roles={"ingress"}) as restarted:  # a new process: read back from requests
        await learned(restarted, 1)
        await answers_as_the_first_process_did(http, restarted, accepted["job_id"])
        assert restarted.keyed is not None and restarted.keyed.learned == 1  # the unkeyed request taught nothing
    # Only the two first requests were written: every retry and every 422 was answered from memory.
    records = await aread_records(settings.kafka_bootstrap, topic, record_count(settings.kafka_bootstrap, topic))
    by_id = {codec.decode("JobRequest", m.value(), m.headers())["job_id"]: dict(m.headers()) for m in records}
    assert sorted(by_id) == sorted([accepted["job_id"], unkeyed["job_id"]])
    assert REQUEST_HASH_HEADER in by_id[accepted["job_id"]]
    assert REQUEST_HASH_HEADER not in by_id[unkeyed["job_id"]]


async def test_a_key_first_sent_by_floodgate_replay_is_422_with_another_body(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A keyed request replayed from a file (the dead-letter topic's records go the same way) is
    learned like one the ingress accepted: ``floodgate replay`` writes its hash header too."""
    settings = settings_for(simulator_url=DEV_SIMULATOR)
    job_id = job_id_for_key(settings.secret.reveal().encode("utf-8"), DEFAULT_TENANT, KEY)
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(orjson.dumps({**BODY, "job_id": job_id, "idempotency_key": KEY}) + b"\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--file", str(path), "--no-progress", "--timeout", "20"])
    async with running_api(settings, roles={"ingress"}) as api:
        assert await Replay(plan_from(args, settings, None), args).run() == 0
        await learned(api, 1)
        await answers_as_the_first_process_did(http, api, job_id)
