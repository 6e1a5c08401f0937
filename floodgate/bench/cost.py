"""What jobs cost the pipeline, counted from outside on the real broker, as tests/e2e/test_job_cost.py
counts them: Kafka records written to every topic of a stack (table changelogs and Faust's internal
topics included: they share the stack's prefix) and records its worker(s) consumed
(``floodgate_events_processed_total``, summed over the workers: the consumer hops).

``delta`` and ``per_job`` are pure; ``snapshot`` and ``settled`` read the broker and the workers.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from floodgate.bench.probes import Offsets, worker_counters, worker_metrics_urls
from floodgate.devstack import Stack


@dataclass(frozen=True)
class Snapshot:
    written: dict[str, int]  # topic, the stack's prefix stripped → records ever written
    consumed: dict[str, float]  # agent → records it read
    stalled: float = 0.0  # stall watchdog firings so far, every worker
    parked: float = 0.0  # dispatch orders that waited for a slot so far, every worker


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """What grew between two readings, key by key (a key new in ``after`` counts from zero)."""
    out = {k: v - before.get(k, 0) for k, v in sorted(after.items())}
    return {k: v for k, v in out.items() if v}


def per_job(counts: Mapping[str, float], jobs: int) -> float:
    """Sum of ``counts`` per job; NaN without jobs."""
    return sum(counts.values()) / jobs if jobs > 0 else math.nan


async def snapshot(stack: Stack, offsets: Offsets) -> Snapshot:
    prefix = stack.settings.topic_prefix
    written = await asyncio.to_thread(offsets.written, prefix)
    counters = await worker_counters(worker_metrics_urls(stack))
    # `lines` carries one report per dispatch partition per second, whatever the traffic: a cost
    # of time, not of jobs (and never quiet, which `settled` waits for).
    return Snapshot({t.removeprefix(prefix): n for t, n in written.items() if t.removeprefix(prefix) != "lines"},
                    counters.events, counters.stalled, counters.parked)


async def settled(stack: Stack, offsets: Offsets, *, quiet: float = 1.0, timeout: float = 15.0) -> Snapshot:
    """A snapshot once nothing was written or consumed for ``quiet`` seconds (the releases and slot
    writes that follow a job's result), or after ``timeout``."""
    last = await snapshot(stack, offsets)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet)
        now = await snapshot(stack, offsets)
        if now == last:
            break
        last = now
    return last


def summary(before: Snapshot, after: Snapshot, jobs: int) -> dict[str, Any]:
    """Records written and consumed between two snapshots, in total, per job, per topic and per agent."""
    written, consumed = delta(after.written, before.written), delta(after.consumed, before.consumed)
    return {
        "records_written": int(sum(written.values())), "records_per_job": per_job(written, jobs),
        "records_per_job_by_topic": {t: n / jobs for t, n in written.items()} if jobs else {},
        "hops": sum(consumed.values()), "hops_per_job": per_job(consumed, jobs),
        "hops_per_job_by_agent": {a: n / jobs for a, n in consumed.items()} if jobs else {},
        "stalled_partitions": after.stalled - before.stalled,
        # A waiting order costs one record more (its waiting entry; its slot then overwrites it):
        # what a job costs when its order found a slot free is the rest.
        "orders_waited": after.parked - before.parked,
        "records_per_job_not_waiting": (per_job(written, jobs) - (after.parked - before.parked) / jobs
                                        if jobs else math.nan),
    }
