"""The stall soak (``make soak-stalls``): the backlog stop test run ``FLOODGATE_STALL_RUNS`` times
(20 by default), ``FLOODGATE_STALL_LANES`` at once (4) on one broker, so that each run shares the
machine with three others as loaded as itself. Every run must pass, and the stall watchdog
(``floodgate_stalled_partitions_total``) must not fire in any of them: a partition that stops
being handed out is a defect the watchdog only contains.

Each run is a pytest process of its own (a fresh interpreter, as a deployment's workers are);
it reports its firings as the JUnit property ``stall_firings``, read back here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.timeout(3600)]
ROOT = Path(__file__).resolve().parents[2]
TEST = "tests/e2e/test_backlog.py::test_a_worker_with_orders_waiting_stops_promptly_and_loses_none"
RUNS = int(os.environ.get("FLOODGATE_STALL_RUNS", "20"))
LANES = int(os.environ.get("FLOODGATE_STALL_LANES", "4"))


@dataclass(frozen=True)
class Outcome:
    run: int
    passed: bool
    stall_firings: int | None  # None: the run ended before it could count them
    output: str


def read_outcome(run: int, code: int, report: Path, output: str) -> Outcome:
    """One run's verdict and firings from its JUnit report (``record_property`` writes them)."""
    firings = None
    if report.exists():
        for prop in ET.parse(report).iter("property"):
            if prop.get("name") == "stall_firings":
                firings = int(prop.get("value", "0"))
    return Outcome(run, code == 0, firings, output)


def one_run(run: int, bootstrap: str, out: Path) -> Outcome:
    report = out / f"run-{run}.xml"
    env = {**os.environ, "FLOODGATE_KAFKA_BOOTSTRAP": bootstrap}
    # xunit1: the JUnit family that keeps a test's recorded properties.
    args = ["-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={report}",
            "--basetemp", str(out / f"tmp-{run}"), TEST]
    proc = subprocess.run([sys.executable, "-m", "pytest", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return read_outcome(run, proc.returncode, report, proc.stdout[-4000:] + proc.stderr[-4000:])


def test_the_backlog_stop_test_under_load_never_stalls_a_partition(kafka_bootstrap: str, tmp_path: Path) -> None:
    with ThreadPoolExecutor(LANES) as pool:
        outcomes = list(pool.map(lambda i: one_run(i, kafka_bootstrap, tmp_path), range(RUNS)))
    failed = [o for o in outcomes if not o.passed]
    assert not failed, "\n\n".join(f"run {o.run} failed:\n{o.output}" for o in failed)
    counted = [o.stall_firings for o in outcomes]
    assert None not in counted, f"a run did not report its firings: {counted}"
    assert sum(c or 0 for c in counted) == 0, f"the stall watchdog fired: {counted} (runs in order)"
    print(f"\n{RUNS} runs, {LANES} at once: every run passed, 0 stall watchdog firings")
