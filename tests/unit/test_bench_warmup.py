"""The broker's warm-up: reading the JIT compiler threads' CPU from /proc, deciding when they are
quiet, and what the report says of it (no broker, no JVM: a /proc tree written here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from floodgate.bench.markdown import warmup_line
from floodgate.bench.probes import stat_cpu
from floodgate.bench.warmup import CompilerWatch, WarmupConfig, compiler_seconds

TICKS = os.sysconf("SC_CLK_TCK")


def stat_line(tid: int, name: str, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    return f"{tid} ({name}) S 1 1 1 0 -1 4194624 10 0 0 0 {utime} {stime} 0 0 20 0 30 0 100 0 0\n"


def test_a_thread_name_with_spaces_and_parentheses_is_read_whole() -> None:
    assert stat_cpu(stat_line(7, "C2 CompilerThre", 250, 50), 100) == ("C2 CompilerThre", 3.0)
    assert stat_cpu(stat_line(8, "odd) (name", 1, 1), 100) == ("odd) (name", 0.02)


def test_only_the_compiler_threads_are_counted(tmp_path: Path) -> None:
    threads = {11: ("java", 900, 100), 12: ("C2 CompilerThre", 300, 20), 13: ("C1 CompilerThre", 70, 10),
               14: ("data-plane-kafk", 500, 500), 15: ("GC Thread#0", 40, 0)}
    for tid, (name, user, system) in threads.items():
        task = tmp_path / "42" / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "stat").write_text(stat_line(tid, name, user, system))
    assert compiler_seconds(42, proc=tmp_path) == (320 + 80) / TICKS


def test_compilers_count_as_quiet_only_after_a_whole_quiet_window() -> None:
    watch = CompilerWatch(quiet_seconds=10.0, quiet_share=0.05)
    busy = [(0.0, 0.0), (5.0, 2.5), (10.0, 5.0)]  # half a core
    for now, cpu in busy:
        watch.add(now, cpu)
    assert not watch.quiet()
    for now in (15.0, 19.0):  # compiling stopped at 10 s, but the window still reaches back into it
        watch.add(now, 5.2)
        assert not watch.quiet()
    watch.add(20.0, 5.2)
    assert watch.quiet() and watch.share_since(10.0) == pytest.approx(0.2 / 10.0)
    watch.add(25.0, 5.2 + 2.0)  # a burst of compiling: no longer quiet
    assert not watch.quiet()


def test_a_watch_with_too_few_readings_is_not_quiet() -> None:
    watch = CompilerWatch(quiet_seconds=10.0, quiet_share=0.05)
    assert not watch.quiet()
    watch.add(0.0, 1.0)
    assert not watch.quiet() and watch.share_since(0.0) is None


def test_the_report_says_what_the_warm_up_did() -> None:
    cfg = {k: v for k, v in WarmupConfig().__dict__.items()}
    done = {"config": cfg, "seconds": 52.3, "jobs": 8000, "quiet": True, "compiler_cpu_seconds": 21.4,
            "compiler_share_at_end": 0.01}
    line = warmup_line(done)
    assert line is not None and "8,000 jobs" in line and "52 s" in line and "21.4 s of CPU" in line
    assert "under 5% of a core for 10 s" in line
    busy = warmup_line({**done, "quiet": False, "compiler_share_at_end": 0.31})
    assert busy is not None and "still busy after 240 s" in busy and "0.31 of a core" in busy
    assert warmup_line(None) is None
    assert "skipped" in (warmup_line({"skipped": "the broker was not started by the bench"}) or "")
    assert "failed" in (warmup_line({"error": "RuntimeError: x"}) or "")
