"""One simulated provider's bookkeeping: jobs, limits, outages, cold starts, counters.

Synchronous on purpose: aiohttp runs handlers on one event loop, so a check-then-create
with no ``await`` in between is atomic, which is what makes the concurrency limit and
``max_concurrency`` exact under concurrent submits. Timers live in ``server``/``lifecycle``.
"""
from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from floodgate.throttle import TokenBucket

from .config import ProviderConfig, SimulatorConfig
from .jobs import CreateRequest, Job

COUNTERS = (
    "rejected_429",
    "jobs_created",
    "duplicate_idempotency_keys",
    "completed",
    "failed",
    "cancelled",
    "outage_rejections",
    "webhooks_sent",
    "webhooks_failed",
    "webhooks_retried",
    "webhooks_timed_out",
    "webhooks_duplicated",
    "webhooks_dropped",
    "webhooks_reordered",
    "cold_starts",
    "status_calls",
    "status_rejected_429",
)


@dataclass
class KeyStats:
    counts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    rendering: int = 0  # of in_flight, the jobs past their queue (a provider that queues over its limit)
    max_concurrency: int = 0
    render_seconds: float = 0.0  # wall seconds of renders begun (cold starts included): the work done
    first_created_at: float | None = None  # wall clock of the first job created


@dataclass(frozen=True)
class Created:
    job: Job
    replayed: bool  # True: the Idempotency-Key matched an existing job, nothing was created


@dataclass(frozen=True)
class Limited:
    retry_after: int


def retry_after_header(seconds: float) -> int:
    """``Retry-After`` as integer seconds, at least 1 (0 would invite a hot retry loop)."""
    return max(1, math.ceil(seconds))


