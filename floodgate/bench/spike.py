"""The spike: 50 requests/hour → 5,000/minute → 50/hour, time-compressed, against providers with
the limits and render times of README's first paragraph (10 jobs at once, 30 s - 3 min; renders
scaled by the same factor), until the backlog has drained.

What it records, all on the wall clock of this machine:
* arrivals/s — when each HTTP request was sent (open loop, on schedule);
* provider submissions/s — ``submitted`` events on the ``events`` topic (stamped by the worker);
* queue depth — the worker group's lag on ``dispatch.<provider>`` (end offset − committed offset),
  sampled from Kafka, and its lag on ``requests`` (not yet admitted); committed offsets move with
  Faust's commit interval (~3 s), so the same depth is also counted exactly from the events:
  jobs with a ``queued`` event and no ``submitted`` one yet;
* accept→terminal latency — the 202's arrival at the client → the job's record on ``results``
  (Kafka's CreateTime, stamped by the worker's producer).

Compressing time compresses the arrivals too: the 5,000/min spike reaches the API at 5,000 / 60 /
time_factor requests per wall second (4,167 at 50×), past what one API process serves. So the
spike's arrivals run again in real time (83/s for ``realtime_seconds``) once the compressed spike
has drained, renders still compressed: that accept latency is the one users see.

For the waiting user and the fair queue (``floodgate.bench.waits`` computes the figures):
* two tenants (API keys): A sends the first ``burst_share`` of the spike, B the rest of it and the
  baseline; each tenant's wait, accept → ``submitted``;
* the ETA a sample of jobs is shown at acceptance (``floodgate.bench.etaprobe``: GETs paced beside
  the load, on their own connections) against when each actually left the line;
* once drained, the fair-share check on the same stack (``floodgate.bench.fairshare``);
* the same spike on a second stack whose routing file lets kling's jobs (kling-2.1, and sora-2,
  routed to kling) spill to wan-2.6: the drain with spillover against the drain without. That
  runs before the spike in real time, whose backlog would keep the first stack's worker busy.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from floodgate import codec
from floodgate.api.view import Submission
from floodgate.bench import accept, fairshare, firstframe, load, stats, waits
from floodgate.bench.arrivals import SpikePlan, constant
from floodgate.bench.context import Context
from floodgate.bench.etaprobe import EtaProbe
from floodgate.bench.fairshare import FairConfig
from floodgate.bench.probes import LagSampler, TopicTap, simulator_stats, worker_metrics_urls
from floodgate.bench.stacks import SimProvider, bench_stack, discard, providers
from floodgate.bench.waits import TENANT_A, TENANT_B
from floodgate.devstack import Stack
from floodgate.jobs.record import decode_notification
from floodgate.settings import Secret
from floodgate.topics import TopicNames

STARTS_BIN_S = 2.0
"""Bin of the per-provider start rates the ETA report carries beside its points (wall seconds)."""
ACTIVE = ("kling", "wan")  # sora is retired in the routing table: sora-2 goes to kling


TENANT_KEYS = {TENANT_A: "bench-key-tenant-a", TENANT_B: "bench-key-tenant-b"}
"""The spike stack's API keys (``FLOODGATE_API_KEYS``), one per tenant, equal weights."""


def tenant_headers(tenant: str) -> dict[str, str]:
    return {"X-API-Key": TENANT_KEYS[tenant]}


