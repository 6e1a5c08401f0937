"""Memory: the worker's resident set with a small and a large backlog of queued jobs.

The providers here never finish a render (limit 10 each), so after the first few submissions
every job waits as a record on ``dispatch.<provider>``: the backlog lives in Kafka. The worker
must still admit every job (requests → the jobs table + dispatch) and write its ``queued`` state into the
jobs table; its RSS is read from ``/proc/<pid>/status`` once it has caught up with both, and once
its dispatchers have stopped reading orders into their lines: with 10,000 queued the worker holds
every order (the whole backlog fits its read-ahead window), with 1,000,000 a window's worth, and
the dispatchers are still reading when admission is done (measured there, the small figure
missed most of its window).
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from floodgate.bench.accept import sdk_submit
from floodgate.bench.context import Context
from floodgate.bench.probes import Offsets, mean_record_bytes, rss_bytes, worker_counters, worker_metrics_urls
from floodgate.bench.stacks import bench_stack, providers
from floodgate.devstack import Stack
from floodgate.errors import FloodgateError

NEVER = 10_000_000.0  # simulated seconds of render: the job stays in flight for the whole run


@dataclass(frozen=True)
class MemoryConfig:
    small: int = 10_000
    large: int = 100_000
    tolerance: float = 0.10
    settle_seconds: float = 5.0
    timeout: float = 3600.0
    stall_seconds: float = 60.0  # no progress for this long: the worker stopped admitting
    quiet_seconds: float = 3.0  # the dispatchers parked no order for this long: their lines are full or hold all


class Quiet:
    """Whether a reading has stayed the same for ``seconds`` (pure: the caller brings the clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._value: float | None = None
        self._since = 0.0

    def still(self, value: float, now: float) -> bool:
        """Take the reading ``value`` made at ``now``; True once it has not changed for ``seconds``."""
        if value != self._value:
            self._value, self._since = value, now
            return False
        return now - self._since >= self.seconds


async def lines_settled(ctx: Context, stack: Stack, cfg: MemoryConfig) -> dict[str, Any]:
    """Wait until the worker's dispatchers stop parking orders in their lines (the window is full,
    or holds every queued order); the orders parked so far and how long that took."""
    urls, quiet, t0 = worker_metrics_urls(stack), Quiet(cfg.quiet_seconds), time.monotonic()
    while True:
        parked = (await worker_counters(urls)).parked
        ctx.progress.status(f"dispatchers reading ahead: {parked:,.0f} orders parked")
        waited = time.monotonic() - t0
        if quiet.still(parked, time.monotonic()) or waited > cfg.stall_seconds:
            return {"parked": int(parked), "seconds": waited, "settled": waited <= cfg.stall_seconds}
        await asyncio.sleep(0.25)


async def rss_settled(pid: int, seconds: float) -> int:
    """Median of RSS samples over ``seconds`` (one sample every 0.5 s)."""
    values = []
    for _ in range(max(1, int(seconds / 0.5))):
        values.append(rss_bytes(pid))
        await asyncio.sleep(0.5)
    return int(statistics.median(values))


async def fill(ctx: Context, stack: Stack, offsets: Offsets, n: int, cfg: MemoryConfig) -> dict[str, Any]:
    """Queue ``n`` more jobs and wait until the worker has admitted and recorded every one: the
    jobs agent writes one queued state per new job to its table, whose changelog is
    ``notifications``, so that topic's end offset tells, without waiting for a commit, how many
    jobs the worker has been through."""
    s = stack.settings
    notifications = [s.topic("notifications")]
    start_count = await asyncio.to_thread(offsets.total, notifications)
    t0 = time.monotonic()
    for sent in range(0, n, 50_000):
        ctx.progress.status(f"queueing jobs: {sent}/{n} sent", force=True)
        await asyncio.to_thread(sdk_submit, stack.bootstrap, s.topic_prefix, min(50_000, n - sent), 10_000)
    produced = time.monotonic() - t0
    best, best_at, stalled = 0, time.monotonic(), False
    while True:
        done = await asyncio.to_thread(offsets.total, notifications) - start_count
        ctx.progress.status(f"worker admitting: {done}/{n} jobs recorded")
        if done >= n:
            break
        if done > best:
            best, best_at = done, time.monotonic()
        elif time.monotonic() - best_at > cfg.stall_seconds:
            stalled = True  # the worker stopped: report it, do not wait forever
            break
        if time.monotonic() - t0 > cfg.timeout:
            raise FloodgateError(f"the worker recorded {done} of {n} jobs in {cfg.timeout:.0f}s")
        await asyncio.sleep(0.25)
    caught_up = time.monotonic() - t0
    out: dict[str, Any] = {"jobs": n, "recorded": min(done, n), "produce_seconds": produced,
                           "admitted_seconds": caught_up, "admitted_per_s": min(done, n) / caught_up,
                           "stalled": stalled}
    if stalled:
        lag = await asyncio.to_thread(offsets.lag, s.app_id, [s.topic("requests"), s.topic("events")])
        out["lag_at_end"] = {k.rsplit(".", 1)[-1]: v for k, v in lag.items()}
    return out


def stack_for(ctx: Context, cfg: MemoryConfig) -> Stack:
    return bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, "memory", providers(10, (NEVER, NEVER)))


async def run(ctx: Context, stack: Stack, cfg: MemoryConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"config": asdict(cfg), "table_store": stack.settings.table_store}
    pid = stack.children["worker-0"].proc.pid
    offsets = Offsets(stack.bootstrap)
    dispatch = [stack.settings.topic(f"dispatch.{p}") for p in ("sora", "kling", "wan")]
    out["rss_idle"] = await rss_settled(pid, cfg.settle_seconds)
    out["fill_small"] = await fill(ctx, stack, offsets, cfg.small, cfg)
    out["lines_small"] = await lines_settled(ctx, stack, cfg)
    out["rss_small"] = await rss_settled(pid, cfg.settle_seconds)
    out["dispatch_lag_small"] = sum((await asyncio.to_thread(offsets.lag, stack.settings.app_id, dispatch)).values())
    out["fill_large"] = await fill(ctx, stack, offsets, cfg.large - cfg.small, cfg)
    out["lines_large"] = await lines_settled(ctx, stack, cfg)
    out["rss_large"] = await rss_settled(pid, cfg.settle_seconds)
    out["dispatch_lag_large"] = sum((await asyncio.to_thread(offsets.lag, stack.settings.app_id, dispatch)).values())
    # The jobs table's changelog is the notifications topic.
    out["table_entry_bytes"] = {"jobs": await asyncio.to_thread(mean_record_bytes, stack.bootstrap,
                                                                stack.settings.topic("notifications"))}
    growth = out["rss_large"] / out["rss_small"] - 1.0
    out.update({
        "growth": growth, "within_tolerance": abs(growth) <= cfg.tolerance,
        "bytes_per_queued_job": (out["rss_large"] - out["rss_small"]) / max(1, cfg.large - cfg.small),
    })
    return out
