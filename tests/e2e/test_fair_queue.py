"""The waiting line on the running stack (broker, worker, API, simulator as the judge of who was
submitted when): fair share between tenants, weights, priority classes, and the place in line
and ETA a waiting job shows over GET, SSE and the WebSocket.

One stack for the module. wan (limit 6 here, short renders) carries the burst: tenant ``alpha``
sends N jobs at once, ``beta`` a few a moment later, then ``heavy`` (weight 3); meanwhile the
last of alpha's jobs is followed over GET, SSE and a WebSocket. Beta comes once the intake has
read alpha's burst (see ``run_burst``). kling (limit 2, renders of a minute) carries the
priority check: nothing leaves its slots unless the test cancels it, so the order in which the
line hands out slots is read exactly from the simulator's creation order.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from floodgate.devstack import Stack
from floodgate.provider_config import DEV_WEBHOOK_SECRET_REF
from floodgate.settings import Secret
from tests.e2e.queue_util import Accepted, Event, end_offsets, follow_sse, follow_ws, post_jobs
from tests.e2e.stack_util import TERMINAL, get_job, make_stack, simulator_config, until
from tests.helpers import provider_jobs, sim_stats
from tests.kafka_util import wait_consumed

pytestmark = pytest.mark.kafka

KEYS = {"alpha": "key-alpha", "beta": "key-beta", "heavy": "key-heavy", "vip": "key-vip"}
WAN_LIMIT = 6
KLING_LIMIT = 2
N, M, HEAVY = 600, 10, 60


def _routes(path: Path, limits: dict[str, int]) -> Path:
    conn = {"base_url": "env:FLOODGATE_SIMULATOR_URL", "api_key": "k", "webhook_secret": DEV_WEBHOOK_SECRET_REF}
    path.write_text(json.dumps({
        "providers": {name: {"kind": "simulator", "concurrency_limit": limit, "connection": conn}
                      for name, limit in limits.items()},
        "routes": {"wan-2.6": [{"provider": "wan"}], "kling-2.1": [{"provider": "kling"}]}}))
    return path


def fair_stack(kafka_bootstrap: str, home: Path, wan_limit: int, wan_render: dict[str, Any]) -> Stack:
    # The simulator allows twice Floodgate's limits, so its max_concurrency shows whether
    # Floodgate ever crossed its own. One dispatch partition: one line per provider.
    sim = simulator_config(home / "sim.json", only={
        "wan": {"concurrency_limit": 2 * wan_limit, "render_time": wan_render},
        "kling": {"concurrency_limit": 2 * KLING_LIMIT, "render_time": 60.0}})
    routes = _routes(home / "routes.json", {"wan": wan_limit, "kling": KLING_LIMIT})
    return make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes), dispatch_partitions=1,
                      api_keys=Secret(",".join(f"{key}={tenant}" for tenant, key in KEYS.items())),
                      tenant_weights="heavy=3", priority_grants="vip")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("fair")
    with fair_stack(kafka_bootstrap, home, WAN_LIMIT, {"kind": "uniform", "min": 0.1, "max": 0.2}) as s:
        yield s


def created_at(jobs: list[dict[str, Any]]) -> dict[str, float]:
    """Floodgate job id → when the simulator created its provider job."""
    return {job["job_id"]: job["created_at"] for job in jobs}


async def all_created(stack: Stack, provider: str, ids: set[str]) -> dict[str, float] | None:
    seen = created_at(await provider_jobs(stack.simulator_url, provider))
    return seen if ids <= seen.keys() else None


# -- the burst: fair share, weights, place in line -------------------------------------------------


@dataclass
class Burst:
    alpha: list[Accepted]
    beta: list[Accepted]
    heavy: list[Accepted]
    created: dict[str, float]
    """Job id → when the simulator created its provider job."""
    order: list[str]
    """Job ids in the simulator's creation order."""
    watched: Accepted
    polls: list[tuple[float, dict[str, Any]]]
    """The watched job as GET showed it (monotonic time, job), while it waited and once after."""
    events: list[Event]
    """The watched job's SSE events."""
    messages: list[Event]
    """The watched job's WebSocket messages."""
    started_at: float
    """Monotonic time at which the watched job's provider job was created (as GET first showed it
    out of line)."""
    wan: dict[str, Any]


async def watch(session: aiohttp.ClientSession, api: str, job: Accepted, *,
                timeout: float) -> list[tuple[float, dict[str, Any]]]:
    """GET ``job`` about twice a second until it has left the line."""
    polls: list[tuple[float, dict[str, Any]]] = []

    async def left() -> bool:
        found = await get_job(session, api, job.job_id, job.token)
        polls.append((time.monotonic(), found))
        return found["status"] != "queued"

    await until(left, timeout=timeout, what=f"{job.job_id} to leave the line", interval=0.5)
    return polls