@dataclass(frozen=True)
class SpikeConfig:
    plan: SpikePlan = field(default_factory=SpikePlan)
    limit: int = 10
    render: tuple[float, float] = (30.0, 180.0)  # simulated seconds: a video model's 30 s - 3 min
    cold_start: float = 20.0  # simulated seconds before an idle model's first frame, as the realistic preset
    queue_delay: float = 2.0  # simulated seconds in the provider's own queue
    drain_timeout: float = 900.0  # wall seconds to wait after the last arrival
    sample_interval: float = 0.25
    realtime_seconds: float = 60.0  # then the spike's arrivals in real time for this long (0: skip)
    burst_share: float = 0.8  # tenant A sends this first share of the spike; tenant B everything else
    eta_samples: int = 500  # accepted jobs whose ETA at acceptance is read (spread over the run)
    eta_read_rate: float = 50.0  # GETs per wall second at most, beside the load: extra load, kept modest
    eta_min_wait: float = 10.0  # simulated seconds: shorter actual waits are left out of the ETA error
    fair: FairConfig | None = field(default_factory=FairConfig)  # the fair-share check (None: skip)
    spillover_max_wait: float = 30.0  # simulated seconds; the spike again with spillover (0: skip)
    prestart_spillover: bool = False  # start that stack while the first runs (the smoke run, to stay short)

    def providers(self) -> dict[str, SimProvider]:
        return providers(self.limit, self.render, self.queue_delay, self.cold_start)

    def capacity_per_s(self) -> float:
        """Completions per wall second the active providers can sustain at their limits."""
        mean = (self.render[0] + self.render[1]) / 2 + self.queue_delay
        return len(ACTIVE) * self.limit / (mean * self.plan.time_factor)

    def spillover_rules(self) -> dict[str, dict[str, Any]]:
        """kling-2.1's jobs, and sora-2's (routed to kling by fallback, their orders keep the model
        asked for), may move to wan-2.6 when they would wait past ``spillover_max_wait``."""
        rule = {"equivalents": ["wan-2.6"], "max_wait_s": self.spillover_max_wait * self.plan.time_factor}
        return {"kling-2.1": rule, "sora-2": rule}

    def render_times(self) -> dict[str, dict[str, Any]]:
        """The routing file's ``render_time`` for the active providers: the renders' range, as an
        operator writes it from a provider's published figures (``30 s to 3 min``; not the
        provider's own queueing nor the first render's cold start), in wall seconds. It is the
        prior of the paces until renders are seen (``floodgate.pace``)."""
        low, high = (round(x * self.plan.time_factor, 3) for x in self.render)
        return {p: {"kind": "uniform", "min": low, "max": high} for p in ACTIVE}

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["plan"] = self.plan.describe()
        out["capacity_jobs_per_wall_s"] = round(self.capacity_per_s(), 3)
        out["render_time_configured"] = self.render_times()
        return out


def bin_size(seconds: float) -> float:
    return max(0.1, round(seconds / 300, 2))


def stack_for(ctx: Context, cfg: SpikeConfig, *, spillover: bool = False) -> Stack:
    keys = ",".join(f"{key}={tenant}" for tenant, key in TENANT_KEYS.items())
    # The dispatchers' look at their lines (line reports, spills) is on a wall-clock tick: compressed
    # like the renders, or one default tick (1 s) would stand for 50 simulated seconds of idle room
    # at the equivalent. Not below 0.1 s: each tick also publishes a report per dispatch partition.
    tick = max(0.1, cfg.plan.time_factor)
    return bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, "spike-spillover" if spillover else "spike",
                       cfg.providers(), cfg.plan.time_factor, api_keys=Secret(keys),
                       spillover=cfg.spillover_rules() if spillover else None, render_times=cfg.render_times(),
                       line_report_interval=tick)


