"""Accept path: how fast and how steadily Floodgate says 202 (the record is in Kafka).

* HTTP 202 latency p50/p99/p99.9 at a fixed offered rate, open loop, full stack running, and
  the API process's CPU time over that run per 202 (``/proc/<pid>/stat``); the same run with the
  API pinned to a core of its own and every other process on the other (the load generator, which
  stands for clients elsewhere, going first there); pinned again with every
  thread of the worker at niceness 10 (``FLOODGATE_WORKER_NICE``: the broker beside it goes
  first); the same again with the worker stopped, to show what the worker's share of 2 cores costs;
* the fixed rate, unpinned and pinned, sent to an API process with the ingress role alone beside
  the stack's own (which keeps bridging webhooks and feeding the job view): what a 202 costs a
  process that does nothing else;
* the max sustainable rate: offered rate stepped up; the highest step with p99 within the
  target, no failed request and at least 95% of the offered rate answered — and, with p99 within
  1 s instead, the highest rate the API still keeps up with (beyond it requests pile up);
* SDK producer requests/s (``FloodgateClient.submit_many``);
* a burst of N HTTP requests (closed loop, ``burst_concurrency`` outstanding) with every 202'd
  job id looked up on the ``requests`` topic afterwards: zero errors, zero loss.
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any

from floodgate.bench import affinity, load, profiling, stats
from floodgate.bench.arrivals import constant
from floodgate.bench.context import Context, CpuMeter
from floodgate.bench.probes import cpu_seconds, stalls, stalls_between, topic_keys
from floodgate.bench.stacks import bench_stack, providers
from floodgate.demo import MODELS
from floodgate.devstack import Stack
from floodgate.sdk import BatchDeliveryError, FloodgateClient, JobSpec

INGRESS = "ingress"  # the stack's child name of the ingress-only API process


@dataclass(frozen=True)
class AcceptConfig:
    rate: float = 1000.0
    seconds: float = 20.0
    steps: tuple[float, ...] = (250.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0)
    step_seconds: float = 8.0
    slo_p99_ms: float = 25.0
    keep_up_p99_ms: float = 1000.0  # beyond this, requests are queueing rather than being served
    sdk_records: int = 100_000
    sdk_batch: int = 10_000
    burst: int = 100_000
    burst_concurrency: int = 256
    no_worker_seconds: float = 10.0
    warmup_seconds: float = 2.0
    profile_seconds: float = 10.0
    pinned: bool = True  # the fixed rate again with the API on its own core
    worker_nice: int = 10  # and then with the worker yielding the other core too (0: skip)
    generator_nice: int = -10  # the load generator's niceness in the pinned runs (see pinned_rate; 0: as is)
    ingress_only: bool = True  # and sent to an API process with the ingress role alone, unpinned and pinned


def latency_block(run: load.Run, offered_rate: float | None = None) -> dict[str, Any]:
    """Latency of the 202s (from the scheduled send), errors by kind, achieved rate."""
    ok = run.ok(202)
    errors: dict[str, int] = {}
    for s in run.samples:
        if s.status != 202:
            kind = s.error or str(s.status)
            errors[kind] = errors.get(kind, 0) + 1
    lat = stats.summary([s.latency_ms for s in ok])
    service = stats.summary([s.service_ms for s in ok])
    lag = stats.summary([(s.sent - s.due) * 1000 for s in run.samples])
    span = max((s.done for s in run.samples), default=0.0) - min((s.due for s in run.samples), default=0.0)
    return {
        "offered": len(run.samples), "offered_rate": offered_rate, "accepted": len(ok), "errors": errors,
        "achieved_rate": len(ok) / span if span > 0 else 0.0,
        "latency_ms": lat, "service_ms": service, "generator_lag_ms": {"p50": lag["p50"], "p99": lag["p99"]},
    }


def sustainable(block: dict[str, Any], p99_ms: float) -> bool:
    """No errors, at least 95% of the offered rate answered, and p99 within ``p99_ms``."""
    rate = block["offered_rate"] or 0.0
    return (not block["errors"] and block["latency_ms"]["p99"] <= p99_ms
            and block["achieved_rate"] >= 0.95 * rate)


async def fixed_rate(ctx: Context, api: str, rate: float, seconds: float, what: str) -> dict[str, Any]:
    prog = load.Progress()
    async with ctx.progress.watching(lambda: f"{what}: {rate:.0f} req/s, sent {prog.sent}, errors {prog.errors}"):
        run = await load.open_loop(api, constant(rate, seconds), load.post_jobs(api), progress=prog)
    return latency_block(run, rate)


def cpu_ms_per_request(cpu_s: float, accepted: int) -> float:
    """Milliseconds of CPU per accepted request; NaN when nothing was accepted."""
    return cpu_s * 1000 / accepted if accepted > 0 else math.nan


async def api_cpu(stack: Stack, block: Awaitable[dict[str, Any]], name: str = "api") -> dict[str, Any]:
    """``block`` (a run's latency block) with the CPU seconds of the API process ``name`` over it
    and per 202, what its event loop's lag probe saw meanwhile (``api_loop_lag``) and its full
    collections (``api_full_gc``)."""
    pid, url = stack.children[name].proc.pid, stack.metrics_urls[name]
    stalled_before = await stalls([url])
    before = cpu_seconds(pid)
    out = await block
    out["api_cpu_s"] = cpu_seconds(pid) - before
    out["api_cpu_ms_per_request"] = cpu_ms_per_request(out["api_cpu_s"], out["accepted"])
    out.update(stalls_between(stalled_before, await stalls([url])))
    return out


async def pinned_rate(ctx: Context, stack: Stack, cfg: AcceptConfig, *, label: str = "API pinned",
                      name: str = "api", url: str | None = None) -> dict[str, Any]:
    """The fixed-rate run again, sent to the API process ``name`` (at ``url``; default the stack's
    API) alone on one core (every thread of it, ``taskset -c 1``) and the worker, broker,
    simulator, load generator and any other API process on the other(s).

    The load generator (this process) stands for clients on other machines, and each latency
    counts from the instant its request was due: starved on the core it shares with the worker,
    its own wait for the CPU was counted as the API's (its lag p99 21-54 ms pinned against 4-6
    unpinned, in four runs of the accept scenario). So for the pinned run it goes first on that
    core (``cfg.generator_nice``, root only; the block says whether it did). It uses a small part
    of the core (0.15 at 1,000 requests/s); the worker and the broker share the rest."""
    where = affinity.apart(ctx.pids(stack), {name}, os.sched_getaffinity(0))
    if where is None:
        return {"skipped": "one CPU: nothing to pin the API apart on"}
    plan, api_cpus, rest = where
    with affinity.pinned(plan), affinity.hastened(os.getpid(), cfg.generator_nice) as first:
        out = await api_cpu(stack, fixed_rate(ctx, url or stack.api_url, cfg.rate, cfg.seconds, label), name)
    out["api_cpus"], out["other_cpus"] = sorted(api_cpus), sorted(rest)
    out["generator_nice"] = cfg.generator_nice if first["applied"] else None
    return out


async def yielding_rate(ctx: Context, stack: Stack, cfg: AcceptConfig) -> dict[str, Any]:
    """The pinned run once more with every thread of the worker at niceness ``cfg.worker_nice``
    (what ``FLOODGATE_WORKER_NICE`` does at a worker's start): the broker and the load generator
    it shares a core with go first. Then the worker's niceness is put back (which needs root: the
    block says if it was not, and every later figure then ran beside a yielding worker)."""
    with affinity.reniced(stack.children["worker-0"].proc.pid, cfg.worker_nice) as state:
        out = await pinned_rate(ctx, stack, cfg, label="API pinned, worker yielding")
    out["worker_nice"], out["worker_nice_restored"] = cfg.worker_nice, state["restored"]
    return out


async def ingress_only(ctx: Context, stack: Stack, cfg: AcceptConfig) -> dict[str, Any]:
    """The fixed-rate run, unpinned and then pinned, sent to an API process of its own with the
    ingress role alone (``floodgate api --roles ingress``), beside the stack's API (which keeps
    bridging webhooks and feeding the job view) and the worker: what accepting a job costs a
    process that does nothing else, the deployment that keeps a spike's updates off the 202s."""
    url = await asyncio.to_thread(stack.start_ingress, INGRESS)
    try:
        await fixed_rate(ctx, url, min(cfg.rate, 200.0), cfg.warmup_seconds, "warm-up, ingress-only API")
        meter = CpuMeter(ctx.pids(stack)).start()
        out: dict[str, Any] = {"fixed": await api_cpu(stack, fixed_rate(ctx, url, cfg.rate, cfg.seconds,
                                                                        "ingress-only API"), INGRESS)}
        out["fixed"]["cpu_cores"] = meter.stop()
        if cfg.pinned:
            meter = CpuMeter(ctx.pids(stack)).start()
            out["pinned"] = await pinned_rate(ctx, stack, cfg, label="ingress-only API pinned", name=INGRESS,
                                              url=url)
            out["pinned"]["cpu_cores"] = meter.stop()
    finally:
        await asyncio.to_thread(stack.stop_child, INGRESS)
    return out