async def run_burst(stack: Stack, n: int, m: int, heavy_n: int, *, timeout: float) -> Burst:
    api = stack.api_url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:
        alpha = await post_jobs(session, api, KEYS["alpha"], "alpha", n, "wan-2.6")
        # Beta comes once the intake has read alpha's burst: the requests topic before the line
        # is first come, first served (a burst takes it about 1.5 ms a job to read); the line
        # is what shares the provider.
        await asyncio.to_thread(wait_consumed, stack.bootstrap, stack.settings.app_id,
                                stack.settings.topic("requests"), timeout=timeout)
        beta = await post_jobs(session, api, KEYS["beta"], "beta", m, "wan-2.6")
        await until(lambda: all_created(stack, "wan", {a.job_id for a in beta}), timeout=timeout,
                    what="every beta job to start", interval=0.3)
        # All at once, so heavy's jobs are in line together as soon as they can be (see the weight test).
        heavy = await post_jobs(session, api, KEYS["heavy"], "heavy", heavy_n, "wan-2.6", concurrency=heavy_n)
        await until(lambda: all_created(stack, "wan", {a.job_id for a in heavy}), timeout=timeout,
                    what="every heavy job to start", interval=0.3)
        # Nobody arrives any more: the last of alpha's jobs only moves up from here.
        watched = alpha[-1]
        follower = asyncio.create_task(follow_sse(session, api, watched, timeout=timeout))
        socket = asyncio.create_task(follow_ws(session, api, watched, timeout=timeout))
        polls = await watch(session, api, watched, timeout=timeout)
        started_at = polls[-1][0]
        events, messages = await follower, await socket
        ids = {a.job_id for a in alpha + beta + heavy}
        created = await until(lambda: all_created(stack, "wan", ids), timeout=timeout,
                              what="every job to start", interval=0.5)


        async def all_completed() -> list[dict[str, Any]] | None:
            jobs = await provider_jobs(stack.simulator_url, "wan")
            return jobs if all(job["status"] == "completed" for job in jobs) else None

        jobs = await until(all_completed, timeout=timeout, what="every job to complete", interval=0.3)
    wan = (await sim_stats(stack.simulator_url))["wan"]
    return Burst(alpha, beta, heavy, created, [job["job_id"] for job in jobs], watched, polls, events, messages,
                 started_at, wan)


@pytest.fixture(scope="module")
def burst(stack: Stack) -> Burst:
    return asyncio.run(run_burst(stack, N, M, HEAVY, timeout=90))


def median_wait(jobs: list[Accepted], created: dict[str, float]) -> float:
    return statistics.median(created[a.job_id] - a.accepted_at for a in jobs)


def assert_fair(alpha: list[Accepted], beta: list[Accepted], created: dict[str, float]) -> tuple[float, float]:
    a_wait, b_wait = median_wait(alpha, created), median_wait(beta, created)
    beta_waits = sorted(round(created[a.job_id] - a.accepted_at, 2) for a in beta)
    assert b_wait < 0.10 * a_wait, (
        f"beta's median wait {b_wait:.2f}s is not under 10% of alpha's {a_wait:.2f}s: beta waited behind the burst "
        f"(beta's waits {beta_waits})")
    return a_wait, b_wait


def test_a_tenant_arriving_behind_a_burst_is_served_alongside_it(burst: Burst) -> None:
    a_wait, b_wait = assert_fair(burst.alpha, burst.beta, burst.created)
    # Interleaved, not first: beta did not jump the whole line either (alpha's jobs kept
    # starting while beta's were served).
    order = burst.order
    beta_ids = {a.job_id for a in burst.beta}
    positions = [i for i, job_id in enumerate(order) if job_id in beta_ids]
    between = order[positions[0]:positions[-1] + 1]
    assert sum(job_id not in beta_ids for job_id in between) >= len(burst.beta) // 2, between
    assert burst.wan["max_concurrency"] <= WAN_LIMIT and burst.wan["rejected_429"] == 0, burst.wan
    # No deadline here: alpha's jobs waited up to half a minute and every one completed, once.
    assert burst.wan["completed"] == burst.wan["jobs_created"] == len(burst.alpha + burst.beta + burst.heavy)
    print(f"median wait: alpha {a_wait:.2f}s, beta {b_wait:.2f}s")


