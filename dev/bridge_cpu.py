"""API CPU per provider webhook, A/B: ``python dev/bridge_cpu.py --variant base=/path/to/old/tree --variant new=.``

The webhook bridge's side of ``dev/accept_cpu.py``: starts ``python -m floodgate.api --roles bridge``
from each variant's source tree against one broker and offers the same open-loop load of signed
completion webhooks (``--rate`` per second for ``--seconds``), each naming a job of its own, so
each is written to ``webhooks`` and its slot release to ``release.<provider>``, as when a job
ends. It reads the API process's user+system CPU from /proc around the load. The variants take
turns ``--rounds`` times; compare them as a ratio. Needs ``FLOODGATE_KAFKA_BOOTSTRAP``.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import orjson
from accept_cpu import start_api

from connectors.simulator import DEV_WEBHOOK_SECRET
from floodgate.bench import load
from floodgate.bench.arrivals import constant
from floodgate.bench.probes import cpu_seconds
from floodgate.ids import new_job_id
from floodgate.signing import signature_headers

PROVIDER = "kling"


class Deliveries:
    """Signed completion webhooks, made before the load so that signing costs the load nothing."""

    def __init__(self, count: int) -> None:
        now = time.time()
        self.bodies = [orjson.dumps({
            "id": f"evt_{i}", "object": "event", "type": "video.completed", "created_at": int(now),
            "data": {"id": f"video_{i}", "object": "video", "status": "completed", "progress": 100,
                     "video_url": "https://files.example/v.mp4", "metadata": {"job_id": new_job_id()}},
        }) for i in range(count)]
        # build_request says the body is JSON itself.
        self.headers = [signature_headers(DEV_WEBHOOK_SECRET, f"msg_{i}_{now}", body, now)
                        for i, body in enumerate(self.bodies)]

    def request(self, url: str, offset: int) -> load.RequestFn:
        return load.post_jobs(url, f"/webhooks/{PROVIDER}", lambda i: self.bodies[offset + i],
                              lambda i: self.headers[offset + i])


async def measure(url: str, pid: int, rate: float, seconds: float) -> dict[str, float]:
    warm = int(rate * 2.0)
    deliveries = Deliveries(warm + int(rate * seconds) + 1)
    await load.open_loop(url, constant(rate, 2.0), deliveries.request(url, 0))
    cpu0 = cpu_seconds(pid)
    run = await load.open_loop(url, constant(rate, seconds), deliveries.request(url, warm))
    cpu = cpu_seconds(pid) - cpu0
    ok = run.ok(200)
    lat = sorted(s.latency_ms for s in ok)
    return {"answered_200": len(ok), "offered": len(run.samples), "cpu_ms_per_webhook": cpu * 1000 / max(len(ok), 1),
            "p50_ms": lat[len(lat) // 2] if lat else 0.0, "p99_ms": lat[int(len(lat) * 0.99)] if lat else 0.0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", action="append", required=True, help="NAME=TREE[:ENV=VAL,...]")
    p.add_argument("--rate", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    variants = []
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        tree, _, envs = rest.partition(":")
        extra = dict(kv.split("=", 1) for kv in envs.split(",") if kv)
        variants.append((name, Path(tree).resolve(), extra))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        for name, tree, extra in variants:
            proc, url = start_api(tree, "bridge", extra)
            try:
                time.sleep(0.5)
                out = asyncio.run(measure(url, proc.pid, args.rate, args.seconds))
            finally:
                proc.terminate()
                proc.wait(30)
            results[name].append(out)
            print(f"round {r} {name}: {out}", flush=True)
    base = None
    for name, runs in results.items():
        cpu = statistics.median(x["cpu_ms_per_webhook"] for x in runs)
        p99 = statistics.median(x["p99_ms"] for x in runs)
        base = base or cpu
        print(f"{name}: median CPU {cpu:.3f} ms/webhook (ratio to first {cpu / base:.2f}), median p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
