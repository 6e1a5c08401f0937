"""API CPU per accepted request, A/B: ``python dev/accept_cpu.py --variant base=/path/to/old/tree --variant new=.``

Starts ``python -m floodgate.api`` from each variant's source tree (PYTHONPATH, same interpreter)
against one broker, warms it up, then offers the same open-loop load (``--rate`` POST /v1/jobs per
second for ``--seconds``) and reads the API process's user+system CPU from /proc around it. The
variants take turns ``--rounds`` times, so a noisy shared machine hurts both alike; compare them as
a ratio. Needs ``FLOODGATE_KAFKA_BOOTSTRAP`` (e.g. from ``floodgate broker start``).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from floodgate.bench import load
from floodgate.bench.arrivals import constant
from floodgate.bench.probes import cpu_seconds


def start_api(tree: Path, roles: str, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "FLOODGATE_TOPIC_PREFIX": f"cpu{uuid.uuid4().hex[:8]}.",
           "FLOODGATE_PARTITIONS": "2", "FLOODGATE_SIMULATOR_URL": "http://127.0.0.1:9",
           "FLOODGATE_LOG_LEVEL": "warning", "FLOODGATE_CACHE_DIR": tempfile.mkdtemp(prefix="accept-cpu-"),
           **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "floodgate.api", "--port", "0", "--roles", roles],
                            env=env, stdout=subprocess.PIPE, cwd=tree)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("api="):
        proc.kill()
        raise SystemExit(f"API from {tree} did not start: {line!r}")
    return proc, line.split("=", 1)[1]


async def measure(url: str, pid: int, rate: float, seconds: float, concurrency: int) -> dict[str, float]:
    await load.open_loop(url, constant(rate, 2.0), load.post_jobs(url))  # warm-up
    cpu0 = cpu_seconds(pid)
    if concurrency:  # closed loop: the same batching whatever the machine's noise does to latency
        run = await load.closed_loop(url, int(rate * seconds), load.post_jobs(url), concurrency=concurrency)
    else:
        run = await load.open_loop(url, constant(rate, seconds), load.post_jobs(url))
    cpu = cpu_seconds(pid) - cpu0
    ok = run.ok(202)
    lat = sorted(s.latency_ms for s in ok)
    return {"accepted": len(ok), "offered": len(run.samples), "cpu_ms_per_req": cpu * 1000 / max(len(ok), 1),
            "p50_ms": lat[len(lat) // 2] if lat else 0.0, "p99_ms": lat[int(len(lat) * 0.99)] if lat else 0.0}


def variants_from(specs: list[str]) -> list[tuple[str, Path, dict[str, str]]]:
    """``NAME=TREE[:ENV=VAL,...]`` each: its name, source tree and extra environment."""
    out = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        tree, _, envs = rest.partition(":")
        out.append((name, Path(tree).resolve(), dict(kv.split("=", 1) for kv in envs.split(",") if kv)))
    return out


def take_turns(variants: list[tuple[str, Path, dict[str, str]]], rounds: int, roles: str,
               measure_one: Callable[[str, int], Coroutine[Any, Any, dict[str, float]]], figure: str,
               unit: str) -> None:
    """Each round, an API of each variant in turn, measured by ``measure_one(url, pid)``; then the
    median of ``figure`` per variant, as a ratio to the first."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for r in range(rounds):
        for name, tree, extra in variants:
            proc, url = start_api(tree, roles, extra)
            try:
                time.sleep(0.5)
                out = asyncio.run(measure_one(url, proc.pid))
            finally:
                proc.terminate()
                proc.wait(30)
            results[name].append(out)
            print(f"round {r} {name}: {out}", flush=True)
    base = None
    for name, runs in results.items():
        cpu = statistics.median(x[figure] for x in runs)
        p99 = statistics.median(x["p99_ms"] for x in runs)
        base = base or cpu
        print(f"{name}: median CPU {cpu:.3f} ms/{unit} (ratio to first {cpu / base:.2f}), median p99 {p99:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", action="append", required=True, help="NAME=TREE[:ENV=VAL,...]")
    p.add_argument("--roles", default="ingress")
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=0,
                   help="closed loop, this many requests outstanding (rate x seconds of them), not open loop")
    args = p.parse_args()
    take_turns(variants_from(args.variant), args.rounds, args.roles,
               lambda url, pid: measure(url, pid, args.rate, args.seconds, args.concurrency),
               "cpu_ms_per_req", "accepted request")


if __name__ == "__main__":
    main()
