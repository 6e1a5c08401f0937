"""Per-tenant admission rules at the HTTP edge. Pure: every clock is a ``now`` argument.

* ``Quota`` / ``QuotaTable``: what each tenant may do (a default and per-tenant overrides).
* ``RateQuota``: requests per minute per tenant, as a generic cell rate (GCRA): one float per
  tenant (the instant its allowance is spent up to), no per-request allocation, no timer.
* ``JobsByTenant``: open jobs (id → tenant) counted per tenant.
* ``OpenJobs``: the jobs each tenant has accepted that have not reached a terminal state,
  kept up to date from job snapshots (the API's job view feeds it), and how many admitted jobs
  still wait for a provider.
* ``QueuedQuota``: the jobs-queued limit, counting the requests that passed the check and are
  still on their way to Kafka, so a burst of concurrent requests cannot all pass at ``limit - 1``;
  over the whole of a tenant's open jobs (a job view's count) or over those one process accepted
  (an API without a view), against its share of the limit (``share``).
* ``Refusal``: what the ingress answers when a rule says no (429 or 503, Retry-After).

Everything here runs on the event loop of one API process: no locks, and the figures are that
process's own (rates: its share of each tenant's quota, ``floodgate.instances``; queued jobs
without a job view: the jobs it accepted, against its share) or its job view's (queued jobs).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from floodgate.errors import ConfigError
from floodgate.jobs.state import TERMINAL
from floodgate.problems import QUEUED_QUOTA, RATE_QUOTA

WINDOW = 60.0
"""Seconds of the rate quota's window: limits are requests per minute."""

@dataclass(frozen=True, slots=True)
class Quota:
    """One tenant's limits; 0 means no limit."""

    per_minute: int = 0
    """Requests to ``POST /v1/jobs`` per minute, in bursts of up to that many at once."""
    queued: int = 0
    """Jobs accepted and not yet completed, failed or cancelled."""

    def __post_init__(self) -> None:
        if self.per_minute < 0 or self.queued < 0:
            raise ConfigError(f"quota limits must be >= 0, got {self}")


@dataclass(frozen=True)
class QuotaTable:
    """The default quota and the tenants that have their own."""

    default: Quota = Quota()
    overrides: Mapping[str, Quota] = field(default_factory=dict)

    def for_tenant(self, tenant: str) -> Quota:
        return self.overrides.get(tenant, self.default)

    @property
    def limits_rate(self) -> bool:
        return bool(self.default.per_minute) or any(q.per_minute for q in self.overrides.values())

    @property
    def limits_queued(self) -> bool:
        return bool(self.default.queued) or any(q.queued for q in self.overrides.values())

    @classmethod
    def build(cls, default: Quota, per_minute: Mapping[str, str], queued: Mapping[str, str],
              where: tuple[str, str] = ("per_minute", "queued")) -> QuotaTable:
        """From ``tenant → limit`` texts (as settings give them); a tenant named in one map only
        keeps the default's other limit. Raises ``ConfigError`` naming ``where`` on a bad number."""
        overrides: dict[str, Quota] = {}
        for tenant in {*per_minute, *queued}:
            overrides[tenant] = Quota(
                per_minute=_limit(per_minute[tenant], where[0]) if tenant in per_minute else default.per_minute,
                queued=_limit(queued[tenant], where[1]) if tenant in queued else default.queued)
        return cls(default, overrides)


