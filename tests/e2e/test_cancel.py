"""Users cancel jobs (``POST /v1/jobs/{id}/cancel``) on the real broker, simulator and processes:
a running job is cancelled at the provider and gives its slot to the next job; a job waiting
behind full slots ends cancelled without ever reaching the provider.

Floodgate's wan limit is 2 (one dispatch partition) while the simulator would allow 4, so the
simulator's ``max_concurrency`` shows whether Floodgate ever had more than 2 jobs there (e.g. by
freeing a cancelled job's slot before the provider let go of it). Renders take 120 s: within a
test, nothing finishes unless it is cancelled.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from floodgate.devstack import Stack
from floodgate.provider_config import DEV_WEBHOOK_SECRET_REF
from tests.e2e.stack_util import get_job, make_stack, simulator_config, submit, until
from tests.helpers import scrape, simulator_stats, value

pytestmark = pytest.mark.kafka

LIMIT = 2
WAN = {"model": "wan-2.6", "user_id": "u-cancel", "input": {"prompt": "a slow render"}}
LIVE = {"submitted", "running"}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("cancel")
    sim = simulator_config(home / "sim.json", concurrency_limit=2 * LIMIT, render_time=120.0)
    routes = home / "routes.json"
    conn = {"base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": "k", "webhook_secret": DEV_WEBHOOK_SECRET_REF}
    routes.write_text(json.dumps({
        "providers": {"wan": {"kind": "simulator", "concurrency_limit": LIMIT, "connection": conn}},
        "routes": {"wan-2.6": [{"provider": "wan"}]}}))
    with make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes), dispatch_partitions=1) as s:
        yield s


@pytest.fixture
async def session(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        # Each test starts with wan idle (the previous one cancels what it started).
        await until(lambda: _idle(s, stack), timeout=30, what="wan to be idle")
        yield s


async def _wan(session: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    return (await simulator_stats(session, stack.simulator_url))["wan"]


async def _idle(session: aiohttp.ClientSession, stack: Stack) -> bool:
    return (await _wan(session, stack))["in_flight"] == 0


async def _cancel(session: aiohttp.ClientSession, stack: Stack, job: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{stack.api_url}/v1/jobs/{job['job_id']}/cancel",
                            headers={"Authorization": f"Bearer {job['token']}"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def _status(session: aiohttp.ClientSession, stack: Stack, job: dict[str, Any], wanted: set[str],
                  timeout: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await get_job(session, stack.api_url, job["job_id"], job["token"])
        return found if found["status"] in wanted else None

    return await until(check, timeout=timeout, what=f"{job['job_id']} to be {'/'.join(sorted(wanted))}")


async def _created(session: aiohttp.ClientSession, stack: Stack, count: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        wan = await _wan(session, stack)
        return wan if wan["jobs_created"] >= count else None

    return await until(check, timeout=30, what=f"{count} jobs created at wan")


async def _queue_depth(session: aiohttp.ClientSession, stack: Stack, wanted: float) -> None:
    async def check() -> bool:
        return value(await scrape(session, stack.metrics_urls["worker-0"]), "floodgate_queue_depth",
                     provider="wan") == wanted

    await until(check, timeout=30, what=f"wan's queue depth to be {wanted}")


async def _fill_slots(session: aiohttp.ClientSession, stack: Stack) -> list[dict[str, Any]]:
    """LIMIT jobs rendering at wan: every slot taken."""
    base = (await _wan(session, stack))["jobs_created"]
    running = [await submit(session, stack.api_url, WAN) for _ in range(LIMIT)]
    for job in running:
        await _status(session, stack, job, LIVE)
    await _created(session, stack, base + LIMIT)
    return running


async def test_a_running_job_is_cancelled_at_the_provider_and_its_slot_goes_to_the_next_job(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    before = await _wan(session, stack)
    first, second = await _fill_slots(session, stack)
    waiting = await submit(session, stack.api_url, WAN)
    await _queue_depth(session, stack, 1)  # its order is on Kafka, waiting for a slot
    assert (await _wan(session, stack))["jobs_created"] == before["jobs_created"] + LIMIT

    status, body = await _cancel(session, stack, first)
    assert status == 202, body
    assert body["job_id"] == first["job_id"] and body["status"] in LIVE  # the state the 202 found
    cancelled = await _status(session, stack, first, {"cancelled", "completed", "failed"})
    assert cancelled["status"] == "cancelled" and cancelled["result"] is None, cancelled

    # The provider job is cancelled, and the freed slot goes to the waiting job while the other
    # render (120 s) still runs: only the cancel can have freed it.
    wan = await _created(session, stack, before["jobs_created"] + LIMIT + 1)
    assert wan["cancelled"] == before["cancelled"] + 1, wan
    assert (await _status(session, stack, waiting, LIVE))["status"] in LIVE
    assert (await get_job(session, stack.api_url, second["job_id"], second["token"]))["status"] in LIVE
    assert wan["max_concurrency"] <= LIMIT and wan["rejected_429"] == before["rejected_429"], wan
    await _queue_depth(session, stack, 0)

    # Cancelling it again is harmless: a 202 (the 409 is for completed and failed jobs).
    again, body = await _cancel(session, stack, first)
    assert again == 202 and body["status"] == "cancelled"

    for job in (second, waiting):
        assert (await _cancel(session, stack, job))[0] == 202
    for job in (second, waiting):
        assert (await _status(session, stack, job, {"cancelled"}))["status"] == "cancelled"
    await until(lambda: _idle(session, stack), timeout=30, what="every wan job to be cancelled")
    after = await _wan(session, stack)
    assert after["cancelled"] == before["cancelled"] + 3 and after["completed"] == before["completed"], after
    assert after["max_concurrency"] <= LIMIT, after


async def test_a_job_cancelled_while_waiting_for_a_slot_never_reaches_the_provider(
        stack: Stack, session: aiohttp.ClientSession) -> None:
    before = await _wan(session, stack)
    running = await _fill_slots(session, stack)
    doomed = await submit(session, stack.api_url, WAN)
    await _queue_depth(session, stack, 1)  # admitted and dispatched: its order waits for a slot

    status, body = await _cancel(session, stack, doomed)
    assert status == 202 and body["status"] == "queued", body
    assert (await _status(session, stack, doomed, {"cancelled", "submitted", "running"}))["status"] == "cancelled"
    # Its order is acknowledged although it never got a slot (else the partition's commits
    # would be stuck behind it).
    await _queue_depth(session, stack, 0)
    assert (await _cancel(session, stack, doomed))[0] == 202  # cancelling twice is harmless

    # Free a slot, then send one more job: if the cancelled job's order were still around, it
    # would be first in line and reach the provider before the newcomer.
    assert (await _cancel(session, stack, running[0]))[0] == 202
    newcomer = await submit(session, stack.api_url, WAN)
    await _status(session, stack, newcomer, LIVE)
    wan = await _created(session, stack, before["jobs_created"] + LIMIT + 1)
    assert wan["jobs_created"] == before["jobs_created"] + LIMIT + 1, "the cancelled job was submitted"
    assert wan["duplicate_idempotency_keys"] == before["duplicate_idempotency_keys"], wan
    doomed_now = await get_job(session, stack.api_url, doomed["job_id"], doomed["token"])
    assert doomed_now["status"] == "cancelled" and doomed_now["result"] is None, doomed_now

    for job in (running[1], newcomer):
        assert (await _cancel(session, stack, job))[0] == 202
    await until(lambda: _idle(session, stack), timeout=30, what="every wan job to be cancelled")
    after = await _wan(session, stack)
    assert after["jobs_created"] == before["jobs_created"] + LIMIT + 1, after
    assert after["max_concurrency"] <= LIMIT, after
