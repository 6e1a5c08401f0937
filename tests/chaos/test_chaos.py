"""``make chaos``: every scenario of ``floodgate/chaos/scenarios.py`` against real processes, one
report row each in ``chaos/results/<ts>/``; a scenario passes when the checker's bar is met.

``CHAOS_JOBS`` sizes the worker-kill scenario (20,000 by default; the others scale from it);
``CHAOS_RESULTS`` adds the rows to an existing results directory.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from floodgate.chaos.report import record
from floodgate.chaos.scenarios import plans, run_scenario
from tests.kafka_util import unique_name

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.kafka, pytest.mark.timeout(3600)]
JOBS = int(os.environ.get("CHAOS_JOBS", "20000"))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def results_dir() -> Path:
    """``CHAOS_RESULTS`` names a directory to add rows to (a rerun of some scenarios)."""
    named = os.environ.get("CHAOS_RESULTS")
    return Path(named) if named else ROOT / "chaos" / "results" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


@pytest.mark.parametrize("name", list(plans(JOBS)))
def test_scenario(name: str, kafka_bootstrap: str, tmp_path: Path, results_dir: Path) -> None:
    plan, faults = plans(JOBS)[name]
    verdict = run_scenario(plan, faults, tmp_path, kafka_bootstrap, unique_name("chaos") + ".")
    row = record(results_dir, verdict, plan.title, f"{plan.jobs}")
    assert verdict.passed, row["evidence"]
    assert verdict.accepted == plan.jobs
