"""A backlog far larger than a worker's stream buffers, queued behind a full provider, must keep
flowing: the submitter waiting for slots may not stall the agents that free them."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.stack_util import make_stack, simulator_config
from tests.e2e.test_load_and_faults import _final_states, _fire, _stats

pytestmark = pytest.mark.kafka


def test_backlog_beyond_the_stream_buffer_keeps_flowing(kafka_bootstrap: str, tmp_path: Path) -> None:
    # 16 buffered records per agent, 600 jobs behind 10 slots: the dispatch stream overflows its
    # buffer many times over while every slot is taken, and releases must still get through.
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.05, "max": 0.15})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config, stream_buffer=16) as stack:
        accepted = asyncio.run(_fire(stack.api_url, 600, "wan-2.6"))
        ids = {a["job_id"] for a in accepted}
        finals = _final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=120)
        stats = asyncio.run(_stats(stack.simulator_url))
    assert set(finals) == ids, f"{len(ids) - len(finals)} of {len(ids)} jobs never finished"
    assert {recs[-1]["status"] for recs in finals.values()} == {"completed"}
    assert stats["wan"]["max_concurrency"] <= 10 and stats["wan"]["rejected_429"] == 0, stats["wan"]
