"""Admission control at ``POST /v1/jobs``: per-tenant quotas and the backlog guard, checked before
the body is read, so a refused request costs no parsing and no Kafka write; the guard's wait
bound, which depends on the model's line, once the body is validated (and still before Kafka).

The rules are ``floodgate.quotas`` and ``floodgate.backlog``; this module only puts them
together for one API process, which enforces its share of each tenant's rate quota (the limit ÷
the API processes taking requests, ``floodgate.instances``). On the accepted path a check is a
few dict reads and one float comparison: the backlog verdict is computed in the background
(``BacklogMonitor``), never here.

The queued-jobs quota counts a tenant's open jobs. With the job view (the ``read`` role) that is
every job of the tenant, whichever process accepted it, against the whole limit, once a worker
has admitted it; until then only the process that answered its 202 knows of it, and those jobs
hold to that process's part of the room the admitted ones leave. A process
without a view (ingress-only) follows no job's changes: it counts the jobs it accepted itself
until their result is on ``results`` (``floodgate.api.ended``, keys only), against its share of
the limit among the processes taking requests (``floodgate.quotas.share``), as with the rate
quota.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from floodgate.api.backlog import BacklogMonitor
from floodgate.instances import Roster
from floodgate.problems import CONTENT_TYPE, problem
from floodgate.quotas import (
    JobsByTenant,
    OpenJobs,
    QueuedQuota,
    QuotaTable,
    RateQuota,
    Refusal,
    queued_refusal,
    rate_refusal,
)

log = logging.getLogger(__name__)

QUEUED_RETRY_AFTER = 10.0
"""Seconds a tenant at its queued-jobs quota is told to wait when no drain rate is known."""


class Admission:
    """The checks of one API process. ``check`` before writing a job; when it passes, ``settle``
    once the request is answered (whatever the answer)."""

    def __init__(self, quotas: QuotaTable, open_jobs: OpenJobs | None, backlog: BacklogMonitor | None = None,
                 clock: Callable[[], float] = time.monotonic, roster: Roster | None = None,
                 own_jobs: JobsByTenant | None = None) -> None:
        """``roster``: the API processes taking requests (``floodgate.instances``), whose count
        divides each tenant's rate quota, and its queued-jobs quota where that counts ``own_jobs``;
        None: this process enforces the whole of them. ``open_jobs``: the job view's count of every
        open job; ``own_jobs``, without a view: the jobs this process accepted that have not ended
        (``accepted`` adds them, the reader of ``results`` takes them out)."""
        self.quotas = quotas
        self.backlog = backlog
        self.clock = clock
        self.roster = roster
        self.rate = RateQuota()
        self.queued: QueuedQuota | None = None
        self.own_jobs: JobsByTenant | None = None
        if quotas.limits_queued:
            if open_jobs is not None:
                # Every process's admitted jobs, and the part of the room this one's own
                # not-yet-admitted jobs may take (``QueuedQuota.reserve``).
                self.queued = QueuedQuota(open_jobs, self._instances if roster is not None else None,
                                          admitted=open_jobs, rank=self._rank)
            elif own_jobs is not None:
                self.own_jobs = own_jobs
                self.queued = QueuedQuota(own_jobs, self._instances)
            else:
                log.warning("queued-jobs quotas are configured but this API neither has a job view nor reads "
                            "the ends of its own jobs: they are not enforced here; the rate quotas and the "
                            "backlog guard are")

    def _instances(self) -> int:
        return self.roster.live if self.roster is not None else 1

    def _rank(self) -> int:
        return self.roster.rank if self.roster is not None else 0

    def check(self, tenant: str) -> Refusal | None:
        """None to go on (the job then counts against the tenant's queued quota until ``settle``),
        else what to answer. Nothing is counted for a refused request."""
        backlog = self.backlog
        if backlog is not None and backlog.refusal is not None:
            return backlog.refusal
        quota = self.quotas.for_tenant(tenant)
        queued = self.queued
        if queued is not None and not queued.reserve(tenant, quota.queued):
            return queued_refusal(quota.queued, self._queued_retry_after())
        wait = self.rate.take(tenant, quota.per_minute, self.clock(), self._instances())
        if wait > 0.0:
            if queued is not None:
                queued.settle(tenant)
            return rate_refusal(quota.per_minute, wait)
        return None

    def check_model(self, model: str) -> Refusal | None:
        """The backlog's wait bound for a job of ``model`` (once the body says which): None to go
        on, else what to answer. The tenant's checks have passed; ``settle`` still follows."""
        return self.backlog.refusal_for(model) if self.backlog is not None else None

    def accepted(self, job_id: str, tenant: str) -> None:
        """A job was answered 202 by this process: without a job view, it counts as the tenant's
        own until its result is read (call before ``settle``). Only the jobs of tenants with a
        queued-jobs limit are held: an unlimited tenant's burst costs no memory here."""
        if self.own_jobs is not None and self.quotas.for_tenant(tenant).queued:
            self.own_jobs.add(job_id, tenant)

    def settle(self, tenant: str) -> None:
        if self.queued is not None:
            self.queued.settle(tenant)

    def _queued_retry_after(self) -> float:
        # On average one job somewhere ends every 1/rate seconds; a tenant's own may take longer,
        # but a client told to wait a whole render would leave slots unused.
        rate = self.backlog.probe.drain_rate() if self.backlog is not None else None
        if not rate:
            return QUEUED_RETRY_AFTER
        return min(60.0, max(1.0, 1.0 / rate))


class Refused(web.Response):
    """A refusal's response; carries its reason for the rejection counter."""

    def __init__(self, refusal: Refusal) -> None:
        doc = problem(refusal.status, refusal.title, detail=refusal.detail, type_=refusal.type_)
        retry = refusal.retry_after_header
        doc["retry_after"] = int(retry)
        if refusal.limit is not None:
            doc["limit"] = refusal.limit
        super().__init__(status=refusal.status, body=orjson.dumps(doc), content_type=CONTENT_TYPE,
                         headers={"Retry-After": retry})
        self.refusal = refusal


__all__ = ["QUEUED_RETRY_AFTER", "Admission", "Refused"]
