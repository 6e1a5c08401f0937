"""The operations dashboard's figures, from Prometheus samples; pure.

Every process exposes its own share of Floodgate's metrics (``floodgate.metrics``): the API its
accepts and latencies, each worker its providers' slots, queue and submissions. The dashboard
scrapes them all (the API's own registry and ``FLOODGATE_DASHBOARD_TARGETS``), and
:func:`read` sums the samples it needs across processes into one :class:`Reading`, exactly as a
``sum`` in PromQL would. A :class:`History` of readings gives the charts: rates are differences
of successive readings (a counter that went down, a restarted process, counts as a reset),
latency quantiles come from the buckets added over a trailing window, interpolated within a
bucket as ``histogram_quantile`` does. Nothing here keeps books of its own.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Sample(Protocol):
    """A Prometheus sample: prometheus_client's ``Sample`` fits."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def value(self) -> float: ...


PerProvider = dict[str, float]


@dataclass
class Reading:
    """The summed figures of every process at one instant (``at``, seconds)."""

    at: float
    accepted_http: float = 0.0
    """HTTP requests answered 202 (the API's count)."""
    admitted_other: float = 0.0
    """Jobs admitted from the SDK or a replay (the workers' count): arrivals that never passed the API."""
    submissions: PerProvider = field(default_factory=dict)
    queue_depth: PerProvider = field(default_factory=dict)
    inflight: PerProvider = field(default_factory=dict)
    limit: PerProvider = field(default_factory=dict)
    breaker_open: PerProvider = field(default_factory=dict)
    rate_limited: PerProvider = field(default_factory=dict)
    retries: PerProvider = field(default_factory=dict)
    reroutes: PerProvider = field(default_factory=dict)
    start_rate: PerProvider = field(default_factory=dict)
    """Jobs per second each provider's lines start while jobs wait, summed over the workers that
    know theirs (a worker says -1 until it does, and that is left out, not added)."""
    dead_letters: float = 0.0
    accept_buckets: dict[float, float] = field(default_factory=dict)
    """Cumulative count per upper bound (seconds) of ``floodgate_accept_latency_seconds``."""
    job_buckets: dict[float, float] = field(default_factory=dict)
    """The same for ``floodgate_job_latency_seconds`` of completed jobs (accepted → completed)."""

    @property
    def arrivals(self) -> float:
        return self.accepted_http + self.admitted_other

    @property
    def providers(self) -> list[str]:
        return sorted(set(self.submissions) | set(self.inflight) | set(self.limit) | set(self.queue_depth))


_PER_PROVIDER = {
    "floodgate_provider_submissions_total": ("submissions", "provider"),
    "floodgate_queue_depth": ("queue_depth", "provider"),
    "floodgate_provider_inflight": ("inflight", "provider"),
    "floodgate_provider_concurrency_limit": ("limit", "provider"),
    "floodgate_provider_breaker_open": ("breaker_open", "provider"),
    "floodgate_provider_rate_limited_total": ("rate_limited", "provider"),
    "floodgate_provider_retries_total": ("retries", "provider"),
    "floodgate_provider_reroutes_total": ("reroutes", "from_provider"),
}


def read(samples: Iterable[Sample], at: float) -> Reading:
    """Sum the dashboard's samples, from any number of processes, into one reading."""
    r = Reading(at)
    for s in samples:
        name, labels, value = s.name, s.labels, float(s.value)
        if not math.isfinite(value):
            continue
        if name in _PER_PROVIDER:
            attr, label = _PER_PROVIDER[name]
            table: PerProvider = getattr(r, attr)
            key = labels.get(label, "")
            table[key] = table.get(key, 0.0) + value
        elif name == "floodgate_provider_start_rate":
            if value >= 0:
                key = labels.get("provider", "")
                r.start_rate[key] = r.start_rate.get(key, 0.0) + value
        elif name == "floodgate_requests_accepted_total":
            r.accepted_http += value
        elif name == "floodgate_jobs_admitted_total" and labels.get("source") != "http":
            r.admitted_other += value
        elif name == "floodgate_dead_letters_total":
            r.dead_letters += value
        elif name == "floodgate_accept_latency_seconds_bucket":
            _add_bucket(r.accept_buckets, labels, value)
        elif name == "floodgate_job_latency_seconds_bucket" and labels.get("outcome") == "completed":
            _add_bucket(r.job_buckets, labels, value)
    return r


def _add_bucket(buckets: dict[float, float], labels: Mapping[str, str], value: float) -> None:
    try:
        le = float(labels["le"])
    except (KeyError, ValueError):
        return
    buckets[le] = buckets.get(le, 0.0) + value


