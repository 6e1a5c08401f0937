"""The fair queue, on the spike's stack once its backlog has drained: tenant A bursts ``burst``
jobs at once, tenant B sends ``late`` jobs a moment (``delay_s``) after A's last one, equal
weights, the same models and providers as the spike. With a plain first-come line B would wait
behind all of A's burst; with the fair line B's jobs take the slots that free until B holds its
share of them, so B's median wait should be a small share of A's (the bar: under 10%).

Waits are accept (the 202 at the client) → start (the slot record that says the provider took the
job), read from the spike's own tap of the slot logs, which keeps running during this part.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from floodgate.bench import load
from floodgate.bench.waits import TENANT_A, TENANT_B, fair_ratio, tenant_waits
from floodgate.devstack import Stack


@dataclass(frozen=True)
class FairConfig:
    burst: int = 300  # tenant A's jobs, sent at ``rate``
    late: int = 10  # tenant B's jobs, ``delay_s`` after A's last
    delay_s: float = 1.0  # wall seconds: a moment, against the burst's ~30 s of provider work
    rate: float = 1000.0  # requests per wall second within each tenant's burst
    models: tuple[str, ...] = ("kling-2.1", "wan-2.6")  # each tenant's jobs alternate: both providers
    timeout: float = 240.0  # wall seconds for every accepted job to start

    def schedule(self) -> list[float]:
        """A's requests, then B's: offsets in wall seconds; request i < ``burst`` is A's."""
        a = [i / self.rate for i in range(self.burst)]
        b_from = (a[-1] if a else 0.0) + self.delay_s
        return a + [b_from + j / self.rate for j in range(self.late)]

    def tenant(self, index: int) -> str:
        return TENANT_A if index < self.burst else TENANT_B


async def run(stack: Stack, cfg: FairConfig, started: Mapping[str, float],
              headers: Callable[[str], Mapping[str, str]]) -> dict[str, Any]:
    """Send both bursts; wait until every accepted job has started (``started``: job id → wall time,
    kept up to date by the caller's tap); each tenant's waits and B's median over A's."""
    t0 = time.monotonic()

    def body(i: int) -> bytes:
        return load.job_body(i, model=cfg.models[i % len(cfg.models)])

    request = load.post_jobs(stack.api_url, body=body, headers=lambda i: headers(cfg.tenant(i)))
    run_ = await load.open_loop(stack.api_url, cfg.schedule(), request, timeout=60)
    accepted = {x.job_id: x for x in run_.ok(202) if x.job_id}
    deadline = time.monotonic() + cfg.timeout
    while not accepted.keys() <= started.keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    tenant_of = {job_id: cfg.tenant(x.index) for job_id, x in accepted.items()}
    waits = tenant_waits(tenant_of, {job_id: x.done_wall for job_id, x in accepted.items()}, started)
    errors: dict[str, int] = {}
    for x in run_.samples:
        if x.status != 202:
            errors[x.error or str(x.status)] = errors.get(x.error or str(x.status), 0) + 1
    return {"config": asdict(cfg), "offered": len(run_.samples), "accepted": len(accepted), "errors": errors,
            "waits": waits, "ratio": fair_ratio(waits), "seconds": time.monotonic() - t0}
