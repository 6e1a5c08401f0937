"""API CPU per provider webhook, A/B: ``python dev/bridge_cpu.py --variant base=/path/to/old/tree --variant new=.``

The webhook bridge's side of ``dev/accept_cpu.py``: starts ``python -m floodgate.api --roles bridge``
from each variant's source tree against one broker and offers the same open-loop load of signed
completion webhooks (``--rate`` per second for ``--seconds``), each naming a job of its own, so
each is written to ``webhooks`` and its slot release to ``release.<provider>``, as when a job
ends. It reads the API process's user+system CPU from /proc around the load. The variants take
turns ``--rounds`` times; compare them as a ratio. Needs ``FLOODGATE_KAFKA_BOOTSTRAP``.

Each round signs its webhooks before its load, so keep ``--seconds`` well inside the bridge's
replay window (five minutes): a webhook signed longer ago is refused (401), and the run's count
of 200s says so.
"""
from __future__ import annotations

import argparse
import time

import orjson
from accept_cpu import take_turns, variants_from

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
    take_turns(variants_from(args.variant), args.rounds, "bridge",
               lambda url, pid: measure(url, pid, args.rate, args.seconds), "cpu_ms_per_webhook", "webhook")


if __name__ == "__main__":
    main()