def sdk_submit(bootstrap: str, prefix: str, n: int, batch: int, *, warm: int = 0) -> tuple[dict[str, Any], list[str]]:
    """``n`` job requests through ``FloodgateClient.submit_many`` in batches of ``batch``, timed
    (after ``warm`` untimed ones that connect and learn the partitions); returns the numbers and
    the acknowledged job ids."""
    specs = [JobSpec(model=MODELS[i % len(MODELS)], prompt=f"a lighthouse in a storm, take {i}",
                     user_id=f"user-{i % 97}") for i in range(warm + n)]
    failures = 0
    ids: list[str] = []
    with FloodgateClient(bootstrap, topic_prefix=prefix) as client:
        if warm:
            ids += client.submit_many(specs[:warm])
        t0 = time.perf_counter()
        for start in range(warm, warm + n, batch):
            try:
                ids += client.submit_many(specs[start:start + batch])
            except BatchDeliveryError as exc:
                failures += len(exc.failures)
                ids += [job_id for i, job_id in enumerate(exc.job_ids) if i not in exc.failures]
        elapsed = time.perf_counter() - t0
    summary = {"records": n, "batch": batch, "seconds": elapsed, "per_s": n / elapsed if elapsed else 0.0,
               "failures": failures}
    return summary, ids