def _limit(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a whole number") from None
    if value < 0:
        raise ConfigError(f"{where}: limits must be >= 0, got {value}")
    return value


class RateQuota:
    """Requests per minute per tenant (GCRA). A tenant may send ``limit`` requests at once, then
    one every ``60 / limit`` seconds; in any ``T`` seconds at most ``limit * (1 + T / 60)``
    pass (with ``instances``, each process that many times fewer). A refused request consumes
    nothing. Tenants come from the configured API keys, so the table holds a bounded number of
    entries."""

    __slots__ = ("_spent_until",)

    def __init__(self) -> None:
        # tenant → the instant up to which its allowance is spent (its theoretical arrival time).
        self._spent_until: dict[str, float] = {}

    def take(self, tenant: str, limit: int, now: float, instances: int = 1) -> float:
        """Admit one request of ``tenant`` under ``limit`` per minute (0: no limit), of which this
        process enforces its share, ``limit ÷ instances`` (``floodgate.instances``): 0.0 if it
        passes (and is counted), else the seconds until one would. A share under one request a
        minute still lets one request through every ``60 × instances ÷ limit`` seconds."""
        if limit <= 0:
            return 0.0
        interval = WINDOW * instances / limit
        spent = self._spent_until.get(tenant, now)
        if spent < now:
            spent = now
        # Passing would spend up to spent + interval; allowed while that stays within one window
        # of now (a clock that steps back only makes the tenant wait longer, never less), or
        # within one interval when that is longer (a share below one request per window).
        wait = spent + interval - (WINDOW if interval <= WINDOW else interval) - now
        if wait > 0.0:
            return wait
        self._spent_until[tenant] = spent + interval
        return 0.0


class JobsByTenant:
    """Open jobs, each under its tenant, and how many each tenant has. Adding a job twice or
    discarding one never added changes nothing, so redeliveries need no care."""

    __slots__ = ("_tenant_of", "_per_tenant")

    def __init__(self) -> None:
        self._tenant_of: dict[str, str] = {}
        self._per_tenant: dict[str, int] = {}

    def add(self, job_id: str, tenant: str) -> None:
        if job_id not in self._tenant_of:
            self._tenant_of[job_id] = tenant
            self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1

    def discard(self, job_id: str) -> None:
        owner = self._tenant_of.pop(job_id, None)
        if owner is not None:
            left = self._per_tenant[owner] - 1
            if left:
                self._per_tenant[owner] = left
            else:
                del self._per_tenant[owner]

    def open_for(self, tenant: str) -> int:
        return self._per_tenant.get(tenant, 0)

    def __len__(self) -> int:
        return len(self._tenant_of)


class OpenJobs:
    """Jobs not yet terminal, per tenant, from job snapshots in version order (the job view
    applies only newer versions). A job counts from its first non-terminal snapshot (the
    ingress's own, version 0, right after its 202) until its first terminal one. ``waiting``
    counts admitted jobs (version >= 1) still ``queued``: the ones a provider has yet to take.

    Holds one entry per open job (its id and tenant), so it does not lose count when the job
    view evicts a live job's snapshot to disk.

    ``admitted_to``: per ``requests`` partition, the offset after the newest request seen to admit
    a job (a job's state names the record that admitted it). The workers have read that partition
    that far, whatever offset they have committed yet: the backlog guard counts the requests past
    it as not yet admitted, so that a job admitted since the last commit is not counted twice, in
    the lag and in ``waiting`` (a burst was shed at 7 jobs against a depth of 8)."""

    __slots__ = ("_open", "_unadmitted", "_waiting", "admitted_to")

    def __init__(self) -> None:
        self._open = JobsByTenant()
        self._unadmitted = JobsByTenant()
        """Open jobs seen only as their ingress's version 0: this process answered their 202 and
        no worker has admitted them yet (no other process knows of them)."""
        self._waiting: set[str] = set()
        self.admitted_to: dict[int, int] = {}

    def admitted(self, marks: Mapping[int, int]) -> None:
        """Requests (partition → offset) seen to admit jobs: each partition was read past them."""
        for partition, offset in marks.items():
            if offset >= self.admitted_to.get(partition, 0):
                self.admitted_to[partition] = offset + 1

    def observe(self, job_id: str, tenant: str, status: str, version: int) -> None:
        if status in TERMINAL:
            self._open.discard(job_id)
            self._unadmitted.discard(job_id)
            self._waiting.discard(job_id)
            return
        self._open.add(job_id, tenant)
        if version == 0:
            self._unadmitted.add(job_id, tenant)
        else:
            self._unadmitted.discard(job_id)
        if status == "queued" and version >= 1:
            self._waiting.add(job_id)
        else:
            self._waiting.discard(job_id)

    def open_for(self, tenant: str) -> int:
        return self._open.open_for(tenant)

    def unadmitted_for(self, tenant: str) -> int:
        """The tenant's open jobs that only this process knows of yet (see ``_unadmitted``)."""
        return self._unadmitted.open_for(tenant)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def __len__(self) -> int:
        return len(self._open)


class OpenCount(Protocol):
    """Where a queued-jobs quota reads how many jobs a tenant has open."""

    def open_for(self, tenant: str) -> int: ...


class AdmittedCount(OpenCount, Protocol):
    """A count of every process's open jobs (a job view) that also tells which of them only this
    process knows of yet (answered 202 here, not yet admitted by a worker)."""

    def unadmitted_for(self, tenant: str) -> int: ...


def part_of(limit: int, instances: int, rank: int) -> int:
    """The part of ``limit`` for the process at ``rank`` among ``instances``: the parts add up to
    the limit exactly, the remainder going to the lowest ranks (a part may be 0)."""
    base, extra = divmod(max(0, limit), max(1, instances))
    return base + (1 if rank < extra else 0)


def share(limit: int, instances: int) -> int:
    """One process's share of a tenant's queued-jobs ``limit`` among ``instances`` processes that
    each count only the jobs they accepted: the limit divided and rounded down, so the shares add
    up to no more than the limit, but at least 1, so every process can take a job (with more
    processes than the limit, a tenant may then hold up to one job per process)."""
    return max(1, limit // max(1, instances))


class QueuedQuota:
    """Jobs queued per tenant: the open jobs ``open_jobs`` counts plus the requests that passed
    this check and are not yet answered. ``reserve`` before writing the job, ``settle`` once the
    write is done (after the job is counted in ``open_jobs``, or refused).

    ``instances``: None when ``open_jobs`` counts every process's jobs (a job view) and this
    process is the only one taking requests (or each enforces the whole limit), so the whole
    limit applies; else how many processes share the limit. Each of them then either counts only
    the jobs it accepted and holds to its ``share`` (no job view), or, given ``admitted``, a job
    view's count of every process's jobs: see ``reserve``."""

    __slots__ = ("open_jobs", "instances", "_admitted", "_rank", "_pending")

    def __init__(self, open_jobs: OpenCount, instances: Callable[[], int] | None = None, *,
                 admitted: AdmittedCount | None = None, rank: Callable[[], int] = lambda: 0) -> None:
        """``admitted`` (with ``instances``): ``open_jobs`` is this job view, and ``rank`` is this
        process's place among the ``instances`` (``floodgate.instances.Roster.rank``)."""
        self.open_jobs = open_jobs
        self.instances = instances
        self._admitted = admitted
        self._rank = rank
        self._pending: dict[str, int] = {}

    def reserve(self, tenant: str, limit: int) -> bool:
        """Count one more job of ``tenant`` if it stays within ``limit`` (0: no limit), or this
        process's share of it; False if not.

        With a job view shared by several processes, every process knows the tenant's admitted
        jobs (their snapshots on ``notifications``), but a job another process answered 202 is in
        nobody else's count until a worker admits it, which under a backlog on ``requests`` (a
        spike) takes seconds or minutes: each of ``n`` processes, holding the whole limit, let a
        tenant spread over them have ``n`` times its limit. So the jobs only this process knows of
        (and the requests under way here) hold to this process's part of what the admitted jobs
        leave (``part_of``: the parts add up to the room exactly). Once admitted, a job counts in
        every process and frees its part here."""
        pending = self._pending.get(tenant, 0)
        if limit > 0:
            instances = self.instances() if self.instances is not None else 1
            opened = self.open_jobs.open_for(tenant)
            if self._admitted is not None:
                if opened + pending >= limit:
                    return False
                if instances > 1:
                    mine = self._admitted.unadmitted_for(tenant) + pending
                    if mine >= part_of(limit - (opened - mine + pending), instances, self._rank()):
                        return False
            elif opened + pending >= (share(limit, instances) if self.instances is not None else limit):
                return False
        self._pending[tenant] = pending + 1
        return True

    def settle(self, tenant: str) -> None:
        left = self._pending.get(tenant, 0) - 1
        if left > 0:
            self._pending[tenant] = left
        else:
            self._pending.pop(tenant, None)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the edge turns away before anything is written: the problem to answer."""

    status: int
    """429 (the tenant's quota) or 503 (the whole backlog)."""
    reason: str
    """``quota`` or ``backlog``, as ``floodgate_requests_rejected_total{reason}`` counts it."""
    type_: str
    """The problem type (``floodgate.problems``): which rule refused."""
    title: str
    detail: str
    retry_after: float
    limit: int | None = None
    """The quota's limit, for a 429."""

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1: a client must not come back before the quota allows."""
        return str(max(1, math.ceil(self.retry_after)))


def rate_refusal(limit: int, wait: float) -> Refusal:
    return Refusal(429, "quota", RATE_QUOTA, "Rate quota exceeded",
                   f"the rate quota of this tenant is {limit} job requests per minute", wait, limit)


def queued_refusal(limit: int, retry_after: float) -> Refusal:
    return Refusal(429, "quota", QUEUED_QUOTA, "Queued-jobs quota exceeded",
                   f"the queued-jobs quota of this tenant is {limit} jobs not yet completed, failed or "
                   "cancelled", retry_after, limit)


__all__ = ["WINDOW", "JobsByTenant", "OpenCount", "OpenJobs", "Quota", "QuotaTable", "QueuedQuota", "RateQuota",
           "Refusal", "queued_refusal", "rate_refusal", "share"]
