"""A deployment no provider can call back (no FLOODGATE_WEBHOOK_BASE_URL: a laptop, a closed
network), on the running stack: every job is followed with a status call each
FLOODGATE_PROVIDER_STATUS_POLL seconds from its submission, so its end is found within a round
or two, not FLOODGATE_POLL_AFTER seconds (here 30) after its slot was taken.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from floodgate.devstack import Stack
from tests.e2e.stack_util import make_stack, simulator_config
from tests.helpers import final_states, fire, sim_stats

pytestmark = pytest.mark.kafka

JOBS = 10
POLL_AFTER = 30.0
STATUS_POLL = 0.5


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("no-webhooks")
    sim = simulator_config(home / "sim.json", render_time={"kind": "fixed", "seconds": 0.3})
    s = make_stack(kafka_bootstrap, home, sim_config=sim, poll_after=POLL_AFTER, provider_status_poll=STATUS_POLL)
    s.extra_env["FLOODGATE_WEBHOOK_BASE_URL"] = ""  # (the stack would point providers at its bridge)
    with s:
        yield s


def test_without_webhooks_each_end_is_found_by_following_not_by_the_late_poll(stack: Stack) -> None:
    accepted = asyncio.run(fire(stack.api_url, JOBS, "kling-2.1"))
    ids = {a["job_id"] for a in accepted}
    finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=2 * POLL_AFTER)
    stats = asyncio.run(sim_stats(stack.simulator_url))["kling"]

    assert set(finals) == ids
    took = {}
    for job_id, records in finals.items():
        assert [r["status"] for r in records] == ["completed"], (job_id, records)
        took[job_id] = (records[0]["updated_at"] - records[0]["created_at"]) / 1000
    assert stats["webhooks_sent"] == stats["webhooks_dropped"] == 0, "no job named a webhook URL"
    assert stats["status_calls"] > 0
    assert max(took.values()) < POLL_AFTER / 3, f"ends found by the late poll, not by following: {took}"