async def burst(ctx: Context, stack: Stack, n: int, concurrency: int, sdk_ids: list[str]) -> dict[str, Any]:
    prog = load.Progress()
    async with ctx.progress.watching(lambda: f"burst: {prog.answered}/{n} answered, errors {prog.errors}"):
        run = await load.closed_loop(stack.api_url, n, load.post_jobs(stack.api_url), concurrency=concurrency,
                                     progress=prog)
    block = latency_block(run)
    block["seconds"] = run.elapsed
    block["accepted_per_s"] = block["accepted"] / run.elapsed if run.elapsed else 0.0
    ctx.progress.status("burst: looking up every accepted job id on the requests topic", force=True)
    on_topic = await asyncio.to_thread(topic_keys, stack.bootstrap, stack.settings.topic("requests"))
    accepted = {s.job_id for s in run.ok(202) if s.job_id}
    block["lost"] = len(accepted - on_topic)
    block["sdk_lost"] = len(set(sdk_ids) - on_topic)
    block["concurrency"] = concurrency
    return block


def stack_for(ctx: Context, cfg: AcceptConfig) -> Stack:
    """The dev preset's providers (limit 10, 0.2-1 s renders): the worker admits and queues what
    arrives, as it would in production while the accept path is hammered."""
    return bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, "accept", providers(10, (0.2, 1.0)))