class Records:
    """What the taps saw of each job: admitted (queued), submitted, finished; the model serving it."""

    def __init__(self) -> None:
        self.queued: dict[str, float] = {}
        self.submitted: dict[str, float] = {}
        self.finished: dict[str, tuple[float, str]] = {}
        self.models: dict[str, tuple[str, str | None]] = {}
        self.started_at: dict[str, list[float]] = {}
        """Provider → the times of the submissions its slot log recorded (each job's first)."""

    def taps(self, stack: Stack, providers: Iterable[str]) -> dict[str, Callable[[Any], None]]:
        s, names = stack.settings, TopicNames(stack.settings)
        return {**{names.slot_log(p): functools.partial(self.on_slot, p) for p in providers},
                s.topic("notifications"): self.on_notification, s.topic("results"): self.on_result}

    def on_slot(self, provider: str, msg: Any) -> None:
        sub = Submission.from_slot(msg.key(), msg.value(), msg.timestamp()[1])
        if sub is not None and sub.job_id not in self.submitted:
            # the job left its provider's line (its first submission: a spilled job's is at the equivalent)
            self.submitted[sub.job_id] = sub.at_ms / 1000
            self.started_at.setdefault(provider, []).append(sub.at_ms / 1000)

    def on_notification(self, msg: Any) -> None:
        if msg.value() is None:
            return
        snap = decode_notification(msg.value(), msg.headers())
        if snap["status"] == "queued" and snap["attempt"] == 0:
            # stamped when the jobs agent admitted the request: the job is waiting for a provider slot
            self.queued.setdefault(snap["job_id"], msg.timestamp()[1] / 1000)

    def on_result(self, msg: Any) -> None:
        snap = codec.decode("JobSnapshot", msg.value(), msg.headers())
        self.finished.setdefault(snap["job_id"], (msg.timestamp()[1] / 1000, snap["status"]))
        self.models[snap["job_id"]] = (snap["model"], snap.get("serving_model"))