def increase(before: float, after: float) -> float:
    """How much a summed counter grew; a drop means a process restarted (or left), whose count
    started again from zero, so the new value is all growth since, as Prometheus counts a reset."""
    return after - before if after >= before else after


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of observations counted in cumulative ``buckets`` (upper bound → count),
    interpolated linearly within its bucket; None when nothing was observed. A quantile in the
    ``+Inf`` bucket is the largest finite bound (nothing better is known)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_increase(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """Observations per bucket between two readings, each bucket counted as :func:`increase` does."""
    return {le: increase(before.get(le, 0.0), count) for le, count in after.items()}


def _per_s(before: float, after: float, dt: float) -> float:
    return increase(before, after) / dt if dt > 0 else 0.0


def _sum(table: Mapping[str, float]) -> float:
    return sum(table.values())


class History:
    """The last ``size`` readings, oldest first."""

    def __init__(self, size: int = 180, latency_window: float = 10.0) -> None:
        self.readings: deque[Reading] = deque(maxlen=size)
        self.latency_window = latency_window

    def add(self, reading: Reading) -> None:
        if self.readings and reading.at <= self.readings[-1].at:
            return  # a clock step back would make negative intervals
        self.readings.append(reading)

    @property
    def last_at(self) -> float | None:
        return self.readings[-1].at if self.readings else None

    def _window_start(self, index: int) -> Reading:
        """The oldest reading at most ``latency_window`` seconds before reading ``index``."""
        now = self.readings[index].at
        j = index
        while j > 0 and now - self.readings[j - 1].at <= self.latency_window:
            j -= 1
        return self.readings[j if j < index else max(0, index - 1)]

    def figures(self) -> dict[str, Any]:
        """The charts' series (one point per reading after the first) and the latest values."""
        rs: Sequence[Reading] = list(self.readings)
        providers = sorted({p for r in rs for p in r.providers})
        points: list[dict[str, Any]] = []
        for i in range(1, len(rs)):
            before, after = rs[i - 1], rs[i]
            dt = after.at - before.at
            start = self._window_start(i)
            accept = bucket_increase(start.accept_buckets, after.accept_buckets)
            jobs = bucket_increase(start.job_buckets, after.job_buckets)
            points.append({
                "at": after.at,
                "arrivals": _per_s(before.arrivals, after.arrivals, dt),
                "submissions": _per_s(_sum(before.submissions), _sum(after.submissions), dt),
                "submissions_by": {p: _per_s(before.submissions.get(p, 0.0), after.submissions.get(p, 0.0), dt)
                                   for p in providers},
                "queue_depth": {p: after.queue_depth.get(p, 0.0) for p in providers},
                "inflight": {p: after.inflight.get(p, 0.0) for p in providers},
                "limit": {p: after.limit.get(p, 0.0) for p in providers},
                "rate_limited": _per_s(_sum(before.rate_limited), _sum(after.rate_limited), dt),
                "retries": _per_s(_sum(before.retries), _sum(after.retries), dt),
                "reroutes": _per_s(_sum(before.reroutes), _sum(after.reroutes), dt),
                "dead_letters": _per_s(before.dead_letters, after.dead_letters, dt),
                "accept_p50_ms": _ms(bucket_quantile(0.5, accept)),
                "accept_p99_ms": _ms(bucket_quantile(0.99, accept)),
                "e2e_p50_s": bucket_quantile(0.5, jobs),
                "e2e_p99_s": bucket_quantile(0.99, jobs),
            })
        latest = rs[-1] if rs else Reading(0.0)
        totals = {"accepted": latest.arrivals, "submissions": _sum(latest.submissions),
                  "rate_limited": _sum(latest.rate_limited), "retries": _sum(latest.retries),
                  "reroutes": _sum(latest.reroutes), "dead_letters": latest.dead_letters}
        breakers = {p: ("open" if latest.breaker_open.get(p, 0.0) > 0 else "closed") for p in providers}
        return {"providers": providers, "points": points, "totals": totals, "breakers": breakers,
                "paces": {p: pace(latest, p) for p in providers}}


def pace(reading: Reading, provider: str) -> dict[str, float | None]:
    """How fast ``provider``'s line moves (``start_rate``, jobs per second; None: not known yet)
    and how long its queue would take to start at that pace (``wait_s``)."""
    rate = reading.start_rate.get(provider)
    depth = reading.queue_depth.get(provider, 0.0)
    return {"start_rate": rate, "queued": depth, "wait_s": depth / rate if rate else None}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def targets_from_file_sd(data: Any) -> list[str]:
    """The metrics URLs in a Prometheus ``file_sd`` document (``[{"targets": ["host:port"],
    "labels": {"__scheme__": "http", "__metrics_path__": "/metrics"}}]``); entries of another
    shape are skipped."""
    urls: list[str] = []
    if not isinstance(data, list):
        return urls
    for group in data:
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            continue
        given = group.get("labels")
        labels: dict[str, Any] = given if isinstance(given, dict) else {}
        scheme = str(labels.get("__scheme__", "http"))
        path = str(labels.get("__metrics_path__", "/metrics"))
        urls.extend(f"{scheme}://{t}{path}" for t in group["targets"] if isinstance(t, str) and t)
    return urls


__all__ = ["History", "Reading", "bucket_increase", "bucket_quantile", "increase", "read", "targets_from_file_sd"]
