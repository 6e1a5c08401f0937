"""Notification latency while the pipeline runs at its max: the notification scenario's jobs
(``PACED_MODEL`` at 50 jobs/s, webhook received → WebSocket message) on a stack that is carrying
as many instant-provider jobs as it can at the same time, fed by the SDK as in the pipeline
scenario. The bar is looser than the idle one (100 ms against 40): what it checks is that a busy
worker still tells waiting users where they stand, not that it does so as fast as an idle one.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from floodgate.bench import notify
from floodgate.bench.context import Context
from floodgate.bench.notify import NotifyConfig
from floodgate.bench.pipeline import Feed, PipelineConfig, steady_rate
from floodgate.bench.probes import Offsets
from floodgate.devstack import Stack

LEAD_RESULTS = 500
"""Instant jobs finished before the measured ones start: the pipeline is at its pace by then."""


async def run(ctx: Context, stack: Stack, cfg: NotifyConfig, pipeline: PipelineConfig) -> dict[str, Any]:
    offsets = Offsets(stack.bootstrap)
    results = stack.settings.topic("results")
    base = await asyncio.to_thread(offsets.total, [results])
    measured = asyncio.Event()
    feed = Feed(ctx, stack, offsets, pipeline)
    # The pipeline scenario's jobs: at its pace they outlast the measured ones (10,000 at 200-300
    # jobs/s), and once those are done nothing more is submitted.
    feeding = asyncio.create_task(feed.run(pipeline.jobs, "the pipeline at its max", base, measured.is_set))
    lead = min(LEAD_RESULTS, pipeline.jobs // 3)
    try:
        while not feeding.done() and await asyncio.to_thread(offsets.total, [results]) - base < lead:
            await asyncio.sleep(0.1)
        if feeding.done():  # it stalled before the measured jobs could start
            return {"error": f"the pipeline stalled before {lead} results", "stalled": feed.stalled}
        started = len(feed.samples)
        out = await notify.run(ctx, stack, cfg, only_own=True)
        during = feed.samples[started:]
    finally:
        measured.set()
        await feeding
    # The feed counts every result, the measured jobs' too: wait for its own as well, so the next
    # scenario on this stack starts on an idle one.
    expected = len(feed.ids) + int(out.get("accepted", 0))
    for _ in range(600):
        if await asyncio.to_thread(offsets.total, [results]) - base >= expected:
            break
        await asyncio.sleep(0.1)
    rate = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) > 1 else 0.0
    out["pipeline"] = {"results_per_s_during": rate, "jobs": len(feed.ids), "stalled": feed.stalled,
                       "steady_jobs_per_s": steady_rate(feed.samples, len(feed.ids))}
    return out


def config(cfg: NotifyConfig) -> NotifyConfig:
    """The idle scenario's jobs, half as many: the pipeline keeps the machine busy meanwhile."""
    return replace(cfg, jobs=max(1, cfg.jobs // 2))
