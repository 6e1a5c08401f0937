"""Slot handover: a provider's completion webhook reaches the bridge → the next submission to that
provider, while orders wait for its slots (the one figure that decides whether a slot the customer
pays for sits idle between two renders).

On the pipeline's stack, once it is idle: one provider ("handover", a small limit, renders of a
fraction of a second) that only the model ``handover-1`` routes to, and ``jobs`` orders for it
submitted at once, so all but ``limit`` of them wait. Timed from outside the pipeline, on one
machine's wall clock (``time.time``):

* a completion: the bridge's ``received_at`` (integer ms, so up to 1 ms early) in the
  ``WebhookEnvelope`` of the job's ``video.completed`` (or ``video.failed``) webhook on ``webhooks``;
* a submission: the simulator's ``created_at`` of each job it created (``GET /_admin/{p}/jobs``).

Each completion, in time order, is paired with the first submission after it that no earlier
completion took (``handovers``). Only completions while a backlog surely remained count: those
before the submission of the ``measured_share``-th job (``backlog_end``); at the tail one dispatch
partition runs dry before the other, and a completion there has no order to hand its slot to.

The same run counts what a job costs when its order waits for a slot: records written and hops.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from floodgate import codec
from floodgate.bench import cost, stats
from floodgate.bench.context import Context, CpuMeter
from floodgate.bench.probes import Offsets, TopicTap, simulator_jobs, simulator_stats
from floodgate.bench.stacks import SimProvider
from floodgate.devstack import Stack
from floodgate.sdk import FloodgateClient, JobSpec

PROVIDER = "handover"
MODEL = "handover-1"
ROUTES = {MODEL: [{"provider": PROVIDER, "provider_model": MODEL}]}
ENDS = ("video.completed", "video.failed")  # webhooks that free a slot


@dataclass(frozen=True)
class HandoverConfig:
    jobs: int = 1000
    limit: int = 5  # what providers often grant an account
    render: tuple[float, float] = (0.2, 0.4)  # seconds (the pipeline's stack runs at time factor 1)
    measured_share: float = 0.8
    batch: int = 500
    timeout: float = 300.0

    def provider(self) -> SimProvider:
        return SimProvider(self.limit, self.render, 0.0)


def handovers(completions: Sequence[float], submissions: Sequence[float], until: float = math.inf) -> list[float]:
    """Milliseconds from each completion (in time order, up to ``until``) to the first submission at
    or after it that no earlier completion was paired with."""
    created = sorted(submissions)
    out: list[float] = []
    j = 0
    for done in sorted(completions):
        if done > until:
            break
        while j < len(created) and created[j] < done:
            j += 1
        if j == len(created):
            break
        out.append((created[j] - done) * 1000)
        j += 1
    return out


def backlog_end(submissions: Sequence[float], share: float) -> float:
    """When the ``share`` (0..1] of all submissions had been made: until then orders still waited."""
    if not submissions or not 0 < share <= 1:
        return -math.inf
    ordered = sorted(submissions)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def utilisation(jobs: Sequence[dict[str, Any]], limit: int) -> float:
    """Slot-seconds the provider's jobs used over the slot-seconds its limit offered from the first
    submission to the last completion (1.0: never an idle slot)."""
    done = [j for j in jobs if j.get("completed_at") is not None]
    if not done or limit <= 0:
        return math.nan
    span = max(j["completed_at"] for j in done) - min(j["created_at"] for j in done)
    busy = sum(j["completed_at"] - j["created_at"] for j in done)
    return busy / (limit * span) if span > 0 else math.nan


class Completions:
    """First ``received_at`` (seconds) of each job's slot-freeing webhook at ``PROVIDER``."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def on_webhook(self, msg: Any) -> None:
        if msg.key() is None:
            return
        env = codec.decode("WebhookEnvelope", msg.value(), msg.headers())
        if env["provider"] != PROVIDER or orjson.loads(env["body"]).get("type") not in ENDS:
            return
        key, t = msg.key().decode(), env["received_at"] / 1000
        self.at[key] = min(self.at.get(key, t), t)


def submit(stack: Stack, cfg: HandoverConfig) -> list[str]:
    specs = [JobSpec(model=MODEL, prompt=f"handover job {i}", user_id=f"user-{i % 97}") for i in range(cfg.jobs)]
    with FloodgateClient(stack.bootstrap, topic_prefix=stack.settings.topic_prefix, known_models=[MODEL]) as client:
        return [job_id for start in range(0, cfg.jobs, cfg.batch)
                for job_id in client.submit_many(specs[start:start + cfg.batch])]


async def run(ctx: Context, stack: Stack, cfg: HandoverConfig) -> dict[str, Any]:
    s = stack.settings
    offsets = Offsets(stack.bootstrap)
    results = s.topic("results")
    seen = Completions()
    before = await cost.settled(stack, offsets)
    base = await asyncio.to_thread(offsets.total, [results])
    meter = CpuMeter(ctx.pids(stack)).start()
    with TopicTap(stack.bootstrap, {s.topic("webhooks"): seen.on_webhook}, from_now=True):
        t0 = time.monotonic()
        await asyncio.to_thread(submit, stack, cfg)
        done = 0
        while done < cfg.jobs and time.monotonic() - t0 < cfg.timeout:
            await asyncio.sleep(0.2)
            done = await asyncio.to_thread(offsets.total, [results]) - base
            ctx.progress.status(f"handover: {done}/{cfg.jobs} results, {len(seen.at)} completions seen")
        elapsed = time.monotonic() - t0
        after = await cost.settled(stack, offsets)  # the tap catches up meanwhile
    cores = meter.stop()
    jobs = await simulator_jobs(stack.simulator_url, PROVIDER)
    sim = (await simulator_stats(stack.simulator_url))[PROVIDER]
    created = [j["created_at"] for j in jobs]
    until = backlog_end(created, cfg.measured_share)
    gaps = handovers(list(seen.at.values()), created, until)
    mean_render = (cfg.render[0] + cfg.render[1]) / 2
    return {
        "config": asdict(cfg), "completed": done, "timed_out": done < cfg.jobs, "seconds": elapsed,
        "completions_seen": len(seen.at), "submissions": len(created), "pairs": len(gaps),
        "handover_ms": stats.summary(gaps),
        "ideal_seconds": cfg.jobs * mean_render / cfg.limit,
        "utilisation": utilisation(jobs, cfg.limit),
        "max_concurrency": sim["max_concurrency"], "rejected_429": sim["rejected_429"],
        **cost.summary(before, after, done), "cpu_cores": cores,
        "clock": "time.time() on one machine: the bridge's received_at (ms, truncated) of each completion "
                 "webhook → the simulator's created_at of the next job at that provider",
    }