def test_a_tenant_with_weight_three_gets_three_starts_for_each_of_another(burst: Burst) -> None:
    heavy_ids, alpha_ids = {a.job_id for a in burst.heavy}, {a.job_id for a in burst.alpha}
    order = burst.order
    spots = [i for i, job_id in enumerate(order) if job_id in heavy_ids]
    # While heavy waited (from its first start to its last), alpha was the only other tenant
    # waiting (beta was served before heavy came).
    window = order[spots[0]:spots[-1] + 1]
    heavy, alpha = sum(j in heavy_ids for j in window), sum(j in alpha_ids for j in window)
    assert heavy == len(burst.heavy)
    # Three to one while both have jobs in line: 60:19 on a quiet machine. The window opens at
    # heavy's first start, while the rest of its burst is still on its way to the line (admitted
    # one by one, then read from dispatch.wan), and the line gives those moments' slots to alpha,
    # which can only lower the ratio. When the slots held alone decided, 3:1 of 6 slots stayed at
    # 4 and 2 held: 60:29 quiet, 60:31 in a loaded CI run (FairLine now goes by turns once each
    # holds its share's whole slots). With equal weights it would be about 1:1.
    assert alpha > 0 and 2.0 <= heavy / alpha <= 4.5, f"heavy {heavy} : alpha {alpha} while both waited"
    print(f"while both waited: heavy {heavy} starts, alpha {alpha}")


def test_a_waiting_job_shows_its_place_and_eta_moving(burst: Burst) -> None:
    waiting = [(at, job) for at, job in burst.polls if job["status"] == "queued"]
    assert len(waiting) >= 3, burst.polls
    places = [job["queue_position"] for _, job in waiting]
    assert all(isinstance(p, int) and p >= 0 for p in places), places
    assert places == sorted(places, reverse=True) and places[0] > places[-1], f"not moving up: {places}"
    # The board has seen starts by now: every GET carries an ETA, ready after started.
    etas = [job["eta_seconds"] for _, job in waiting]
    assert all(isinstance(e, int | float) and e >= 0 for e in etas), etas
    assert all(job["eta_ready_seconds"] >= job["eta_seconds"] for _, job in waiting), waiting
    assert etas[-1] < etas[0], f"the ETA did not come down: {etas}"
    # The first ETA is an estimate: within a factor of three of the wait that followed.
    first_at, first = waiting[0]
    took = burst.started_at - first_at
    assert first["eta_seconds"] / 3 <= took <= first["eta_seconds"] * 3 + 2, (first["eta_seconds"], took)
    # Out of line: no place, no wait.
    after = burst.polls[-1][1]
    assert after["status"] != "queued" and after["queue_position"] is None and after["eta_seconds"] is None, after
    print(f"first GET: place {places[0]}, eta {first['eta_seconds']}s; it started after {took:.1f}s")


def assert_place_updates(events: list[Event], channel: str) -> None:
    """The same state told again, each time with a better place; bounded; no place once out."""
    queued = [e for e in events if e.job["status"] == "queued"]
    assert len(queued) >= 3, [(e.version, e.job["status"], e.job["queue_position"]) for e in events]
    # No new state: the same snapshot (version over SSE, updated_at on both) each time.
    assert len({e.version for e in queued}) == 1 and len({e.job["updated_at"] for e in queued}) == 1, queued
    places = [e.job["queue_position"] for e in queued]
    assert all(later < earlier for earlier, later in zip(places, places[1:], strict=False)), places
    # Bounded: fewer updates than places moved, and not more than about two a second.
    moved = places[0] - places[-1]
    span = queued[-1].at - queued[0].at
    assert len(queued) - 1 < moved, (len(queued), moved)
    assert len(queued) - 1 <= 2 * span + 2, f"{len(queued)} updates in {span:.1f}s"
    # Once submitted, no place.
    out = [e for e in events if e.job["status"] != "queued"]
    assert out and all(e.job["queue_position"] is None for e in out), [e.job for e in out]
    assert out[-1].job["status"] in TERMINAL
    print(f"{channel}: {len(queued)} place updates over {span:.1f}s while the place went {places[0]} -> {places[-1]}")


def test_a_subscriber_hears_the_place_move_without_a_storm(burst: Burst) -> None:
    assert_place_updates(burst.events, "SSE")


def test_a_websocket_subscriber_hears_the_same(burst: Burst) -> None:
    assert_place_updates(burst.messages, "WebSocket")


# -- priority classes -------------------------------------------------------------------------------