async def run(ctx: Context, stack: Stack, cfg: AcceptConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"config": asdict(cfg)}
    api = stack.api_url
    await fixed_rate(ctx, api, min(cfg.rate, 200.0), cfg.warmup_seconds, "warm-up")
    meter = CpuMeter(ctx.pids(stack)).start()
    out["fixed"] = await api_cpu(stack, fixed_rate(ctx, api, cfg.rate, cfg.seconds, "fixed rate"))
    out["fixed"]["cpu_cores"] = meter.stop()
    if ctx.profile and cfg.profile_seconds > 0:
        # Here, beside the fixed-rate block whose CPU per 202 it explains: after the burst below,
        # the job view is full and spills, and the profile would describe that instead.
        out["profile"] = await profile_api(ctx, stack, cfg)
    if cfg.pinned:
        meter = CpuMeter(ctx.pids(stack)).start()
        out["pinned"] = await pinned_rate(ctx, stack, cfg)
        out["pinned"]["cpu_cores"] = meter.stop()
        if cfg.worker_nice:
            meter = CpuMeter(ctx.pids(stack)).start()
            out["yielding"] = await yielding_rate(ctx, stack, cfg)
            out["yielding"]["cpu_cores"] = meter.stop()
    if cfg.ingress_only:
        out["ingress"] = await ingress_only(ctx, stack, cfg)
    steps = []
    for rate in cfg.steps:  # up until the API no longer keeps up
        block = await fixed_rate(ctx, api, rate, cfg.step_seconds, "stepping up")
        block["sustainable"] = sustainable(block, cfg.slo_p99_ms)
        block["keeps_up"] = sustainable(block, cfg.keep_up_p99_ms)
        steps.append(block)
        if not block["keeps_up"]:
            break
    out["steps"] = steps
    passing = [b["offered_rate"] for b in steps if b["sustainable"]]
    keeping = [b["offered_rate"] for b in steps if b["keeps_up"]]
    out["max_sustainable_rate"] = max(passing) if passing else 0.0
    out["max_keep_up_rate"] = max(keeping) if keeping else 0.0
    out["max_sustainable_limited_by_steps"] = bool(steps) and steps[-1]["keeps_up"]
    ctx.progress.status(f"SDK submit_many: {cfg.sdk_records} records", force=True)
    out["sdk"], sdk_ids = await asyncio.to_thread(sdk_submit, stack.bootstrap, stack.settings.topic_prefix,
                                                  cfg.sdk_records, cfg.sdk_batch, warm=10)
    out["burst"] = await burst(ctx, stack, cfg.burst, cfg.burst_concurrency, sdk_ids)
    stack.kill("worker-0")  # as if it crashed: the API keeps accepting
    await asyncio.sleep(0.5)
    meter = CpuMeter(ctx.pids(stack)).start()
    out["fixed_no_worker"] = await api_cpu(stack, fixed_rate(ctx, api, cfg.rate, cfg.no_worker_seconds,
                                                             "worker stopped"))
    out["fixed_no_worker"]["cpu_cores"] = meter.stop()
    return out


async def profile_api(ctx: Context, stack: Stack, cfg: AcceptConfig) -> dict[str, Any]:
    pid = stack.children["api"].proc.pid
    target = ctx.out_dir / "profile-api.collapsed"
    recording = asyncio.create_task(asyncio.to_thread(profiling.record, pid, cfg.profile_seconds, target))
    await fixed_rate(ctx, stack.api_url, cfg.rate, cfg.profile_seconds + 1.0, "profiling the API")
    collapsed, note = await recording
    result: dict[str, Any] = {"process": "api", "load": f"{cfg.rate:.0f} req/s open loop", "note": note}
    if collapsed:
        result.update(profiling.summarize(collapsed))
    return result
