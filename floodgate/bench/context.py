"""What every scenario is handed by the runner."""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from floodgate.bench.probes import cpu_seconds
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
