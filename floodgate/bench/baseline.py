"""The naive baseline under the same spike: ``naive`` (a synchronous endpoint that submits to
the provider and waits for the video) behind Debian's nginx with its default 60 s
``proxy_read_timeout``, both time-compressed like the renders, against a fresh simulator with
the same providers. What the client gets back is counted: 200 (a video), 429 (provider full,
passed through), 504 (nginx gave up waiting), client timeouts, anything else.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floodgate.bench import load, nginx, stats
from floodgate.bench.context import Context
from floodgate.bench.nginx import DEFAULT_READ_TIMEOUT, Nginx
from floodgate.bench.probes import simulator_stats
from floodgate.bench.spike import ACTIVE, SpikeConfig
from floodgate.bench.stacks import SimProvider, routing_table, write_simulator_config
from floodgate.devstack import Child
from floodgate.errors import FloodgateError
from floodgate.procs import die_with_parent, free_port


@dataclass(frozen=True)
class BaselineConfig:
    poll_sim_seconds: float = 2.0  # how often the naive endpoint asks the provider, simulated


def spawn(name: str, argv: list[str], home: Path, marker: str, timeout: float = 30.0) -> tuple[Child, str]:
    """Start a child process and wait for the line carrying its URL after ``marker``."""
    log = home / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)  # as devstack: dies with us
    child = Child(name, proc, log)
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(marker):
                return child, line[len(marker):].strip()
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise FloodgateError(f"{name} did not start:\n{child.tail()}")
        time.sleep(0.05)


def stop(child: Child) -> None:
    if child.proc.poll() is None:
        child.proc.terminate()
        try:
            child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.proc.kill()


def outcome(sample: load.Sample) -> str:
    if sample.error == "timeout":
        return "client_timeout"
    if sample.error:
        return "connection_error"
    return str(sample.status) if sample.status in (200, 429, 502, 504) else "other"


@contextlib.contextmanager
def simulator(home: Path, plan: Mapping[str, SimProvider], time_factor: float,
              routes: Mapping[str, list[dict[str, str]]] | None = None) -> Iterator[tuple[str, Path]]:
    """A fresh simulator for ``plan`` and a routing file pointing at it: (its URL, the file)."""
    sim_port = free_port()
    sim_config = write_simulator_config(home / "simulator.json", plan, time_factor)
    routing = home / "routing.json"
    routing.write_text(json.dumps(routing_table(plan, f"http://127.0.0.1:{sim_port}", routes)))
    sim, sim_url = spawn("simulator", [sys.executable, "-m", "connectors.simulator", "--config", str(sim_config),
                                       "--port", str(sim_port)], home, "simulator=")
    try:
        yield sim_url, routing
    finally:
        stop(sim)


@contextlib.contextmanager
def naive_behind_nginx(home: Path, sim_url: str, routing: Path, poll: float, read_timeout: float) -> Iterator[str]:
    """The naive endpoint against ``sim_url``, behind Debian's nginx: the proxy's URL."""
    naive, naive_url = spawn("naive", [sys.executable, "-m", "floodgate.bench.naive", "--simulator", sim_url,
                                       "--routing", str(routing), "--poll", str(poll)], home, "naive=")
    try:
        with Nginx(home / "nginx", int(naive_url.rsplit(":", 1)[1]), read_timeout) as proxy:
            yield proxy.url
    finally:
        stop(naive)


async def run(ctx: Context, spike: SpikeConfig, cfg: BaselineConfig) -> dict[str, Any]:
    if nginx.binary() is None:
        return {"skipped": "nginx is not installed (FLOODGATE_NEED_NGINX=1 bash dev/bootstrap.sh installs "
                           "nginx-light; make bench does)"}
    f = spike.plan.time_factor
    home = ctx.work_dir / "naive"
    home.mkdir(parents=True, exist_ok=True)
    read_timeout = DEFAULT_READ_TIMEOUT * f
    poll = max(0.01, cfg.poll_sim_seconds * f)
    with simulator(home, spike.providers(), f) as (sim_url, routing), \
            naive_behind_nginx(home, sim_url, routing, poll, read_timeout) as url:
        prog = load.Progress()
        schedule = spike.plan.schedule()
        async with ctx.progress.watching(lambda: f"naive: sent {prog.sent}/{len(schedule)}, "
                                                 f"answered {prog.answered}"):
            run_ = await load.open_loop(url, schedule, load.post_jobs(url), progress=prog,
                                        timeout=2 * read_timeout + 30)
        providers_ = await simulator_stats(sim_url)
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    for x in run_.samples:
        counts[outcome(x)] = counts.get(outcome(x), 0) + 1
        if x.error:
            errors[x.error] = errors.get(x.error, 0) + 1
    n = len(run_.samples)
    ok = [x.latency_ms / 1000 for x in run_.samples if x.status == 200]
    return {
        "proxy": (f"nginx (Debian package), proxy_read_timeout {DEFAULT_READ_TIMEOUT:.0f} s × {f}"
                  f" = {read_timeout:.3f} s"),
        "offered": n, "outcomes": counts, "client_errors": errors,
        "rates": {k: v / n for k, v in counts.items()} if n else {},
        "ok_wall_s": stats.summary(ok),
        "ok_sim_min": {k: (v / f / 60 if k != "count" else v) for k, v in stats.summary(ok).items()},
        "providers": {p: {k: providers_[p][k] for k in ("concurrency_limit", "max_concurrency", "rejected_429",
                                                        "jobs_created")} for p in ACTIVE if p in providers_},
        "cdf_response_ms": [(round(v, 2), round(q, 4)) for v, q in
                            stats.cdf_points([x.latency_ms for x in run_.samples])],
    }
