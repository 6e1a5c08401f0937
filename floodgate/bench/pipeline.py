"""Pipeline: jobs/s end to end with an instant provider (renders and queue delay 0, limits far
above the load), i.e. Floodgate's own overhead per job: admission, dispatch, the provider call,
two webhooks through the bridge, the jobs agent (its table's changelog is notifications) and results.

Jobs go in through the SDK, keeping at most ``window`` jobs between submission and result: that
measures what the pipeline turns over, not how a backlog behaves (the memory scenario does). The
clock runs from the first record to the last result; every job id is then looked up on
``results`` (zero loss). What each job cost is counted from outside (``cost``): records written
to every topic and changelog of the stack, and records the worker(s) consumed (the hops).

On this machine every process of the stack shares its cores: the broker and the simulator (which
stand for machines of their own), the API and the worker. So the jobs run once more with the
worker alone on a core (every thread of it) and everything else on the other(s), as a worker
deployed one to a core would run: what one worker carries when no other process holds it back.
Both runs tell how the worker's main thread spent them (on a CPU, or runnable and waiting for
one: ``WaitMeter``).

Then the same jobs run on a fresh stack with ``scale_to`` workers (2), started once this one is
idle: jobs/s with 2 workers over jobs/s with 1.

The same stack serves the notification scenario afterwards, through a fourth provider ("paced",
renders of a fraction of a second) that only the model ``paced-1`` routes to, and the handover
scenario through a fifth ("handover", a small limit) that only ``handover-1`` routes to.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from floodgate.bench import affinity, cost, handover, profiling, stats
from floodgate.bench.context import Context, CpuMeter, WaitMeter
from floodgate.bench.handover import HandoverConfig
from floodgate.bench.notify import NotifyConfig
from floodgate.bench.probes import (
    LagSampler,
    Offsets,
    answers_between,
    api_metrics_urls,
    simulator_stats,
    topic_keys,
    webhook_answers,
)
from floodgate.bench.stacks import (
    PACED_MODEL,
    ROUTES,
    SimProvider,
    bench_stack,
    discard,
    providers,
)
from floodgate.demo import MODELS
from floodgate.devstack import Stack
from floodgate.sdk import FloodgateClient, JobSpec

PROVIDERS = ("sora", "kling", "wan", "paced")


@dataclass(frozen=True)
class PipelineConfig:
    jobs: int = 10_000
    warmup: int = 200
    workers: int = 1
    limit: int = 500  # far above a real account's 5-10, and above what turns over in a round trip
    window: int = 2_000  # jobs between submission and result, at most
    batch: int = 250
    timeout: float = 1200.0
    stall_seconds: float = 60.0
    profile_jobs: int = 3_000  # at 250-300 jobs/s, load for the whole profile (1,000 left it idle for 6 of its 10 s)
    profile_seconds: float = 10.0
    pinned: bool = True  # the jobs again with the worker alone on a core, the rest of the stack on the other(s)
    scale_to: int = 2  # then the same jobs on a stack with this many workers: jobs/s with 2 / with 1 (0: skip)
    prestart_scaling: bool = False  # start that stack while this one is measured (the smoke run, to stay short)


ROUTES_WITH_PACED = {**ROUTES, PACED_MODEL: [{"provider": "paced", "provider_model": PACED_MODEL}]}


def stack_for(ctx: Context, cfg: PipelineConfig, notify: NotifyConfig,
              slots: HandoverConfig | None = None) -> Stack:
    """Instant sora/kling/wan (the dev routes) plus the paced provider for notifications and the
    small-limit one of the handover scenario."""
    slots = slots or HandoverConfig()
    plan = {**providers(cfg.limit, (0.0, 0.0), 0.0), "paced": SimProvider(notify.limit, notify.render, 0.05),
            handover.PROVIDER: slots.provider()}
    return bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, "pipeline", plan, workers=cfg.workers,
                       routes={**ROUTES_WITH_PACED, **handover.ROUTES})


def input_topics(stack: Stack) -> list[str]:
    s = stack.settings
    names = ["requests", "events", "webhooks"] + [f"{kind}.{p}" for kind in ("dispatch", "release")
                                                  for p in PROVIDERS]
    return [s.topic(n) for n in names]


def stages(stack: Stack) -> dict[str, list[str]]:
    """Each agent's input topics: the one with the largest lag is the pipeline's slowest stage."""
    s = stack.settings
    return {"jobs: requests": [s.topic("requests")], "jobs: events": [s.topic("events")],
            "jobs: webhooks": [s.topic("webhooks")], "submitters": [s.topic(f"dispatch.{p}") for p in PROVIDERS],
            "releasers": [s.topic(f"release.{p}") for p in PROVIDERS]}


def stage_lag(samples: list[tuple[float, dict[str, int]]]) -> dict[str, dict[str, float]]:
    """Mean and max lag per stage over the run's samples."""
    names = samples[0][1].keys() if samples else []
    return {n: {"mean": sum(v[n] for _, v in samples) / len(samples), "max": max(v[n] for _, v in samples)}
            for n in names}


