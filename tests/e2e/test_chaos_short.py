"""The chaos suite's short variant, in the default run: the worker-kill scenario at a small size
(two workers, a few hundred jobs, one of them SIGKILLed 2 s in and started again), judged by the
same checker. One kill: a worker takes longer to restart on a busy two-core machine than this
run lasts."""
from __future__ import annotations

from pathlib import Path

import pytest

from floodgate.chaos.scenarios import Plan, kill_random_worker, run_scenario
from tests.kafka_util import unique_name

pytestmark = pytest.mark.kafka


def test_killing_workers_loses_nothing_and_holds_the_limit(kafka_bootstrap: str, tmp_path: Path) -> None:
    plan = Plan("worker-kill-short", "a random worker SIGKILLed 2 s in", jobs=250, rate=50.0, workers=2,
                fault_every=2.0, extra={"kills": 1})
    verdict = run_scenario(plan, kill_random_worker, tmp_path, kafka_bootstrap, unique_name("chaos") + ".")
    assert verdict.recoveries, "no worker was killed before the run drained: the scenario proved nothing"
    assert verdict.accepted == verdict.terminal == 250
    assert (verdict.lost, verdict.stuck, verdict.duplicated, verdict.over_limit) == ([], [], {}, {})
    assert verdict.passed, verdict
    assert all(r.to_next_completion is not None for r in verdict.recoveries), verdict.recoveries
