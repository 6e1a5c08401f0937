"""A peer in the report: the same drain against Floodgate, Celery + Redis (the usual alternative,
``floodgate.bench.celerypeer``) and the naive endpoint behind nginx (``floodgate.bench.baseline``'s
setup), one after the other, each with a fresh simulator of the same seeded config and the same
open-loop load driver. Figures and the table: ``floodgate.bench.peerreport``.

Why Celery's pool is twice the provider's limit: Celery knows nothing of a provider's concurrency
limit, so its pool is sized for throughput and the limit is found by the provider's 429s. A pool of
exactly the limit only works while one worker serves one provider (a second worker, or a second
provider on the same queue, breaks it), and Celery's default (prefork, one process per CPU: 2 here)
would hold two renders at once since each task polls its own. Twice the limit is a modest headroom;
the figure shows what it costs in 429s.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from floodgate import codec
from floodgate.bench import load, nginx, peerreport, redisserver, stats
from floodgate.bench.baseline import naive_behind_nginx, simulator, spawn, stop
from floodgate.bench.context import Context
from floodgate.bench.nginx import DEFAULT_READ_TIMEOUT
from floodgate.bench.probes import TopicTap, simulator_stats
from floodgate.bench.stacks import SimProvider, bench_stack
from floodgate.devstack import Stack

PROVIDER, MODEL = "kling", "kling-2.1"
ROUTES = {MODEL: [{"provider": PROVIDER, "provider_model": MODEL}]}  # one model, one provider: no fallback


@dataclass(frozen=True)
class PeerConfig:
    jobs: int = 2000
    rate: float = 200.0  # arrivals per second, open loop
    limit: int = 10
    render: tuple[float, float] = (0.2, 1.0)  # wall seconds, uniform (time factor 1)
    queue_delay: float = 0.0  # the simulator's own queue: none, so a slot is a render
    poll: float = 0.05  # seconds between status polls (Celery's task, the naive endpoint)
    celery_concurrency: int = 20  # twice the limit: see the module's docstring
    drain_timeout: float = 600.0  # wall seconds after the last arrival
    systems: tuple[str, ...] = peerreport.SYSTEMS

    def plan(self) -> dict[str, SimProvider]:
        return {PROVIDER: SimProvider(self.limit, self.render, self.queue_delay)}

    def schedule(self) -> list[float]:
        return [i / self.rate for i in range(self.jobs)]


def body(i: int) -> bytes:
    return load.job_body(i, MODEL)


def stack_for(ctx: Context, cfg: PeerConfig) -> Stack:
    return bench_stack(ctx.settings, ctx.bootstrap, ctx.work_dir, "peer", cfg.plan(), 1.0, routes=ROUTES)


async def _until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _drive(ctx: Context, name: str, url: str, cfg: PeerConfig, timeout: float = 60.0) -> load.Run:
    prog = load.Progress()
    async with ctx.progress.watching(lambda: f"peer/{name}: sent {prog.sent}/{cfg.jobs}, answered {prog.answered}"):
        return await load.open_loop(url, cfg.schedule(), load.post_jobs(url, body=body), progress=prog,
                                    timeout=timeout)


def figures(cfg: PeerConfig, run_: load.Run, answer: str, accepted: int, done: dict[str, tuple[float, str]],
            sim: dict[str, Any], accept_ms: list[float]) -> dict[str, Any]:
    """One system's row: ``done`` maps a job to (wall time known done, status)."""
    walls = [t for t, _ in done.values()]
    return {"answer": answer, "offered": len(run_.samples), "accepted": accepted,
            "delivered": sum(1 for _, s in done.values() if s == "completed"),
            "unfinished": accepted - len(done),
            "drain": peerreport.drain(run_.started_wall, walls, sim, cfg.limit, cfg.queue_delay),
            "provider": peerreport.provider(sim, len(run_.samples)),
            "accept_ms": stats.summary(accept_ms)}


