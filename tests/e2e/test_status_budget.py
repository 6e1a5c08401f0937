"""Status calls within a provider's read limit, on the running stack.

kling loses every webhook, so each job's end is found only by the late poll, and it allows four
status calls a second per API key (past that: 429). Ten jobs in flight and a poll tick of a
second would ask ten times a second; the routing file gives kling a read budget of three a
second, so the calls wait their turn: every job still completes, once, kling never answers a
status call 429, and no more calls reach it than the budget allows over the run.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from floodgate.devstack import Stack
from tests.e2e.stack_util import make_stack, routing_file, simulator_config
from tests.helpers import final_states, fire, sim_stats

pytestmark = pytest.mark.kafka

JOBS = 20
BUDGET = 3.0  # status calls a second, over both dispatch partitions
PROVIDER_LIMIT = 4.0  # what kling answers before its 429s


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("status-budget")
    sim = simulator_config(home / "sim.json", only={"kling": {
        "drop_rate": 1.0, "status_rate_per_second": PROVIDER_LIMIT,
        "render_time": {"kind": "fixed", "seconds": 0.3}}})
    routes = routing_file(home / "routes.json", {"wan": 10, "kling": 10}, status_rates={"kling": BUDGET})
    # A job quiet for a second is polled, every second (the tick is then a second too).
    with make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes), poll_after=1.0) as s:
        yield s


def test_every_job_is_found_by_status_calls_that_stay_within_the_read_budget(stack: Stack) -> None:
    started = time.monotonic()
    accepted = asyncio.run(fire(stack.api_url, JOBS, "kling-2.1"))
    ids = {a["job_id"] for a in accepted}
    finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=120)
    elapsed = time.monotonic() - started
    stats = asyncio.run(sim_stats(stack.simulator_url))["kling"]

    assert set(finals) == ids
    for job_id, records in finals.items():
        assert [r["status"] for r in records] == ["completed"], (job_id, records)
    assert stats["webhooks_sent"] == 0 and stats["jobs_created"] == JOBS, "only status calls found the ends"
    assert stats["status_rejected_429"] == 0, stats
    # Each partition's share starts with a burst of its own (max(1, 1.5) calls), then refills.
    assert 0 < stats["status_calls"] <= BUDGET * elapsed + 2 * 1.5, (stats["status_calls"], elapsed)
