"""A worker restarted in order (SIGTERM, then the same worker id again): with
``FLOODGATE_LEAVE_ON_STOP`` off it comes back into the group's generation as it left it, so a
deploy rebalances nobody; with it on (the default) it leaves as it stops and the group rebalances.
Real worker processes on a real broker; the generations are read from the workers' own logs."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from floodgate.devstack import Child, Stack
from tests.e2e.stack_util import make_stack, simulator_config
from tests.helpers import final_states, fire

pytestmark = pytest.mark.kafka

JOINED = re.compile(r"Joined group '[^']*' \(generation (\d+)\)")


def generations(child: Child) -> list[int]:
    """The generations this run of ``child`` joined, in order (aiokafka logs each join)."""
    with open(child.log, "rb") as log:
        log.seek(child.log_start)
        text = log.read().decode(errors="replace")
    return [int(g) for g in JOINED.findall(text)]


def log_of(child: Child) -> str:
    """What ``child`` logged from its start (and any run after it, appended to the same file)."""
    with open(child.log, "rb") as log:
        log.seek(child.log_start)
        return log.read().decode(errors="replace")


def restart(stack: Stack, name: str) -> Child:
    """SIGTERM ``name`` (an orderly stop: Faust commits and closes), then start it again."""
    stack.stop_child(name)
    return stack.start_worker(int(name.rsplit("-", 1)[1]))


def test_a_restart_without_the_leave_rebalances_nobody_and_with_it_the_group_moves(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # Long enough that the restarted worker is back within it even on a loaded machine.
    with make_stack(kafka_bootstrap, tmp_path, sim_config=simulator_config(tmp_path / "sim.json"), workers=2,
                    leave_on_stop=False, session_timeout=30.0) as stack:
        before = max(generations(stack.children["worker-0"]) + generations(stack.children["worker-1"]))
        worker_0_joins = len(generations(stack.children["worker-0"]))

        first = stack.children["worker-1"]
        # Its successor is started with the default, for the second half below.
        stack.settings = stack.settings.with_overrides(leave_on_stop=True)
        back = restart(stack, "worker-1")
        assert generations(back) == [before], "back under its name into the same generation"
        assert len(generations(stack.children["worker-0"])) == worker_0_joins, "worker-0 did not rejoin"
        assert "left group" not in log_of(first)  # (from its start on, the restart's run included)
        # The restarted worker serves its partitions again: jobs on both workers' partitions end.
        ids = {a["job_id"] for a in asyncio.run(fire(stack.api_url, 40, "wan-2.6"))}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=120)
        assert {recs[-1]["status"] for recs in finals.values()} == {"completed"} and set(finals) == ids

        # The default: the stopping worker leaves, the other takes its partitions, and the
        # restarted one joins a later generation.
        again = restart(stack, "worker-1")
        assert "static member worker-1 left group" in log_of(back)
        assert generations(again) and generations(again)[0] > before, "a rebalance: a new generation"
