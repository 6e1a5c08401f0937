"""The broker's warm-up on real processes: rounds of jobs through a throwaway stack until the
watched process's compiler threads are quiet, then the stack is gone. The watched process here is
this test's own (no compiler threads: quiet from the start), so one round runs and it stops."""
from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path

import pytest

from floodgate.bench import warmup
from floodgate.bench.context import Context
from floodgate.bench.progress import ProgressLine
from floodgate.settings import Settings
from tests.kafka_util import read_all

pytestmark = pytest.mark.kafka


def test_the_warm_up_runs_rounds_until_the_compilers_are_quiet_and_leaves_nothing_running(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap=kafka_bootstrap, cache_dir=tmp_path / "cache")
    ctx = Context(settings, kafka_bootstrap, tmp_path / "out", tmp_path / "work", ProgressLine(1, io.StringIO()),
                  broker_pid=os.getpid(), profile=False)
    cfg = warmup.WarmupConfig(round_jobs=30, max_seconds=120.0, quiet_seconds=0.5, sample_seconds=0.2)
    out = asyncio.run(warmup.run(ctx, cfg))
    assert out["jobs"] == 30 and out["quiet"] and out["compiler_cpu_seconds"] == 0.0, out
    prefix = f"bench.{(tmp_path / 'work').name}.warmup."
    results = read_all(kafka_bootstrap, prefix + "results")
    assert len({m.key() for m in results}) == 30  # every job of the round went end to end
    logs = tmp_path / "work" / "warmup" / "logs"
    assert logs.is_dir()
    # The stack's simulator runs with its config from there: nothing of it may be left running.
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "work" / "warmup")], capture_output=True, text=True)
    assert left.stdout.split() == [], left.stdout


def test_a_broker_the_bench_did_not_start_is_not_warmed(tmp_path: Path) -> None:
    settings = Settings.from_env({})
    ctx = Context(settings, "127.0.0.1:9", tmp_path / "out", tmp_path / "work", ProgressLine(1, io.StringIO()))
    assert asyncio.run(warmup.run(ctx, warmup.WarmupConfig())) == {"skipped": "the broker was not started by the bench"}