async def run(ctx: Context, stack: Stack, cfg: SpikeConfig) -> dict[str, Any]:
    second = stack_for(ctx, cfg, spillover=True) if cfg.spillover_max_wait > 0 else None
    loop = asyncio.get_running_loop()
    starting = (loop.run_in_executor(None, second.start)
                if second is not None and cfg.prestart_spillover else None)
    try:
        out = await drain(ctx, stack, cfg, read_etas=True, fair=cfg.fair)
    except BaseException:
        if starting is not None and second is not None:  # a stack that failed to start has stopped itself
            await asyncio.gather(starting, return_exceptions=True)
            await asyncio.to_thread(discard, second)
        raise
    try:
        out["first_frame"] = firstframe.milestones(await firstframe.scrape(worker_metrics_urls(stack)))
    except Exception as exc:  # the spike's numbers stand without this table
        out["first_frame_error"] = f"{type(exc).__name__}: {exc}"[:500]
    if second is not None:
        # Before the spike in real time, whose backlog would keep this stack's worker busy meanwhile.
        try:
            out["spillover"] = await with_spillover(ctx, cfg, out, second,
                                                    starting or loop.run_in_executor(None, second.start))
        except Exception as exc:  # the first run's numbers stand on their own
            out["spillover"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    if cfg.realtime_seconds > 0:
        try:
            out["realtime"] = await realtime(ctx, stack, cfg)
        except Exception as exc:  # the compressed spike's numbers stand on their own
            out["realtime"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return out


async def with_spillover(ctx: Context, cfg: SpikeConfig, without: dict[str, Any], stack: Stack,
                         starting: asyncio.Future[Stack]) -> dict[str, Any]:
    """The same spike on ``stack``, whose routing file has ``cfg.spillover_rules()``: its drain
    against ``without``'s, how many jobs spilled, and its providers' limits and 429s."""
    ctx.progress.status("starting the spike's stack with spillover", force=True)
    try:
        await starting
        # Its ETAs are read as the first run's are: the same extra load on both, and how far the
        # ETA is when the lines pool (reported beside the first run's, which the target judges).
        run_ = await drain(ctx, stack, cfg, read_etas=True, fair=None, what="spike with spillover")
        metric: dict[str, float] = {}
        for text in await _metrics_texts(worker_metrics_urls(stack)):
            for key, value in waits.spilled_counts(text).items():
                metric[key] = metric.get(key, 0.0) + value
    finally:
        await asyncio.to_thread(discard, stack)
    keep = ("offered", "accepted", "errors", "completed", "failed", "unfinished", "drain_wall_s", "providers",
            "tenants", "spilled_jobs", "max_waiting", "e2e_sim_min")
    eta = run_.get("eta")
    if eta:
        eta = {k: eta[k] for k in ("count", "ape_p50", "ape_p90", "signed_p50", "by_tenant", "by_model",
                                   "after_admission") if k in eta}
    return {**{k: run_[k] for k in keep}, "eta": eta, "max_wait_s": cfg.spillover_max_wait,
            "max_wait_wall_s": cfg.spillover_max_wait * cfg.plan.time_factor, "rules": cfg.spillover_rules(),
            "spilled_metric": metric, "without_drain_wall_s": without["drain_wall_s"],
            "reduction": waits.reduction(without["drain_wall_s"], run_["drain_wall_s"])}


async def _metrics_texts(urls: list[str]) -> list[str]:
    async with aiohttp.ClientSession() as session:
        out = []
        for url in urls:
            async with session.get(url) as resp:
                out.append(await resp.text())
        return out


async def drain(ctx: Context, stack: Stack, cfg: SpikeConfig, *, read_etas: bool, fair: FairConfig | None,
                what: str = "spike") -> dict[str, Any]:
    """The compressed spike on ``stack`` until its backlog has drained; with ``read_etas`` the ETA
    of a sample of jobs read at acceptance; then, with ``fair``, the fair-share check."""
    plan = cfg.plan
    records = Records()
    schedule = plan.schedule()
    tenants = [waits.tenant_of_arrival(due, plan.spike_window(), cfg.burst_share) for due in schedule]
    request = load.post_jobs(stack.api_url, headers=lambda i: tenant_headers(tenants[i]))
    probe = None
    if read_etas and cfg.eta_samples > 0:
        probe = EtaProbe(stack.api_url, every=waits.sample_every(len(schedule), cfg.eta_samples),
                         max_samples=cfg.eta_samples, rate=cfg.eta_read_rate)
        request = load.on_accept(request, probe.offer)
    s = stack.settings
    lag_topics = {**{p: [s.topic(f"dispatch.{p}")] for p in ("sora", *ACTIVE)},
                  "requests": [s.topic("requests")]}
    fair_out: dict[str, Any] | None = None
    with TopicTap(stack.bootstrap, records.taps(stack, cfg.providers())), \
            LagSampler(stack.bootstrap, s.app_id, lag_topics, cfg.sample_interval) as lag:
        prog = load.Progress()
        in_flight: list[tuple[float, dict[str, int]]] = []
        sampling = asyncio.create_task(sample_in_flight(stack.simulator_url, cfg.sample_interval * 2, in_flight))
        reading = asyncio.create_task(probe.run()) if probe is not None else None
        finished = records.finished
        async with ctx.progress.watching(lambda: f"{what}: sent {prog.sent}/{len(schedule)}, "
                                                 f"finished {len(finished)}"):
            run_ = await load.open_loop(stack.api_url, schedule, request, progress=prog, timeout=120)
            accepted = {x.job_id: x for x in run_.ok(202) if x.job_id}
            deadline = time.monotonic() + cfg.drain_timeout
            while not accepted.keys() <= finished.keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
        end = time.time()
        if probe is not None and reading is not None:
            await probe.finish(timeout=10.0)
            await asyncio.wait_for(reading, 15.0)
        sampling.cancel()
        sim = await simulator_stats(stack.simulator_url)
        if fair is not None:
            try:
                async with ctx.progress.watching(lambda: "fair share: tenant A bursts, tenant B a moment later"):
                    fair_out = await fairshare.run(stack, fair, records.submitted, tenant_headers)
            except Exception as exc:  # the spike's numbers stand on their own
                fair_out = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    out = summarize(cfg, run_, accepted, records.queued, records.submitted, records.finished, lag.samples, end, sim)
    out["utilisation"] = utilisation(cfg, lag.samples, in_flight)
    out["tenants"] = waits.tenant_waits({j: tenants[x.index] for j, x in accepted.items()},
                                        {j: x.done_wall for j, x in accepted.items()}, records.submitted)
    out["spilled_jobs"] = waits.spilled_jobs({j: m for j, m in records.models.items() if j in accepted})
    if probe is not None:
        min_wait = cfg.eta_min_wait * plan.time_factor
        tenant_of = {j: tenants[x.index] for j, x in accepted.items()}
        by_tenant = {t: waits.eta_error([r for r in probe.readings if tenant_of.get(r.job_id) == t],
                                        records.submitted, min_wait) for t in (TENANT_A, TENANT_B)}
        # By the model asked for, and the one that served it where another did (spillover).
        served = {j: asked if not serving or serving == asked else f"{asked} → {serving}"
                  for j, (asked, serving) in records.models.items()}
        by_model = {m: waits.eta_error([r for r in probe.readings if served.get(r.job_id) == m],
                                       records.submitted, min_wait) for m in sorted(set(served.values()))}
        out["eta"] = {**waits.eta_error(probe.readings, records.submitted, min_wait), "probe": probe.describe(),
                      "by_tenant": {t: {k: e[k] for k in ("count", "ape_p50", "ape_p90", "signed_p50")}
                                    for t, e in by_tenant.items()},
                      "by_model": {m: {k: e[k] for k in ("count", "ape_p50", "ape_p90", "signed_p50")}
                                   for m, e in by_model.items() if e["count"]},
                      "points": waits.eta_points(probe.readings, records.submitted, run_.started_wall, served),
                      # What the points' actual waits were made of: each provider's starts per
                      # second, in bins of STARTS_BIN_S from the same origin.
                      "starts_per_s": {p: stats.rate_series(times, run_.started_wall, end, STARTS_BIN_S)
                                       for p, times in sorted(records.started_at.items()) if end > run_.started_wall}}
        # Apart: the readings made once the spike's requests were all answered. Before, the machine
        # is admitting the compressed spike (4,167 requests per wall second at 50×), which slows the
        # slot handovers the ETA is counting on; at the spike's real 83/s it would not.
        spike_start, spike_end = plan.spike_window()
        admitted = max((x.done_wall for x in accepted.values()
                        if spike_start <= schedule[x.index] < spike_end), default=0.0)
        after = waits.eta_error([r for r in probe.readings if r.read_at > admitted], records.submitted, min_wait)
        out["eta"]["after_admission"] = {k: after[k] for k in ("count", "ape_p50", "ape_p90", "signed_p50")}
    if fair_out is not None:
        out["fair"] = fair_out
    return out


async def realtime(ctx: Context, stack: Stack, cfg: SpikeConfig) -> dict[str, Any]:
    """The spike as users send it: 5,000/min = 83 requests per wall second for ``realtime_seconds``,
    on the same stack once the compressed spike has drained (renders stay compressed). Only the 202s
    are measured; the backlog it leaves is discarded with the stack."""
    rate = cfg.plan.spike_per_minute / 60.0
    prog = load.Progress()
    async with ctx.progress.watching(lambda: f"spike in real time: {rate:.0f} req/s, sent {prog.sent}, "
                                             f"errors {prog.errors}"):
        out = await accept.api_cpu(stack, _open_loop(stack, rate, cfg.realtime_seconds, prog))
    out.update({"seconds": cfg.realtime_seconds, "render_time_factor": cfg.plan.time_factor})
    return out


async def _open_loop(stack: Stack, rate: float, seconds: float, prog: load.Progress) -> dict[str, Any]:
    request = load.post_jobs(stack.api_url, headers=lambda i: tenant_headers(TENANT_A))
    run_ = await load.open_loop(stack.api_url, constant(rate, seconds), request, progress=prog, timeout=120)
    return accept.latency_block(run_, rate)


async def sample_in_flight(url: str, interval: float, into: list[tuple[float, dict[str, int]]]) -> None:
    """The simulator's count of unfinished jobs per provider, every ``interval`` seconds."""
    while True:
        try:
            stats_ = await simulator_stats(url)
            into.append((time.time(), {p: stats_[p]["in_flight"] for p in ACTIVE if p in stats_}))
        except (OSError, ValueError, KeyError):
            pass  # a missed sample
        await asyncio.sleep(interval)


def utilisation(cfg: SpikeConfig, lag: list[tuple[float, dict[str, int]]],
                in_flight: list[tuple[float, dict[str, int]]]) -> dict[str, dict[str, float | int]]:
    """Per provider: mean jobs in flight at the provider while more than a full limit of its jobs
    waited on its dispatch topic, as a share of the limit (1.0: never an idle slot)."""
    out: dict[str, dict[str, float | int]] = {}
    for p in ACTIVE:
        busy = [t for t, v in lag if v.get(p, 0) > cfg.limit]
        if not busy:
            continue
        start, end = min(busy), max(busy)
        seen = [v[p] for t, v in in_flight if start <= t <= end and p in v]
        if seen:
            mean = sum(seen) / len(seen)
            out[p] = {"mean_in_flight": mean, "share_of_limit": mean / cfg.limit, "samples": len(seen),
                      "backlogged_s": end - start}
    return out


def summarize(cfg: SpikeConfig, run_: load.Run, accepted: dict[str, load.Sample], queued: dict[str, float],
              submitted: dict[str, float], finished: dict[str, tuple[float, str]],
              lag: list[tuple[float, dict[str, int]]], end: float, sim: dict[str, Any]) -> dict[str, Any]:
    plan, f = cfg.plan, cfg.plan.time_factor
    start = run_.started_wall
    bin_s = bin_size(end - start)
    e2e = [finished[j][0] - a.done_wall for j, a in accepted.items() if j in finished]
    statuses = [finished[j][1] for j in accepted if j in finished]
    errors: dict[str, int] = {}
    for x in run_.samples:
        if x.status != 202:
            errors[x.error or str(x.status)] = errors.get(x.error or str(x.status), 0) + 1
    spike_start, spike_end = plan.spike_window()
    last_done = max((finished[j][0] for j in accepted if j in finished), default=start)
    plateau_from, plateau_to = start + spike_end + 5 * bin_s, last_done - 5 * bin_s
    plateau = [t for t in submitted.values() if plateau_from <= t <= plateau_to]
    arrivals = stats.rate_series([start + x.due for x in run_.samples], start, end, bin_s)
    series: dict[str, Any] = {
        "bin_s": bin_s,
        "t": [round(i * bin_s, 3) for i in range(len(arrivals))],
        "arrivals_per_s": arrivals,
        "submissions_per_s": stats.rate_series(submitted.values(), start, end, bin_s),
        "waiting": stats.level_series(queued.values(), [t for j, t in submitted.items() if j in queued],
                                      start, end, bin_s),
        "queue_t": [round(t - start, 3) for t, _ in lag],
        "dispatch_lag": [sum(v[p] for p in v if p != "requests") for _, v in lag],
        "requests_lag": [v["requests"] for _, v in lag],
    }
    accept_ms = [x.latency_ms for x in accepted.values()]
    return {
        "config": cfg.describe(),
        "offered": len(run_.samples), "accepted": len(accepted), "errors": errors,
        "accept_ms": stats.summary(accept_ms),
        "completed": statuses.count("completed"), "failed": statuses.count("failed"),
        "unfinished": len(accepted) - len(statuses),
        "e2e_wall_s": stats.summary(e2e),
        "e2e_sim_min": {k: (v / f / 60 if k != "count" else v) for k, v in stats.summary(e2e).items()},
        "drain_wall_s": last_done - (start + spike_start),
        "max_queue_depth": max(series["dispatch_lag"], default=0),
        "max_waiting": max(series["waiting"], default=0),
        "max_requests_lag": max(series["requests_lag"], default=0),
        "plateau_submissions_per_s": len(plateau) / (plateau_to - plateau_from) if plateau_to > plateau_from else None,
        "capacity_per_s": cfg.capacity_per_s(),
        "providers": {p: {k: sim[p][k]
                          for k in ("concurrency_limit", "max_concurrency", "rejected_429", "jobs_created",
                                    "render_seconds") if k in sim[p]}
                      for p in ACTIVE if p in sim},
        "series": series,
        "cdf_e2e_sim_min": [(round(v / f / 60, 3), round(q, 4)) for v, q in stats.cdf_points(e2e)],
        "cdf_accept_ms": [(round(v, 2), round(q, 4)) for v, q in stats.cdf_points(accept_ms)],
    }