class ProviderState:
    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        sim: SimulatorConfig,
        *,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.name = name
        self.config = config
        self.sim = sim
        self.rng = random.Random(f"{sim.seed}:{name}") if sim.seed is not None else random.Random()
        self._monotonic = monotonic
        self._wall = wall
        self.started = monotonic()
        self.reset()

    def reset(self) -> None:
        """Forget jobs, counters and admin outages. Configured outages stay relative to server start."""
        self.jobs: dict[str, Job] = {}
        self.lines: dict[str, dict[str, Job]] = {}
        """Per key, its queued jobs in creation order (hung ones hold no place): who renders next
        is the first of its key's line, found without a pass over every job ever created."""
        self.idempotency: dict[tuple[str, str], str] = {}
        self.keys: dict[str, KeyStats] = {}
        self.readers: dict[str, TokenBucket] = {}
        """Per key, its budget of status calls (``status_rate_per_second``)."""
        self.admin_outage_until: float | None = None
        self.rendering: Counter[str] = Counter()
        self.last_busy: dict[str, float] = {}

    # -- accounting ------------------------------------------------------------------
    def key(self, api_key: str) -> KeyStats:
        return self.keys.setdefault(api_key, KeyStats())

    def count(self, api_key: str, counter: str, n: int = 1) -> None:
        self.key(api_key).counts[counter] += n

    def authorized(self, api_key: str | None) -> bool:
        if not api_key:
            return False
        return not self.config.api_keys or api_key in self.config.api_keys

    def read(self, api_key: str) -> Limited | None:
        """A status call by ``api_key``: None if it may be answered, else how long to wait (429),
        as a provider with a read limit answers one past it (Replicate: 3,000 a minute)."""
        rate = self.config.status_rate_per_second
        if rate > 0:
            bucket = self.readers.get(api_key)
            if bucket is None:
                bucket = self.readers[api_key] = TokenBucket(rate, max(1.0, rate))
            if not bucket.take_now(self._monotonic(), 1):
                self.count(api_key, "status_rejected_429")
                return Limited(retry_after_header(1.0 / rate))
        self.count(api_key, "status_calls")
        return None

    # -- outages -----------------------------------------------------------------------
    def start_outage(self, seconds: float) -> None:
        self.admin_outage_until = self._monotonic() + seconds if seconds > 0 else None

    def outage_remaining(self) -> float | None:
        """Wall seconds until every active outage is over, or ``None`` if none is active."""
        now = self._monotonic()
        remaining: list[float] = []
        if self.admin_outage_until is not None and now < self.admin_outage_until:
            remaining.append(self.admin_outage_until - now)
        elapsed = now - self.started
        for start, end in self.config.outages:
            begin, finish = self.sim.scaled(start), self.sim.scaled(end)
            if begin <= elapsed < finish:
                remaining.append(finish - elapsed)
        return max(remaining) if remaining else None

    # -- lifecycle -----------------------------------------------------------------------
    def submit(self, api_key: str, request: CreateRequest, idempotency_key: str | None) -> Created | Limited:
        if idempotency_key is not None:
            existing = self.idempotency.get((api_key, idempotency_key))
            if existing is not None and existing in self.jobs:
                self.count(api_key, "duplicate_idempotency_keys")
                return Created(self.jobs[existing], replayed=True)
        stats = self.key(api_key)
        # A provider that queues over its limit (fal, Runway) refuses only past its queue's end.
        if stats.in_flight >= self.config.concurrency_limit + self.config.queue_over_limit:
            stats.counts["rejected_429"] += 1
            return Limited(retry_after_header(self._soonest_slot(api_key)))
        job = Job(
            id=f"video_{uuid.uuid4().hex}",
            api_key=api_key,
            request=request,
            created_at=self._wall(),
            will_fail=self.rng.random() < self.config.failure_rate,
            will_hang=self.config.hang_rate > 0 and self.rng.random() < self.config.hang_rate,
            idempotency_key=idempotency_key,
        )
        self.jobs[job.id] = job
        if not job.will_hang:
            self.lines.setdefault(api_key, {})[job.id] = job
        if idempotency_key is not None:
            self.idempotency[(api_key, idempotency_key)] = job.id
        stats.in_flight += 1
        stats.max_concurrency = max(stats.max_concurrency, stats.in_flight)
        stats.counts["jobs_created"] += 1
        if stats.first_created_at is None:
            stats.first_created_at = job.created_at
        return Created(job, replayed=False)

    def _soonest_slot(self, api_key: str) -> float:
        now = self._monotonic()
        ends = [
            job.render_started + job.render_seconds - now
            for job in self.jobs.values()
            if job.api_key == api_key and not job.terminal
            and job.render_started is not None and job.render_seconds is not None
        ]
        return min(ends) if ends else self.sim.scaled(self.config.queue_delay)

    def may_render(self, job: Job) -> bool:
        """Whether ``job`` may leave the queue now: a render slot of its key is free and no older
        job of that key is waiting for one."""
        if self.key(job.api_key).rendering >= self.config.concurrency_limit:
            return False
        if job.status != "queued":
            return True
        line = self.lines.get(job.api_key)
        return not line or next(iter(line.values())) is job

    def queue_position(self, job: Job) -> int:
        """Jobs of the same key queued ahead of ``job`` (0 once it renders). A hung job is not
        among them: the provider lost it (it says queued and never moves), it holds no place in
        the line that the others wait behind."""
        if job.status != "queued":
            return 0
        # A job in its key's line counts the ones before it there; a hung one (in no line) the
        # queued jobs of its key created before it, found the slow way (it is rare).
        others = self.jobs.values() if job.will_hang else self.lines.get(job.api_key, {}).values()
        ahead = 0
        for other in others:
            if other is job:
                break
            if other.api_key == job.api_key and other.status == "queued" and not other.will_hang:
                ahead += 1
        return ahead

    def _leave_line(self, job: Job) -> None:
        line = self.lines.get(job.api_key)
        if line is not None:
            line.pop(job.id, None)

    def queue_delay(self) -> float:
        return self.sim.scaled(self.config.queue_delay)

    def begin_render(self, job: Job) -> float:
        """Move ``job`` to in_progress; return its render time in wall seconds (cold start included)."""
        now = self._monotonic()
        model = job.request.model
        idle_since = self.last_busy.get(model)
        cold = self.rendering[model] == 0 and (
            idle_since is None or now - idle_since >= self.sim.scaled(self.config.idle_after)
        )
        seconds = self.config.render_time.sample(self.rng)
        if cold and self.config.cold_start > 0:
            seconds += self.config.cold_start
            job.cold_seconds = self.sim.scaled(self.config.cold_start)
            self.count(job.api_key, "cold_starts")
        job.status = "in_progress"
        self._leave_line(job)
        self.key(job.api_key).rendering += 1
        job.render_started = now
        job.started_at = self._wall()
        job.render_seconds = self.sim.scaled(seconds)
        self.key(job.api_key).render_seconds += job.render_seconds
        self.rendering[model] += 1
        return job.render_seconds

    def finish(self, job: Job, status: str) -> bool:
        """Make ``job`` terminal (completed, failed or cancelled). False if it already was."""
        if job.terminal:
            return False
        if job.status == "in_progress":
            model = job.request.model
            self.rendering[model] -= 1
            self.key(job.api_key).rendering -= 1
            self.last_busy[model] = self._monotonic()
        self._leave_line(job)
        job.status = status
        job.completed_at = self._wall()
        if status == "failed":
            job.error = {"code": "generation_failed", "message": "the simulated render failed"}
        stats = self.key(job.api_key)
        stats.in_flight -= 1
        stats.counts[status] += 1
        return True

    def now(self) -> float:
        return self._monotonic()

    # -- reporting -----------------------------------------------------------------------
    def _key_view(self, stats: KeyStats) -> dict[str, Any]:
        view: dict[str, Any] = {
            "concurrency_limit": self.config.concurrency_limit,
            "max_concurrency": stats.max_concurrency,
            "in_flight": stats.in_flight,
            "render_seconds": stats.render_seconds,
            "first_created_at": stats.first_created_at,
        }
        view.update({name: stats.counts[name] for name in COUNTERS})
        return view

    def stats(self) -> dict[str, Any]:
        keys = {key: self._key_view(stats) for key, stats in self.keys.items()}
        totals: dict[str, Any] = {
            "concurrency_limit": self.config.concurrency_limit,
            "max_concurrency": max((k["max_concurrency"] for k in keys.values()), default=0),
            "in_flight": sum(k["in_flight"] for k in keys.values()),
            "render_seconds": sum(k["render_seconds"] for k in keys.values()),
            "first_created_at": min((k["first_created_at"] for k in keys.values() if k["first_created_at"]),
                                    default=None),
        }
        totals.update({name: sum(k[name] for k in keys.values()) for name in COUNTERS})
        totals["keys"] = keys
        return totals
