"""What every scenario is handed by the runner."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from floodgate.bench.probes import cpu_seconds, main_thread_schedstat
from floodgate.bench.progress import ProgressLine
from floodgate.devstack import Stack
from floodgate.settings import Settings


@dataclass
class Context:
    settings: Settings  # the base settings; each scenario's stack overrides topics and routing
    bootstrap: str
    out_dir: Path  # bench/results/<timestamp>/: report and plots
    work_dir: Path  # logs and configs of the stacks
    progress: ProgressLine
    broker_pid: int | None = None
    profile: bool = True
    notes: list[str] = field(default_factory=list)

    def pids(self, stack: Stack) -> dict[str, int]:
        """Process ids worth watching while ``stack`` runs (the shared broker included)."""
        out = {name: child.proc.pid for name, child in stack.children.items()}
        if self.broker_pid:
            out["broker"] = self.broker_pid
        out["bench (load generator)"] = os.getpid()
        return out


class CpuMeter:
    """Cores used by some processes between ``start`` and ``stop`` (1.0 = one core busy)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._cpu0 = {n: cpu_seconds(p) for n, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        elapsed = max(1e-6, time.monotonic() - self._t0)
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = round((cpu_seconds(pid) - self._cpu0[name]) / elapsed, 2)
            except OSError:
                continue  # the process ended meanwhile
        return out


class WaitMeter:
    """How the main threads of some processes spent the time between ``start`` and ``stop``:
    the share of it on a CPU and the share runnable but waiting for one (the kernel's run queue,
    ``schedstat``). A Python process does its work on its main thread, so a high ``waiting``
    share says the process was held back by the others on its cores, not by its own work."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._t0 = 0.0
        self._before: dict[str, tuple[int, int]] = {}

    def start(self) -> WaitMeter:
        self._t0 = time.monotonic()
        self._before = {n: s for n, p in self.pids.items() if (s := main_thread_schedstat(p)) is not None}
        return self

    def stop(self) -> dict[str, dict[str, float]]:
        # Read before the clock, as ``start`` reads after it: the readings fall within the span.
        now = {name: main_thread_schedstat(self.pids[name]) for name in self._before}
        elapsed = max(1e-6, time.monotonic() - self._t0)
        out = {}
        for name, (ran0, waited0) in self._before.items():
            if (after := now[name]) is None:
                continue  # the process ended meanwhile
            out[name] = {"running": round((after[0] - ran0) / 1e9 / elapsed, 3),
                         "waiting": round((after[1] - waited0) / 1e9 / elapsed, 3)}
        return out
