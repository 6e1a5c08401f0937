"""``floodgate bench``: run the scenarios in order on one broker, write the report and plots,
print the summary table. A scenario that fails is reported as failed; the others still run.

Order: raw Kafka first (the physical limit, on a quiet broker), then accept, pipeline,
notifications, slot handover, memory, the spike and the naive baseline under the same spike, then
the peer comparison (the same drain against Floodgate, Celery + Redis and the naive endpoint).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from floodgate.bench import (
    accept,
    baseline,
    handover,
    memory,
    notify,
    notify_at_max,
    peer,
    pipeline,
    rawkafka,
    report,
    spike,
    stacks,
    warmup,
)
from floodgate.bench.arrivals import SpikePlan
from floodgate.bench.context import Context
from floodgate.bench.fairshare import FairConfig
from floodgate.bench.progress import ProgressLine
from floodgate.devstack import Stack
from floodgate.settings import Settings

SCENARIOS = ("rawkafka", "accept", "pipeline", "notify", "handover", "memory", "spike", "baseline", "peer")


@dataclass(frozen=True)
class BenchConfig:
    mode: str = "full"
    spike: spike.SpikeConfig = field(default_factory=spike.SpikeConfig)
    baseline: baseline.BaselineConfig = field(default_factory=baseline.BaselineConfig)
    accept: accept.AcceptConfig = field(default_factory=accept.AcceptConfig)
    pipeline: pipeline.PipelineConfig = field(default_factory=pipeline.PipelineConfig)
    notify: notify.NotifyConfig = field(default_factory=notify.NotifyConfig)
    handover: handover.HandoverConfig = field(default_factory=handover.HandoverConfig)
    memory: memory.MemoryConfig = field(default_factory=memory.MemoryConfig)
    raw: rawkafka.RawConfig = field(default_factory=rawkafka.RawConfig)
    peer: peer.PeerConfig = field(default_factory=peer.PeerConfig)
    scenarios: tuple[str, ...] = SCENARIOS
    profile: bool = True
    prestart: bool = False  # start the next scenario's stack while one runs (smoke only: it loads the CPU)
    warmup: warmup.WarmupConfig | None = field(default_factory=warmup.WarmupConfig)  # None: measure a cold broker


def full(*, time_factor: float = 0.02, spike_seconds: float = 15.0, memory_jobs: int = 100_000,
         pipeline_jobs: int = 10_000, workers: int = 1, profile: bool = True,
         scenarios: tuple[str, ...] = SCENARIOS, peer_jobs: int = 2000,
         realtime_seconds: float = 60.0) -> BenchConfig:
    """What ``make bench`` runs (about 25-30 minutes on 2 cores)."""
    return BenchConfig(
        spike=spike.SpikeConfig(plan=SpikePlan(time_factor=time_factor, spike_s=spike_seconds),
                                realtime_seconds=realtime_seconds),
        pipeline=pipeline.PipelineConfig(jobs=pipeline_jobs, workers=workers),
        memory=memory.MemoryConfig(large=max(memory_jobs, 10_000)),
        scenarios=scenarios, profile=profile, peer=peer.PeerConfig(jobs=peer_jobs))


def smoke() -> BenchConfig:
    """Seconds per scenario: every section and plot, nothing at target scale."""
    return BenchConfig(
        mode="smoke", prestart=True,
        spike=spike.SpikeConfig(plan=SpikePlan(time_factor=0.005, before_s=200.0, spike_s=1.2, after_s=200.0),
                                drain_timeout=30.0, realtime_seconds=1.0, prestart_spillover=True,
                                fair=FairConfig(burst=30, late=3, delay_s=0.2, timeout=30.0)),
        accept=accept.AcceptConfig(rate=200.0, seconds=1.0, steps=(200.0, 400.0), step_seconds=1.0,
                                   sdk_records=2_000, sdk_batch=1_000, burst=300, burst_concurrency=32,
                                   no_worker_seconds=1.0, profile_seconds=1.0, warmup_seconds=0.5),
        pipeline=pipeline.PipelineConfig(jobs=150, warmup=20, timeout=60.0, stall_seconds=20.0, profile_jobs=50,
                                         profile_seconds=1.0, prestart_scaling=True),
        notify=notify.NotifyConfig(jobs=40, rate=40.0, render=(0.05, 0.1), timeout=30.0),
        handover=handover.HandoverConfig(jobs=80, render=(0.05, 0.1), timeout=30.0),
        memory=memory.MemoryConfig(small=200, large=600, settle_seconds=0.5, timeout=60.0, stall_seconds=20.0,
                                   quiet_seconds=1.0),
        raw=rawkafka.RawConfig(records=20_000),
        peer=peer.PeerConfig(jobs=60, render=(0.05, 0.15), poll=0.02, drain_timeout=30.0),
        warmup=warmup.WarmupConfig(round_jobs=50, max_seconds=1.0))


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _log_error(path: Path, scenario: str, trace: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"--- {scenario}\n{trace}\n")


class StackPool:
    """The scenarios' stacks: started when first needed (or ahead, with ``prestart``, while the
    previous scenario runs — the smoke run does, to stay short; a full run never does, so no
    stack starts while another is measured) and discarded once no later scenario needs them."""

    def __init__(self, ctx: Context, cfg: BenchConfig) -> None:
        self.factories: dict[str, Callable[[], Stack]] = {
            "accept": lambda: accept.stack_for(ctx, cfg.accept),
            "pipeline": lambda: pipeline.stack_for(ctx, cfg.pipeline, cfg.notify, cfg.handover),
            "memory": lambda: memory.stack_for(ctx, cfg.memory),
            "spike": lambda: spike.stack_for(ctx, cfg.spike),
            "peer": lambda: peer.stack_for(ctx, cfg.peer),
        }
        self._starting: dict[str, concurrent.futures.Future[Stack]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack")

    @staticmethod
    def key(scenario: str) -> str | None:
        key = "pipeline" if scenario in ("notify", "handover") else scenario
        return key if key in ("accept", "pipeline", "memory", "spike", "peer") else None

    def prestart(self, scenario: str) -> None:
        key = self.key(scenario)
        if key is not None and key not in self._starting:
            stack = self.factories[key]()
            self._starting[key] = self._executor.submit(lambda: stack.start())

    async def get(self, scenario: str) -> Stack:
        self.prestart(scenario)
        key = self.key(scenario)
        assert key is not None
        return await asyncio.wrap_future(self._starting[key])

    def release(self, scenario: str) -> None:
        key = self.key(scenario)
        future = self._starting.pop(key, None) if key else None
        if future is not None and future.done() and future.exception() is None:
            stacks.discard(future.result())

    def close(self) -> None:
        for key in list(self._starting):
            future = self._starting.pop(key)
            if future.exception() is None:  # a stack that failed to start has stopped itself
                stacks.discard(future.result())
        self._executor.shutdown(wait=True)


async def _scenarios(ctx: Context, cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    pool = StackPool(ctx, cfg)
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "rawkafka": lambda: asyncio.to_thread(rawkafka.run, ctx, cfg.raw),
        "accept": lambda: _with(pool, "accept", lambda st: accept.run(ctx, st, cfg.accept)),
        "pipeline": lambda: _with(pool, "pipeline", lambda st: pipeline.run(ctx, st, cfg.pipeline)),
        "notify": lambda: _with(pool, "notify", lambda st: _notify(ctx, st, cfg)),
        "handover": lambda: _with(pool, "handover", lambda st: handover.run(ctx, st, cfg.handover)),
        "memory": lambda: _with(pool, "memory", lambda st: memory.run(ctx, st, cfg.memory)),
        "spike": lambda: _with(pool, "spike", lambda st: spike.run(ctx, st, cfg.spike)),
        "baseline": lambda: baseline.run(ctx, cfg.spike, cfg.baseline),
        "peer": lambda: _with(pool, "peer", lambda st: peer.run(ctx, st, cfg.peer)),
    }
    results: dict[str, Any] = {}
    load: dict[str, Any] = {}
    order = list(cfg.scenarios)
    try:
        for i, name in enumerate(order):
            ctx.progress.stage(name)
            if cfg.prestart and i + 1 < len(order):
                pool.prestart(order[i + 1])
            before, t0 = _loadavg(), time.monotonic()
            try:
                results[name] = await steps[name]()
            except Exception as exc:  # one failed scenario must not lose the others' numbers
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                _log_error(ctx.work_dir / "errors.log", name, traceback.format_exc())
            if pool.key(name) not in {pool.key(later) for later in order[i + 1:]}:
                await asyncio.to_thread(pool.release, name)
            load[name] = {"seconds": round(time.monotonic() - t0, 1), "loadavg_before": before,
                          "loadavg_after": _loadavg()}
    finally:
        await asyncio.to_thread(pool.close)
    return results, load


async def _notify(ctx: Context, stack: Stack, cfg: BenchConfig) -> dict[str, Any]:
    """Notification latency on the idle stack, then while the pipeline runs at its max."""
    out = await notify.run(ctx, stack, cfg.notify)
    try:
        out["at_max"] = await notify_at_max.run(ctx, stack, notify_at_max.config(cfg.notify), cfg.pipeline)
    except Exception as exc:  # the idle figures stand on their own
        out["at_max"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        _log_error(ctx.work_dir / "errors.log", "notify at max", traceback.format_exc())
    return out


async def _with(pool: StackPool, scenario: str,
                run: Callable[[Stack], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return await run(await pool.get(scenario))


def plot_all(results: dict[str, Any], out_dir: Path) -> list[str]:
    # Imported here: matplotlib takes about two seconds of CPU to import, which every test process
    # that collects the bench's tests would otherwise pay at collection.
    from floodgate.bench import plots

    made = []
    if "series" in results.get("spike", {}):
        made.append(plots.spike(results["spike"], out_dir / "spike.png").name)
        naive = results.get("baseline") if "outcomes" in results.get("baseline", {}) else None
        made.append(plots.latency_cdf(results["spike"], naive, out_dir / "latency_cdf.png").name)
    if results.get("accept", {}).get("steps"):
        made.append(plots.accept_steps(results["accept"], out_dir / "accept.png").name)
    return made


def run(cfg: BenchConfig, out_dir: Path, settings: Settings | None = None, *, out: Any = None,
        keep_work: bool = False) -> dict[str, Any]:
    """Run ``cfg``'s scenarios; write ``report.json``, ``report.md`` and the plots to ``out_dir``."""
    settings = settings or Settings.from_env()
    out = out or sys.stdout
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f"floodgate-bench-{out_dir.name}-"))
    progress = ProgressLine(len(cfg.scenarios) + 1 + (cfg.warmup is not None), every=15.0)
    started = datetime.now(UTC)
    machine_at_start = report.machine()  # the code measured: the tree may change while the run goes on
    print(f"floodgate bench ({cfg.mode}): results in {out_dir}, logs in {work_dir}", file=out, flush=True)
    progress.stage("broker")
    with stacks.broker(settings, work_dir) as bootstrap:
        broker_pid = _broker_pid(work_dir)
        ctx = Context(settings, bootstrap, out_dir, work_dir, progress, broker_pid=broker_pid, profile=cfg.profile)
        warmed = _warm_up(ctx, cfg.warmup, progress) if cfg.warmup is not None else None
        results, load = asyncio.run(_scenarios(ctx, cfg))
    progress.finish()
    at_end = report.machine()
    if (at_end["git_commit"], at_end["modified_files"]) != (machine_at_start["git_commit"],
                                                             machine_at_start["modified_files"]):
        ctx.notes.append(f"the working tree changed during the run: {machine_at_start['git_commit']} "
                         f"{machine_at_start['modified_files']} at the start, {at_end['git_commit']} "
                         f"{at_end['modified_files']} at the end")
    meta = {"started": started.strftime("%Y-%m-%d %H:%M:%S UTC"), "mode": cfg.mode, "machine": machine_at_start,
            "seconds": (datetime.now(UTC) - started).total_seconds(), "load": load,
            "config": dataclasses.asdict(cfg), "broker": bootstrap, "warmup": warmed}
    notes = list(ctx.notes)
    if cfg.mode != "full":
        notes.append("smoke run: every scenario at a tiny scale; the targets are not judged at this scale")
    built = report.build(results, meta, notes)
    try:
        built["plots"] = plot_all(results, out_dir)
    except Exception as exc:  # the numbers matter more than the pictures
        built["plots"] = []
        built["notes"].append(f"plotting failed: {type(exc).__name__}: {exc}")
    json_path, md_path = report.write(out_dir, built)
    print("\n" + report.summary_table(report.clean(built)), file=out)
    print(f"\nreport: {md_path}\n        {json_path}", file=out, flush=True)
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("error")]
    if failed:
        print(f"failed scenarios: {', '.join(failed)} (tracebacks in {work_dir / 'errors.log'})", file=out)
    elif not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return built


def _warm_up(ctx: Context, cfg: warmup.WarmupConfig, progress: ProgressLine) -> dict[str, Any]:
    """The broker's warm-up (``floodgate.bench.warmup``); a failure is reported, not fatal."""
    progress.stage("broker warm-up")
    try:
        return asyncio.run(warmup.run(ctx, cfg))
    except Exception as exc:
        _log_error(ctx.work_dir / "errors.log", "warm-up", traceback.format_exc())
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def _broker_pid(work_dir: Path) -> int | None:
    import json

    try:
        return int(json.loads((work_dir / "broker" / "broker.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def default_out_dir(root: Path = Path("bench/results")) -> Path:
    return root / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
