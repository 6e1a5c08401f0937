"""Full-collection (gen2) pauses with a large job view: ``python dev/gc_pause.py 100000 [freeze]``.

Fills a ``JobView`` with N snapshots as a caught-up API holds them, times every gen2 collection
(``gc.callbacks``) during the fill, one explicit full collection (the pause a serving process
would take), then 50k accepts' worth of ``put_local`` with per-request garbage. With ``freeze``,
``gc.freeze()`` runs after the fill, as ``floodgate.procs.freeze_heap`` does after catch-up.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

from floodgate.api.resources import queued_snapshot
from floodgate.api.view import JobView
from floodgate.ids import new_job_id

pauses: list[float] = []
_started = [0.0]


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    elif info["generation"] == 2:
        pauses.append((time.perf_counter() - _started[0]) * 1000)


def request(i: int) -> dict[str, Any]:
    return {"job_id": new_job_id(), "tenant": "default", "user_id": f"u{i % 97}", "model": "kling-2.1",
            "webhook_url": None, "metadata": {"order": str(i)}, "accepted_at": 1_700_000_000_000 + i}


async def main(n: int, freeze: bool) -> None:
    gc.callbacks.append(_timed)
    view = JobView(n + 10)
    t = time.perf_counter()
    for i in range(n):
        view.apply({**queued_snapshot(request(i)), "version": 3, "status": "running", "progress": 0.5})
    print(f"filled {n} in {time.perf_counter() - t:.1f}s; gen2 during the fill: {len(pauses)}, "
          f"longest {max(pauses, default=0):.1f} ms; tracked objects {len(gc.get_objects())}")
    if freeze:
        gc.collect()
        gc.freeze()
    t = time.perf_counter()
    gc.collect(2)
    print(f"one full collection now: {(time.perf_counter() - t) * 1000:.1f} ms")
    pauses.clear()
    t = time.perf_counter()
    churn: list[Any] = []
    for i in range(50_000):
        view.put_local(queued_snapshot(request(i)))
        churn = [{"a": i} for _ in range(20)]  # a request's short-lived objects
    del churn
    print(f"50k accepts in {time.perf_counter() - t:.1f}s: gen2 collections {len(pauses)}, "
          f"pauses ms {[round(p, 1) for p in pauses]}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2:] == ["freeze"]))