async def run_floodgate(ctx: Context, stack: Stack, cfg: PeerConfig) -> dict[str, Any]:
    finished: dict[str, tuple[float, str]] = {}

    def on_result(msg: Any) -> None:
        snap = codec.decode("JobSnapshot", msg.value(), msg.headers())
        finished.setdefault(snap["job_id"], (msg.timestamp()[1] / 1000, snap["status"]))

    with TopicTap(stack.bootstrap, {stack.settings.topic("results"): on_result}):
        run_ = await _drive(ctx, "floodgate", stack.api_url, cfg)
        accepted = {x.job_id for x in run_.ok(202) if x.job_id}
        await _until(lambda: accepted <= finished.keys(), cfg.drain_timeout)
    sim = (await simulator_stats(stack.simulator_url))[PROVIDER]
    done = {j: finished[j] for j in accepted if j in finished}
    return figures(cfg, run_, "202 at once", len(accepted), done, sim, [x.latency_ms for x in run_.ok(202)])


@contextlib.contextmanager
def celery_stack(home: Path, sim_url: str, routing: Path, cfg: PeerConfig) -> Iterator[tuple[str, str]]:
    """Redis, a Celery worker and the enqueueing API: (the API's URL, Redis's URL)."""
    me = [sys.executable, "-m", "floodgate.bench.celerypeer"]
    with redisserver.RedisServer(home / "redis") as broker:
        worker, _ = spawn("celery-worker", [*me, "worker", "--redis", broker.url, "--concurrency",
                                            str(cfg.celery_concurrency), "--poll", str(cfg.poll)],
                          home, "celery-worker=")
        try:
            api, url = spawn("celery-api", [*me, "api", "--redis", broker.url, "--simulator", sim_url,
                                            "--routing", str(routing)], home, "celery-api=")
            try:
                yield url, broker.url
            finally:
                stop(api)
        finally:
            stop(worker)


async def run_celery(ctx: Context, cfg: PeerConfig, home: Path) -> dict[str, Any]:
    if redisserver.binary() is None:
        return {"skipped": redisserver.MISSING}
    import redis

    from floodgate.bench.celerypeer import DONE

    with simulator(home, cfg.plan(), 1.0, ROUTES) as (sim_url, routing), \
            celery_stack(home, sim_url, routing, cfg) as (url, redis_url):
        store = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            run_ = await _drive(ctx, "celery", url, cfg)
            accepted = len(run_.ok(202))
            await _until(lambda: store.hlen(DONE) >= accepted, cfg.drain_timeout)
            raw = store.hgetall(DONE)
        finally:
            store.close()
        sim = (await simulator_stats(sim_url))[PROVIDER]
    done = {str(k): (float(v.split()[0]), str(v.split()[1])) for k, v in raw.items()}
    return figures(cfg, run_, "202 at once", accepted, done, sim, [x.latency_ms for x in run_.ok(202)])


async def run_naive(ctx: Context, cfg: PeerConfig, home: Path) -> dict[str, Any]:
    if nginx.binary() is None:
        return {"skipped": "nginx is not installed (FLOODGATE_NEED_NGINX=1 bash dev/bootstrap.sh installs it)"}
    with simulator(home, cfg.plan(), 1.0, ROUTES) as (sim_url, routing), \
            naive_behind_nginx(home, sim_url, routing, cfg.poll, DEFAULT_READ_TIMEOUT) as url:
        run_ = await _drive(ctx, "naive", url, cfg, timeout=2 * DEFAULT_READ_TIMEOUT + 30)
        sim = (await simulator_stats(sim_url))[PROVIDER]
    # A request is done when answered; its video came with a 200. Its "accept" is that answer.
    done = {str(x.index): (x.done_wall, "completed" if x.status == 200 else str(x.status or x.error))
            for x in run_.samples}
    out = figures(cfg, run_, "200 with the video after the render, or the provider's 429", len(run_.ok(200)),
                  {k: v for k, v in done.items() if v[1] == "completed"}, sim,
                  [x.latency_ms for x in run_.samples])
    out["unfinished"] = 0
    out["outcomes"] = {s: sum(1 for v in done.values() if v[1] == s) for s in sorted({v[1] for v in done.values()})}
    return out


async def run(ctx: Context, stack: Stack | None, cfg: PeerConfig) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name in cfg.systems:
        home = ctx.work_dir / f"peer-{name}"
        home.mkdir(parents=True, exist_ok=True)
        try:
            if name == "floodgate":
                assert stack is not None
                systems[name] = await run_floodgate(ctx, stack, cfg)
            elif name == "celery":
                systems[name] = await run_celery(ctx, cfg, home)
            else:
                systems[name] = await run_naive(ctx, cfg, home)
        except Exception as exc:  # one system's failure must not lose the others' figures
            systems[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return {"config": asdict(cfg), "systems": systems}