@dataclass
class Feed:
    """Jobs through the SDK, at most ``window`` outstanding; result counts sampled on the way."""

    ctx: Context
    stack: Stack
    offsets: Offsets
    cfg: PipelineConfig
    ids: list[str] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)
    stalled: bool = False

    async def run(self, n: int, what: str, start: int | None = None,
                  enough: Callable[[], bool] | None = None) -> float:
        """Feed ``n`` jobs; returns seconds from the first submission to the ``n``-th result. Once
        ``enough()`` says so, nothing more is submitted and the run waits for what was."""
        results = self.stack.settings.topic("results")
        base = await asyncio.to_thread(self.offsets.total, [results]) if start is None else start
        specs = [JobSpec(model=MODELS[i % len(MODELS)], prompt=f"pipeline job {i}", user_id=f"user-{i % 97}")
                 for i in range(n)]
        client = FloodgateClient(self.stack.bootstrap, topic_prefix=self.stack.settings.topic_prefix)
        sent, done, t0 = 0, 0, time.monotonic()
        best_at = t0
        try:
            while done < n:
                if enough is not None and sent < n and enough():
                    n = sent
                if sent < n and sent - done < self.cfg.window:
                    k = min(self.cfg.batch, n - sent, self.cfg.window - (sent - done))
                    self.ids += await asyncio.to_thread(client.submit_many, specs[sent:sent + k])
                    sent += k
                else:
                    await asyncio.sleep(0.1)
                now_done = await asyncio.to_thread(self.offsets.total, [results]) - base
                now = time.monotonic()
                if now_done > done:
                    best_at = now
                done = now_done
                self.samples.append((now - t0, done))
                self.ctx.progress.status(f"{what}: {done}/{n} results, {sent - done} outstanding")
                if now - best_at > self.cfg.stall_seconds or now - t0 > self.cfg.timeout:
                    self.stalled = True
                    break
        finally:
            await asyncio.to_thread(client.close)
        return time.monotonic() - t0


def steady_rate(samples: list[tuple[float, int]], n: int) -> float:
    """Results per second between 10% and 90% of ``n``: the rate without ramp-up and tail."""
    low = next((s for s in samples if s[1] >= 0.1 * n), None)
    high = next((s for s in samples if s[1] >= 0.9 * n), None)
    if low is None or high is None or high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


def worker_pids(stack: Stack) -> dict[str, int]:
    return {name: child.proc.pid for name, child in stack.children.items() if name.startswith("worker-")}


def placement(pids: Mapping[str, int], cpus: Collection[int]) -> tuple[dict[int, set[int]], set[int], set[int]] | None:
    """Where each process of ``pids`` (by name) goes for the pinned run, given the ``cpus`` this
    bench may use: the worker(s) on a CPU of their own, every other process (the API, the
    simulator, the broker, the load generator) on the rest; then those two sets of CPUs. None
    with a single CPU."""
    return affinity.apart(pids, {name for name in pids if name.startswith("worker-")}, cpus)


