"""The chaos checker: what a run's history says about Floodgate's promises (pure, no I/O).

A history is what the client saw (every 202 with its job id, every job's final GET), what the
topics hold (the requests and webhooks the services stored, every result record with its Kafka
timestamp) and what the provider saw (each provider job with the Floodgate job and attempt it was
created for, and the webhook events its receiver answered 2xx). The checker reduces it to the
figures of one report row; ``Verdict.passed`` is the bar: nothing lost, duplicated, over the
limit or stuck, and nothing acknowledged missing from Kafka.

Definitions (the README's "Chaos suite" repeats them for readers of the report):

- *lost*: answered 202 and then unknown to Floodgate: not in the requests topic, no result, and
  the final GET finds nothing.
- *stuck*: known, yet not terminal (no result record, final GET not terminal) when the run ended,
  which is past every job's deadline (the run ends only when every job is terminal or none has
  ended for the job timeout plus a minute).
- *duplicated*: more than one provider job created for one Floodgate job attempt (the attempt is
  the provider's Idempotency-Key, ``<job_id>:<attempt>``).
- *over-limit moments*: provider job creations that took the provider's count of unfinished jobs
  above Floodgate's configured limit (a sweep over the provider's created/completed times).
- *recovery* after a fault: the time from the fault to the next completion, and to the end of the
  first window (``RATE_WINDOW`` s) whose completion rate is back to half the rate of the
  ``RATE_WINDOW`` s before the fault.
"""
from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
RATE_WINDOW = 5.0
"""Seconds over which throughput before and after a fault is compared."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    at: float
    """Wall clock of the 202."""


@dataclass(frozen=True)
class FinalRead:
    job_id: str
    status: str | None
    """The job's status in its last GET; None when the API did not know the job (404)."""


@dataclass(frozen=True)
class ResultRecord:
    job_id: str
    status: str
    at: float
    """The record's Kafka timestamp (wall clock seconds)."""


@dataclass(frozen=True)
class ProviderJob:
    provider: str
    provider_job_id: str
    job_id: str | None
    """The Floodgate job it was created for (the request's metadata)."""
    idempotency_key: str | None
    created_at: float
    completed_at: float | None
    webhooks_delivered: tuple[str, ...] = ()

    @property
    def attempt_key(self) -> str:
        """Which Floodgate job attempt this provider job belongs to."""
        return self.idempotency_key or f"{self.job_id}:?"


@dataclass(frozen=True)
class Fault:
    name: str
    at: float


@dataclass
class History:
    scenario: str
    accepted: list[Accepted] = field(default_factory=list)
    finals: list[FinalRead] = field(default_factory=list)
    results: list[ResultRecord] = field(default_factory=list)
    requested: set[str] | None = None
    """Job ids found in the requests topic (None: not read, not checked)."""
    webhook_ids: set[str] | None = None
    """webhook-id of every record in the webhooks topic (None: not read, not checked)."""
    provider_jobs: list[ProviderJob] = field(default_factory=list)
    limits: Mapping[str, int] = field(default_factory=dict)
    """Floodgate's concurrency limit per provider (the routing file's)."""
    faults: list[Fault] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0


@dataclass(frozen=True)
class Recovery:
    fault: str
    at: float
    to_next_completion: float | None
    to_half_rate: float | None
    """None: no completion after the fault / the rate never came back before the run drained."""


@dataclass
class Verdict:
    scenario: str
    accepted: int
    terminal: int
    completed: int
    failed: int
    lost: list[str]
    stuck: list[str]
    duplicated: dict[str, int]
    """Attempt key → provider jobs created for it (only those with more than one)."""
    over_limit: dict[str, int]
    """Provider → creations that took it over the limit."""
    max_concurrency: dict[str, int]
    unstored_requests: list[str]
    """Answered 202 but absent from the requests topic."""
    unstored_webhooks: list[str]
    """Answered 2xx to the provider but absent from the webhooks topic."""
    conflicting: list[str]
    """Jobs whose result records name more than one terminal status, or disagree with the final GET."""
    recoveries: list[Recovery]
    duration: float
    notes: list[str] = field(default_factory=list)

    @property
    def duplicated_count(self) -> int:
        return sum(n - 1 for n in self.duplicated.values())

    @property
    def over_limit_count(self) -> int:
        return sum(self.over_limit.values())

    @property
    def passed(self) -> bool:
        return not (self.lost or self.stuck or self.duplicated or self.over_limit_count or self.unstored_requests
                    or self.unstored_webhooks or self.conflicting)

    def recovery_summary(self) -> tuple[float | None, float | None]:
        """The worst time to the next completion and to half rate over every fault."""
        nexts = [r.to_next_completion for r in self.recoveries if r.to_next_completion is not None]
        halves = [r.to_half_rate for r in self.recoveries if r.to_half_rate is not None]
        return (max(nexts) if nexts else None, max(halves) if halves else None)

    def median_recovery(self) -> float | None:
        halves = [r.to_half_rate for r in self.recoveries if r.to_half_rate is not None]
        return statistics.median(halves) if halves else None