async def drain_one_by_one(session: aiohttp.ClientSession, stack: Stack, jobs: dict[str, Accepted],
                           count: int) -> list[str]:
    """Cancel kling's running jobs one at a time until ``count`` of ``jobs`` have been created
    there: each cancel frees one slot, which the line hands to its next order. Returns the
    creation order."""
    cancelled: set[str] = set()
    while True:
        seen = await provider_jobs(stack.simulator_url, "kling")
        order = [job["job_id"] for job in seen if job["job_id"] in jobs]
        if len(order) >= count:
            break
        running = [job_id for job_id in order if job_id not in cancelled]
        assert running, f"nothing running at kling and not every job created: {order}"
        oldest = running[0]
        job = jobs[oldest]
        async with session.post(f"{stack.api_url}/v1/jobs/{oldest}/cancel",
                                headers={"Authorization": f"Bearer {job.token}"}) as resp:
            assert resp.status == 202, await resp.text()
        cancelled.add(oldest)

        async def next_created(before: int = len(order)) -> bool:
            seen = await provider_jobs(stack.simulator_url, "kling")
            return sum(j["job_id"] in jobs for j in seen) > before

        await until(next_created, timeout=30, what="the freed slot to go to the next order")
    for job_id in order:
        if job_id not in cancelled:
            async with session.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel",
                                    headers={"Authorization": f"Bearer {jobs[job_id].token}"}) as resp:
                assert resp.status == 202, await resp.text()
    return order


async def test_high_goes_before_waiting_standard_jobs_and_low_after_all_of_them(stack: Stack) -> None:
    api, model = stack.api_url, "kling-2.1"
    topic = stack.settings.topic("dispatch.kling")
    async with aiohttp.ClientSession() as session:
        running = await post_jobs(session, api, KEYS["alpha"], "alpha", KLING_LIMIT, model)
        await until(lambda: all_created(stack, "kling", {a.job_id for a in running}), timeout=30,
                    what="kling's slots to fill")
        early = await post_jobs(session, api, KEYS["alpha"], "alpha", 3, model, concurrency=1)
        low = await post_jobs(session, api, KEYS["beta"], "beta", 1, model, priority="low")
        late = await post_jobs(session, api, KEYS["alpha"], "alpha", 2, model, concurrency=1)
        high = await post_jobs(session, api, KEYS["vip"], "vip", 1, model, priority="high")
        everyone = running + early + low + late + high
        # Every order is in the line (its dispatch record consumed, i.e. parked) before a slot frees.
        await until(lambda: _at_least(stack.bootstrap, topic, len(everyone)), timeout=30,
                    what=f"{len(everyone)} orders on {topic}")
        await asyncio.to_thread(wait_consumed, stack.bootstrap, stack.settings.app_id, topic)
        # The API's board agrees: high is next, low is behind every standard job.
        await until(lambda: _place_is(session, api, high[0], 0), timeout=30, what="high to show place 0")
        await until(lambda: _place_is(session, api, low[0], len(everyone) - KLING_LIMIT - 1), timeout=30,
                    what="low to show the last place")
        order = await drain_one_by_one(session, stack, {a.job_id: a for a in everyone}, len(everyone))
        kling = (await sim_stats(stack.simulator_url))["kling"]
    first = {a.job_id for a in running}
    assert set(order[:KLING_LIMIT]) == first, order
    # One tenant's jobs go by acceptance (posted one after another), although they were admitted
    # from different `requests` partitions and reached the line in whatever order admission took.
    standard = [a.job_id for a in early + late]
    expected = [high[0].job_id, *standard, low[0].job_id]
    names = {a.job_id: f"{a.tenant}#{i}" for i, a in enumerate(everyone)}
    assert order[KLING_LIMIT:] == expected, (
        f"served {[names[j] for j in order]}, expected high first and low last: {[names[j] for j in expected]}")
    assert kling["max_concurrency"] <= KLING_LIMIT, kling


async def _place_is(session: aiohttp.ClientSession, api: str, job: Accepted, place: int) -> dict[str, Any] | None:
    found = await get_job(session, api, job.job_id, job.token)
    return found if found["queue_position"] == place else None


async def _at_least(bootstrap: str, topic: str, n: int) -> bool:
    return await asyncio.to_thread(end_offsets, bootstrap, topic) >= n


# -- the issue's own figures ------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_jobs_of_one_tenant_do_not_hold_up_a_hundred_of_another(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    with fair_stack(kafka_bootstrap, tmp_path, 10, {"kind": "uniform", "min": 0.03, "max": 0.06}) as big:
        result = asyncio.run(run_burst(big, 10_000, 100, 300, timeout=600))
    a_wait, b_wait = assert_fair(result.alpha, result.beta, result.created)
    assert result.wan["max_concurrency"] <= 10 and result.wan["rejected_429"] == 0, result.wan
    print(f"10,000 + 100: median wait alpha {a_wait:.1f}s, beta {b_wait:.2f}s")
