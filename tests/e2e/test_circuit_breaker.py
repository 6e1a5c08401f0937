"""A provider's outage on the running stack: its circuit breaker opens, jobs go to the fallback,
the breaker half-opens after FLOODGATE_BREAKER_RESET_AFTER (one probe at a time), and once the
provider is healthy again its traffic comes back. Seen from the provider's side (the simulator's
counters over time) and from the worker's breaker gauge."""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.stack_util import TERMINAL, get_job, make_stack, routing_file, simulator_config, submit, until
from tests.helpers import scrape, simulator_stats, value

pytestmark = pytest.mark.kafka

OUTAGE = 4.0  # under the submit policy's max_outage_wait: without the breaker, jobs would wait it out
RESET = 1.0
THRESHOLD = 5  # the breaker's failure threshold (streams/lane.py)
EVERY = 0.2  # one job every EVERY seconds, for RUN seconds
RUN = OUTAGE + RESET + 2.5


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the outage began
    rejections: int  # the provider's 503s so far
    breaker_open: float  # the worker's gauge


@dataclass(frozen=True)
class Sent:
    at: float
    job: dict[str, Any]


class Watch:
    """Jobs sent at a steady pace while the provider and the worker are sampled."""

    def __init__(self, api: str, simulator: str, worker_metrics: str) -> None:
        self.api, self.simulator, self.worker_metrics = api, simulator, worker_metrics
        self.sent: list[Sent] = []
        self.samples: list[Sample] = []

    async def run(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{self.simulator}/_admin/wan/outage", json={"seconds": OUTAGE}) as resp:
            assert resp.status == 200, await resp.text()
        start = time.monotonic()
        done = asyncio.Event()
        sampler = asyncio.create_task(self.sample(session, start, done))
        for i in range(int(RUN / EVERY)):
            await asyncio.sleep(max(0.0, start + i * EVERY - time.monotonic()))  # a pace, not a wait
            accepted = await submit(session, self.api, {"model": "wan-2.6", "user_id": f"u{i}",
                                                        "input": {"prompt": f"p{i}"}})
            self.sent.append(Sent(time.monotonic() - start, accepted))
        done.set()
        await sampler

    async def sample(self, session: aiohttp.ClientSession, start: float, done: asyncio.Event) -> None:
        while not done.is_set():
            stats = await simulator_stats(session, self.simulator)
            gauge = value(await scrape(session, self.worker_metrics), "floodgate_provider_breaker_open",
                          provider="wan")
            self.samples.append(Sample(time.monotonic() - start, stats["wan"]["outage_rejections"], gauge))
            await asyncio.sleep(0.1)

    async def finals(self, session: aiohttp.ClientSession) -> list[tuple[float, dict[str, Any]]]:
        async def all_done() -> list[tuple[float, dict[str, Any]]] | None:
            jobs = [(s.at, await get_job(session, self.api, s.job["job_id"], s.job["token"])) for s in self.sent]
            return jobs if all(job["status"] in TERMINAL for _, job in jobs) else None

        result: list[tuple[float, dict[str, Any]]] = await until(all_done, timeout=30, what="every job to end")
        return result


async def scenario(api: str, simulator: str, worker_metrics: str) -> tuple[Watch, list[tuple[float, dict[str, Any]]]]:
    async with aiohttp.ClientSession() as session:
        warm = await submit(session, api, {"model": "wan-2.6", "user_id": "u", "input": {"prompt": "warm"}})

        async def warmed() -> bool:
            return (await get_job(session, api, warm["job_id"], warm["token"]))["status"] == "completed"

        await until(warmed, timeout=30, what="a first job on a healthy wan")
        watch = Watch(api, simulator, worker_metrics)
        await watch.run(session)
        finals = await watch.finals(session)

        async def closed() -> bool:
            got = await scrape(session, worker_metrics)
            return value(got, "floodgate_provider_breaker_open", provider="wan") == 0

        await until(closed, timeout=10, what="the breaker gauge to show the breaker closed again")
        return watch, finals


def test_an_outage_opens_the_breaker_and_traffic_returns_after_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    sim = simulator_config(tmp_path / "sim.json")
    routes = routing_file(tmp_path / "routes.json", {"wan": 10, "kling": 10})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=sim, routing_file=str(routes),
                    breaker_reset_after=RESET) as stack:
        watch, finals = asyncio.run(scenario(stack.api_url, stack.simulator_url, stack.metrics_urls["worker-0"]))

    assert {job["status"] for _, job in finals} == {"completed"}, finals
    served = [(at, job["provider"]) for at, job in finals]
    rejections = [s.rejections for s in watch.samples]
    # Open: the threshold's worth of 503s, then the breaker keeps jobs off wan.
    assert max(rejections) >= THRESHOLD, rejections
    opened = next(s.at for s in watch.samples if s.rejections >= THRESHOLD)
    assert opened < 2.5, f"the breaker took until {opened:.1f}s to open"
    assert any(s.breaker_open == 1 for s in watch.samples), "the worker's gauge never showed the breaker open"
    # Jobs sent while it is open go to the fallback at once (a 503 with a Retry-After this short
    # is otherwise waited out, on wan).
    during = [provider for at, provider in served if opened + 0.5 <= at <= OUTAGE - 1.0]
    assert during and set(during) == {"kling"}, served
    # Half-open: after each RESET, one probe (and only one) tries wan, so 503s grow at most one
    # per RESET once the breaker is open; some probe did fail during the outage.
    first_probe = next(s.at for s in watch.samples if s.rejections > THRESHOLD)
    assert RESET - 0.5 <= first_probe - opened <= RESET + 1.0, (opened, first_probe)
    after_open = [s for s in watch.samples if s.at >= opened]
    for early in after_open:
        for late in after_open:
            if late.at > early.at:
                assert late.rejections - early.rejections <= math.ceil((late.at - early.at) / RESET) + 1, \
                    (early, late)
    assert rejections[-1] > THRESHOLD and rejections[-1] <= THRESHOLD + math.ceil(OUTAGE / RESET) + 3, rejections
    # Healthy again: the first probe after the outage closes the breaker and wan has its traffic back.
    back = [provider for at, provider in served if at >= OUTAGE + RESET + 1.0]
    assert len(back) >= 5 and set(back) == {"wan"}, served