async def measure(ctx: Context, stack: Stack, cfg: PipelineConfig, what: str = "pipeline",
                  plan: dict[int, set[int]] | None = None) -> dict[str, Any]:
    """Warm up, then ``cfg.jobs`` jobs through ``stack`` (its processes on the CPUs of ``plan``,
    if given): rate, records written to every topic and changelog, records its worker(s) consumed
    (the hops), cores used, how the workers' main threads spent the run, jobs per provider."""
    offsets = Offsets(stack.bootstrap)
    await Feed(ctx, stack, offsets, cfg).run(cfg.warmup, f"{what}: warm-up")
    before = await cost.settled(stack, offsets)
    consumed0 = await asyncio.to_thread(offsets.total, input_topics(stack))
    created0 = await simulator_stats(stack.simulator_url)
    answers0 = await webhook_answers(api_metrics_urls(stack))
    meter = CpuMeter(ctx.pids(stack)).start()
    waits = WaitMeter(worker_pids(stack)).start()
    feed = Feed(ctx, stack, offsets, cfg)
    with (affinity.pinned(plan) if plan is not None else contextlib.nullcontext(),
          LagSampler(stack.bootstrap, stack.settings.app_id, stages(stack), interval=1.0) as lag):
        elapsed = await feed.run(cfg.jobs, what)
    cores, main_threads = meter.stop(), waits.stop()
    done = feed.samples[-1][1] if feed.samples else 0
    consumed = await asyncio.to_thread(offsets.total, input_topics(stack)) - consumed0
    after = await cost.settled(stack, offsets)
    created = await simulator_stats(stack.simulator_url)
    answers = await webhook_answers(api_metrics_urls(stack))
    out: dict[str, Any] = {
        "jobs": cfg.jobs, "completed": done, "stalled": feed.stalled, "seconds": elapsed,
        "jobs_per_s": done / elapsed if elapsed else 0.0,
        "steady_jobs_per_s": steady_rate(feed.samples, cfg.jobs),
        "records_consumed": consumed,
        "events_per_s_per_worker": consumed / elapsed / cfg.workers,
        **cost.summary(before, after, done),
        "cpu_cores": cores, "workers": cfg.workers, "main_thread": main_threads,
        "submitted_per_provider": {p: created[p]["jobs_created"] - created0[p]["jobs_created"]
                                   for p in created if created[p]["jobs_created"] > created0[p]["jobs_created"]},
        "max_in_flight": {p: created[p]["max_concurrency"] for p in created if created[p]["max_concurrency"]},
        "stage_lag": stage_lag(lag.samples),
        # A webhook the bridge does not answer 2xx within the simulator's timeout (5 s) is delivered
        # again: more records and hops per job, and its slot's release twice.
        "webhook_answer": answers_between(answers0, answers),
        "webhooks_retried": sum(created[p]["webhooks_retried"] - created0[p]["webhooks_retried"] for p in created),
        "webhooks_timed_out": sum(created[p]["webhooks_timed_out"] - created0[p]["webhooks_timed_out"]
                                  for p in created),
        "video_store": stack.settings.video_store,  # the API copies every completed job's video unless "off"
    }
    out["records_written_per_s"] = out["records_written"] / elapsed if elapsed else 0.0
    ctx.progress.status(f"{what}: checking every job reached results", force=True)
    on_results = await asyncio.to_thread(topic_keys, stack.bootstrap, stack.settings.topic("results"))
    out["results_missing"] = len(set(feed.ids) - on_results)
    return out


def scaling_stack(ctx: Context, cfg: PipelineConfig) -> Stack:
    """The instant providers again, with ``cfg.scale_to`` workers (its own topics and group)."""
    plan = {**providers(cfg.limit, (0.0, 0.0), 0.0), "paced": SimProvider(cfg.limit)}  # the same topics
    return bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, f"pipeline-{cfg.scale_to}w", plan,
                       workers=cfg.scale_to, routes=ROUTES_WITH_PACED)


