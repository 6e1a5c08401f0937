"""The broker's warm-up, before the first measured scenario.

A freshly started broker is a JVM whose just-in-time compilers have yet to compile its hot
paths. Under Floodgate's load they do so for the first 40-50 s, and on this machine's 2 cores
they take half a core while they do (HotSpot's ``C2 CompilerThread`` threads, read per thread from
``/proc``: 0.4-0.5 cores for 30 s of the accept scenario, then under 0.05). A broker in service
compiled all that long ago. So, before any scenario, jobs run through a throwaway stack (the
pipeline's instant providers, its own topics) in rounds until the compiler threads have stayed
quiet for ``quiet_seconds``, or ``max_seconds`` have passed; the report says how long that took
and what the compilers used.

A broker the bench did not start (an explicit bootstrap address) is not observed and not warmed.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from floodgate.bench.context import Context
from floodgate.bench.pipeline import Feed, PipelineConfig
from floodgate.bench.probes import Offsets, stat_cpu
from floodgate.bench.stacks import bench_stack, discard, providers

COMPILER_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
"""HotSpot's compiler threads as the kernel names them (``comm`` keeps 15 characters)."""


@dataclass(frozen=True)
class WarmupConfig:
    round_jobs: int = 2_000  # jobs per round; the compilers are read between rounds and during them
    max_seconds: float = 240.0
    quiet_seconds: float = 10.0
    quiet_share: float = 0.05  # of one core: below this, the compilers count as quiet
    sample_seconds: float = 1.0


def compiler_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds used so far by the JIT compiler threads of JVM ``pid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in (proc / str(pid) / "task").iterdir():
        try:
            name, seconds = stat_cpu((task / "stat").read_text(), ticks)
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
        if name.startswith(COMPILER_THREADS):
            total += seconds
    return total


@dataclass
class CompilerWatch:
    """Whether the compilers have been quiet for ``quiet_seconds``: readings of their CPU seconds
    (cumulative) at monotonic times, fed in by the caller (pure)."""

    quiet_seconds: float
    quiet_share: float
    readings: list[tuple[float, float]] = field(default_factory=list)

    def add(self, now: float, cpu_seconds: float) -> None:
        self.readings.append((now, cpu_seconds))

    def share_since(self, since: float) -> float | None:
        """Cores the compilers used from the last reading at or before ``since`` (so the span covers
        all of it; the first reading if none is that old) to the last reading."""
        if len(self.readings) < 2:
            return None
        t0, c0 = next((r for r in reversed(self.readings) if r[0] <= since), self.readings[0])
        t1, c1 = self.readings[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None

    def quiet(self) -> bool:
        if not self.readings or self.readings[-1][0] - self.readings[0][0] < self.quiet_seconds:
            return False
        share = self.share_since(self.readings[-1][0] - self.quiet_seconds)
        return share is not None and share < self.quiet_share


async def run(ctx: Context, cfg: WarmupConfig) -> dict[str, Any]:
    """Rounds of jobs through a throwaway stack until the broker's compilers are quiet."""
    pid = ctx.broker_pid
    if pid is None:
        return {"skipped": "the broker was not started by the bench"}
    watch = CompilerWatch(cfg.quiet_seconds, cfg.quiet_share)
    start_cpu, t0 = compiler_seconds(pid), time.monotonic()
    watch.add(t0, start_cpu)
    stack = bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, "warmup", providers(500, (0.0, 0.0), 0.0))
    await asyncio.to_thread(stack.start)
    jobs = 0
    try:
        feed_cfg = PipelineConfig(jobs=cfg.round_jobs, warmup=0)
        offsets = Offsets(stack.bootstrap)
        while not watch.quiet() and time.monotonic() - t0 < cfg.max_seconds:
            feed = asyncio.ensure_future(Feed(ctx, stack, offsets, feed_cfg).run(cfg.round_jobs, "broker warm-up"))
            while not feed.done():
                await asyncio.wait([feed], timeout=cfg.sample_seconds)
                watch.add(time.monotonic(), compiler_seconds(pid))
            await feed
            jobs += cfg.round_jobs
    finally:
        await asyncio.to_thread(discard, stack)
    seconds = time.monotonic() - t0
    return {"config": asdict(cfg), "seconds": round(seconds, 1), "jobs": jobs, "quiet": watch.quiet(),
            "compiler_cpu_seconds": round(compiler_seconds(pid) - start_cpu, 1),
            "compiler_share_at_end": watch.share_since(watch.readings[-1][0] - cfg.quiet_seconds)}