def over_limit_moments(jobs: Iterable[ProviderJob], limit: int) -> tuple[int, int]:
    """(creations that took the unfinished count above ``limit``, the highest count seen).

    At equal timestamps a completion is counted before a creation: a slot freed and taken in the
    same instant is not an overlap."""
    events: list[tuple[float, int]] = []
    for job in jobs:
        events.append((job.created_at, 1))
        if job.completed_at is not None:
            events.append((job.completed_at, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    level = peak = over = 0
    for _, step in events:
        level += step
        if step > 0:
            peak = max(peak, level)
            if level > limit:
                over += 1
    return over, peak


def recoveries(completions: Sequence[float], faults: Iterable[Fault], *, ended_at: float,
               window: float = RATE_WINDOW, step: float = 0.25) -> list[Recovery]:
    """Time from each fault to the next completion and to half the pre-fault completion rate."""
    times = sorted(completions)

    def count(start: float, end: float) -> int:
        return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)

    out = []
    for fault in sorted(faults, key=lambda f: f.at):
        i = bisect.bisect_right(times, fault.at)
        to_next = times[i] - fault.at if i < len(times) else None
        before = count(fault.at - window, fault.at) / window
        to_half: float | None = None
        if before > 0:
            start = fault.at
            while start + window <= max(ended_at, fault.at + window):
                if count(start, start + window) / window >= before / 2:
                    to_half = start + window - fault.at
                    break
                start += step
        out.append(Recovery(fault.name, fault.at, to_next, to_half))
    return out


def check(history: History) -> Verdict:
    accepted = {a.job_id for a in history.accepted}
    finals = {f.job_id: f.status for f in history.finals}
    by_job: dict[str, list[ResultRecord]] = defaultdict(list)
    for record in history.results:
        if record.status in TERMINAL:
            by_job[record.job_id].append(record)
    terminal = {job for job in accepted if by_job.get(job) or finals.get(job) in TERMINAL}
    requested = history.requested if history.requested is not None else set()
    known = requested | set(by_job) | {j for j, s in finals.items() if s is not None}
    lost = sorted(j for j in accepted if j not in known)
    stuck = sorted(j for j in accepted if j in known and j not in terminal)

    conflicting = []
    for job in sorted(accepted):
        statuses = {r.status for r in by_job.get(job, [])}
        final = finals.get(job)
        if len(statuses) > 1 or (statuses and final in TERMINAL and final not in statuses):
            conflicting.append(job)
    last_status = {job: (finals.get(job) if finals.get(job) in TERMINAL else by_job[job][-1].status)
                   for job in terminal}
    outcome = Counter(last_status.values())

    attempts = Counter(p.attempt_key for p in history.provider_jobs)
    duplicated = {key: n for key, n in attempts.items() if n > 1}
    over_limit: dict[str, int] = {}
    peaks: dict[str, int] = {}
    for provider, limit in history.limits.items():
        jobs = [p for p in history.provider_jobs if p.provider == provider]
        over, peak = over_limit_moments(jobs, limit)
        peaks[provider] = peak
        if over:
            over_limit[provider] = over
    delivered = {w for p in history.provider_jobs for w in p.webhooks_delivered}
    unstored_webhooks = sorted(delivered - history.webhook_ids) if history.webhook_ids is not None else []
    unstored_requests = sorted(accepted - history.requested) if history.requested is not None else []
    completions = [min(r.at for r in records) for job, records in by_job.items() if job in accepted]
    return Verdict(
        scenario=history.scenario, accepted=len(accepted), terminal=len(terminal),
        completed=outcome["completed"], failed=outcome["failed"] + outcome["cancelled"], lost=lost, stuck=stuck,
        duplicated=duplicated, over_limit=over_limit, max_concurrency=peaks,
        unstored_requests=unstored_requests, unstored_webhooks=unstored_webhooks, conflicting=conflicting,
        recoveries=recoveries(completions, history.faults, ended_at=history.ended_at),
        duration=history.ended_at - history.started_at)


__all__ = ["RATE_WINDOW", "Accepted", "Fault", "FinalRead", "History", "ProviderJob", "Recovery", "ResultRecord",
           "Verdict", "check", "over_limit_moments", "recoveries"]