async def scaling(ctx: Context, cfg: PipelineConfig, one: dict[str, Any], stack: Stack,
                  starting: asyncio.Future[Stack]) -> dict[str, Any]:
    """The same jobs on ``stack`` (``scaling_stack``: ``cfg.scale_to`` workers) once ``starting``
    (its start) is done; its rate over ``one``'s (the 1-worker run's)."""
    ctx.progress.status(f"starting a stack with {cfg.scale_to} workers", force=True)
    try:
        await starting
        out = await measure(ctx, stack, replace(cfg, workers=cfg.scale_to), f"{cfg.scale_to} workers")
    finally:
        await asyncio.to_thread(discard, stack)
    out["ratio"] = stats.ratio(out["jobs_per_s"], one["jobs_per_s"])
    out["steady_ratio"] = stats.ratio(out["steady_jobs_per_s"], one["steady_jobs_per_s"])
    out.pop("stage_lag", None)
    return out


async def run(ctx: Context, stack: Stack, cfg: PipelineConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"config": asdict(cfg)}
    scale = bool(cfg.scale_to) and cfg.scale_to != cfg.workers
    second = scaling_stack(ctx, cfg)
    loop = asyncio.get_running_loop()
    starting: asyncio.Future[Stack] | None = None
    if scale and cfg.prestart_scaling:  # the smoke run: shorter, but the start loads the CPU
        starting = loop.run_in_executor(None, second.start)
    try:
        out.update(await measure(ctx, stack, cfg))
        if ctx.profile and cfg.profile_seconds > 0 and not out["stalled"]:
            out["profile"] = await profile_worker(ctx, stack, cfg, Offsets(stack.bootstrap))
        if cfg.pinned and not out["stalled"]:
            try:
                out["pinned"] = await pinned(ctx, stack, cfg)
            except Exception as exc:  # the shared run's numbers stand on their own
                out["pinned"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    except BaseException:
        if starting is not None:  # a stack that failed to start has stopped itself
            await asyncio.gather(starting, return_exceptions=True)
            await asyncio.to_thread(discard, second)
        raise
    if scale:
        try:
            out["scaling"] = await scaling(ctx, cfg, out, second, starting or loop.run_in_executor(None, second.start))
        except Exception as exc:  # the 1-worker numbers stand on their own
            out["scaling"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return out


async def pinned(ctx: Context, stack: Stack, cfg: PipelineConfig) -> dict[str, Any]:
    """The same jobs on the same stack with the worker alone on a core (``placement``)."""
    where = placement(ctx.pids(stack), os.sched_getaffinity(0))
    if where is None:
        return {"skipped": "one CPU: nothing to pin the worker apart on"}
    plan, own, rest = where
    out = await measure(ctx, stack, cfg, "pipeline, worker on a core of its own", plan)
    out.pop("stage_lag", None)
    out["worker_cpus"], out["other_cpus"] = sorted(own), sorted(rest)
    return out


async def profile_worker(ctx: Context, stack: Stack, cfg: PipelineConfig, offsets: Offsets) -> dict[str, Any]:
    """py-spy on the worker and, over the same seconds, on the API (its CPU per job is the
    other half of what one job costs in this run: the 202, the bridge's webhooks, the job view's
    feed, the video copy). The API's profile is the result's ``api``."""
    pids = {"worker-0": stack.children["worker-0"].proc.pid, "api": stack.children["api"].proc.pid}
    files = {"worker-0": "profile-worker.collapsed", "api": "profile-api-pipeline.collapsed"}
    feeding = asyncio.create_task(Feed(ctx, stack, offsets, cfg).run(cfg.profile_jobs, "profile pass"))
    await asyncio.sleep(0.5)
    recorded = await asyncio.gather(*(
        asyncio.to_thread(profiling.record, pid, cfg.profile_seconds, ctx.out_dir / files[name])
        for name, pid in pids.items()))
    await feeding
    load = "instant-provider pipeline fed by the SDK"
    profiles = []
    for name, (collapsed, note) in zip(pids, recorded, strict=True):
        profile: dict[str, Any] = {"process": name, "load": load, "note": note}
        if collapsed:
            profile.update(profiling.summarize(collapsed))
        profiles.append(profile)
    worker, api = profiles
    worker["api"] = api
    return worker


