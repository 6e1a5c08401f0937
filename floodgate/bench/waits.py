"""The waiting user's numbers, from a spike run's records; pure.

* **ETA error.** A sampled job's first GET that carried an ``eta_seconds`` (read ``read_at``, a few
  ms after its 202) predicted its start at ``read_at + eta_seconds``; the job actually left its
  provider's line when its slot recorded the provider's job (the slot log record's timestamp). The
  error is the absolute percentage error of the predicted wait against the actual one, both counted
  from ``read_at``. Jobs whose actual wait was shorter than ``min_wait`` are left out of the
  percentages (a few hundredths of a second of wait make any estimate's percentage huge, and nobody
  reads an ETA for them) and counted apart.
* **Per-tenant waits**: accept (the 202 at the client) → start (the provider took it), per tenant.
* **Fair share**: the late tenant's median wait as a share of the bursting tenant's.
* **Spillover**: how much shorter the drain is with spillover than without, and how many jobs
  spilled (the workers' ``floodgate_spilled_total``; the jobs' ``serving_model``).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from floodgate.bench import stats

TENANT_A, TENANT_B = "tenant-a", "tenant-b"
"""The spike's tenants: A sends the first part of the spike, B the rest of the traffic."""


@dataclass(frozen=True)
class EtaReading:
    """What a job's first GET with a number said (wall-clock epoch seconds)."""

    job_id: str
    accepted_at: float  # the 202 reached the client
    read_at: float  # the GET's answer reached the client
    eta_seconds: float
    queue_position: int | None = None


def ape(predicted: float, actual: float) -> float:
    """Absolute percentage error (0.25 = 25%) of ``predicted`` against ``actual`` (> 0)."""
    if not actual > 0:
        raise ValueError("the actual value must be positive")
    return abs(predicted - actual) / actual


def eta_error(readings: Iterable[EtaReading], started: Mapping[str, float], min_wait: float) -> dict[str, Any]:
    """p50/p90 of the ETA's absolute percentage error over ``readings`` whose job started (``started``:
    job id → wall time it left the line) at least ``min_wait`` seconds after the reading; the
    median signed error (> 0: the ETA said longer than it took); how long after the 202 the
    readings came."""
    readings = list(readings)
    errors, signed = [], []
    unstarted = short = 0
    for r in readings:
        start = started.get(r.job_id)
        if start is None:
            unstarted += 1
            continue
        actual = start - r.read_at
        if actual < min_wait:
            short += 1
            continue
        errors.append(ape(r.eta_seconds, actual))
        signed.append((r.eta_seconds - actual) / actual)
    return {"count": len(errors), "readings": len(readings), "min_wait_s": min_wait,
            "ape_p50": stats.percentile(errors, 0.5), "ape_p90": stats.percentile(errors, 0.9),
            "signed_p50": stats.percentile(signed, 0.5),
            "unstarted": unstarted, "shorter_than_min_wait": short,
            "read_after_accept_ms": stats.summary([(r.read_at - r.accepted_at) * 1000 for r in readings])}


def eta_points(readings: Iterable[EtaReading], started: Mapping[str, float], origin: float,
               model_of: Mapping[str, str] | None = None) -> list[tuple[float, float, float, int | None, str | None]]:
    """(read at, eta, actual wait, queue position, model) per started reading, seconds (read at:
    since ``origin``; model: ``model_of``'s label for the job, None if it has none), for
    report.json: where in the run the ETA was off, which way, whether the place or the pace
    (eta ÷ (position + 1)) was, and at which provider's line."""
    model_of = model_of or {}
    return [(round(r.read_at - origin, 3), r.eta_seconds, round(started[r.job_id] - r.read_at, 3), r.queue_position,
             model_of.get(r.job_id)) for r in readings if r.job_id in started]


def tenant_of_arrival(due: float, spike: tuple[float, float], burst_share: float) -> str:
    """The spike's tenants by arrival (``due``, wall seconds from the start): A sends the first
    ``burst_share`` of the spike window, B everything else (the baseline before and after, and
    the rest of the spike: it arrives a moment after A's burst)."""
    start, end = spike
    return TENANT_A if start <= due < start + burst_share * (end - start) else TENANT_B


def in_sample(index: int, every: int) -> bool:
    """Whether request ``index`` is one of about one in ``every`` sampled: by a hash of the index,
    not ``index % every``. The load generator cycles through the models (request i asks for
    ``MODELS[i % 3]``), so every third request was the same model: the spike's ETA sample read
    wan-2.6 jobs alone, never kling's long line or sora's fallback."""
    if every <= 1:
        return True
    digest = hashlib.blake2b(index.to_bytes(8, "big"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % every == 0


def sample_every(total: int, max_samples: int) -> int:
    """Sample about one accepted job in k (``in_sample``) so that about ``max_samples`` of ``total`` are read."""
    if max_samples < 1:
        raise ValueError("max_samples must be at least 1")
    return max(1, math.ceil(total / max_samples))


def tenant_waits(tenant_of: Mapping[str, str], accepted_at: Mapping[str, float],
                 started: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per tenant: wait summary (seconds, accept → start) of its accepted jobs, and how many never
    started. A start stamped before the 202 reached the client (a free slot) counts as 0."""
    waits: dict[str, list[float]] = {}
    unstarted: dict[str, int] = {}
    for job_id, tenant in tenant_of.items():
        accepted = accepted_at.get(job_id)
        if accepted is None:
            continue
        waits.setdefault(tenant, [])
        unstarted.setdefault(tenant, 0)
        start = started.get(job_id)
        if start is None:
            unstarted[tenant] += 1
        else:
            waits[tenant].append(max(0.0, start - accepted))
    return {t: {**stats.summary(w), "unstarted": unstarted[t]} for t, w in sorted(waits.items())}


def fair_ratio(waits: Mapping[str, Mapping[str, Any]], first: str = TENANT_A, late: str = TENANT_B) -> float:
    """The late tenant's median wait over the bursting tenant's (NaN when either is missing)."""
    def p50(tenant: str) -> float:
        value = waits.get(tenant, {}).get("p50")
        return float(value) if isinstance(value, (int, float)) else math.nan

    return stats.ratio(p50(late), p50(first))


def reduction(without: float | None, with_: float | None) -> float:
    """How much shorter ``with_`` is than ``without`` (0.25: a quarter shorter); NaN when missing."""
    if not isinstance(without, (int, float)) or not isinstance(with_, (int, float)) or not without > 0:
        return math.nan
    return 1.0 - with_ / without


def spilled_counts(metrics_text: str) -> dict[str, float]:
    """``floodgate_spilled_total`` of one worker's Prometheus text, as ``"from→to": count``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "floodgate_spilled":
            continue
        for sample in family.samples:
            if sample.name == "floodgate_spilled_total":
                key = f"{sample.labels['from_provider']}→{sample.labels['to_provider']}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def spilled_jobs(models: Mapping[str, tuple[str, str | None]]) -> int:
    """Jobs served by another model than the one asked for (job id → (model, serving_model))."""
    return sum(1 for model, serving in models.values() if serving and serving != model)


__all__ = ["TENANT_A", "TENANT_B", "EtaReading", "ape", "eta_error", "eta_points", "fair_ratio", "reduction",
           "in_sample", "sample_every", "spilled_counts", "spilled_jobs", "tenant_of_arrival", "tenant_waits"]
