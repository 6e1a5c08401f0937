"""The job state machine: ``apply(state, event) -> Transition``.

Events reach the table out of order and more than once (webhooks race polls,
Kafka redelivers), so ``apply`` is written as a merge rather than a script:

* per attempt, every field only moves one way (status by rank, progress up,
  ids filled once), so re-applying or reordering events converges;
* a higher ``attempt`` opens a new epoch (a reroute to another provider) and
  everything from older attempts is stale;
* a terminal status is never left. Late events of the same attempt may still
  fill facts that are missing (a provider job id, a higher progress) and a late
  ``queued`` event may still fill the job's own fields, because dropping them
  would make the result depend on arrival order.

A job ends ``cancelled`` only by its owner's cancel, an event that names no provider
(``floodgate.api.cancel``). A provider's word that it cancelled a job that has not ended (a webhook,
a status poll) ends the job ``failed``, its error naming that provider: the owner's cancel ends the
job before its provider is asked to cancel, so such a word tells of a cancel the owner never made.

``recent_events`` is only a shortcut for duplicates: the merge is idempotent,
so an event older than the window that comes back is harmless.

A provider's word may reach the table before the reroute that sent the job there (the submitter
writes ``rerouted`` to ``events`` and the order straight to the next provider, whose webhook comes
through another topic with a lag of its own). ``hold`` keeps such news from the future in the
state (``early_news``, bounded) until an attempt opens at its provider, which then takes it in as
if it had come after. ``moved_from`` tells it from news of a provider the job has left, which is
old news; ``left_jobs`` tells a webhook from a provider the job left and is going back to
(A → B → A: the next order may reach A before the table reads the reroute) from a webhook of an
attempt it left there: a webhook names no attempt, but it names its provider job, and each attempt
is a provider job of its own. The same tells a late webhook of an attempt the job left at A, read
once the job is back there, from one of the attempt now at A (``floodgate.jobs.events.aim``); a
dispatcher's word there names its attempt, so an earlier one's is old news without it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from floodgate.errors import Problem, ValidationError

RECENT_EVENTS_LIMIT = 32

EARLY_NEWS_LIMIT = 8
"""News from a provider the job is moving to, kept at most (``hold``): the furthest on, so an end
is never the one let go."""

LEFT_JOBS_LIMIT = 8
"""Provider jobs of attempts the job left, remembered at most (``left_jobs``): those of the latest
attempts. A job moves a few times at most, and only attempts whose provider job the table learned
count, so the limit is a bound on a state's size, not a window."""

WEBHOOK_PREFIX = "wh:"
"""How the id of an event that a provider's webhook stands for begins
(``floodgate.jobs.events.webhook_event``). Such an event names no attempt (its ``attempt`` is 0),
where a dispatcher's word (a poll, a timeout) names its slot's, 0 included: the jobs agent takes a
webhook as the current attempt's, and a dispatcher's word of an earlier attempt as old news
(``floodgate.jobs.events.aim``)."""

SameJob = Callable[[str, str, str], bool]
"""``same(provider, a, b)``: whether provider job ids ``a`` and ``b`` name one job at ``provider``.
The jobs agent asks the provider's connector (fal names one job two ways:
``connectors.providers.base.same_provider_job``); by default ids are compared exactly."""


def exact_job(provider: str, a: str, b: str) -> bool:
    """``SameJob`` for providers that name each job one way only."""
    return a == b


class JobStatus(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """Still waiting at its deadline: never submitted."""


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED,
                                            JobStatus.EXPIRED})

_RANK: Mapping[JobStatus, int] = MappingProxyType(
    {
        JobStatus.QUEUED: 0,
        JobStatus.SUBMITTED: 1,
        JobStatus.RUNNING: 2,
        JobStatus.COMPLETED: 3,
        JobStatus.FAILED: 3,
        JobStatus.CANCELLED: 3,
        JobStatus.EXPIRED: 3,
    }
)


def status_rank(status: str) -> int:
    """How far a status is along a job's life: queued 0, submitted 1, running 2, any end 3.
    Raises ``ValueError`` for a status that is not one."""
    return _RANK[JobStatus(status)]


EVENT_KINDS: frozenset[str] = frozenset(
    {"queued", "submitted", "running", "progress", "completed", "failed", "cancelled", "rerouted", "expired"}
)


def _frozen_metadata(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


class LeftJob(NamedTuple):
    """A provider job of an attempt the job has left (``JobState.left_jobs``)."""

    attempt: int
    provider: str
    provider_job_id: str


@dataclass(frozen=True)
class JobEvent:
    """One fact about a job. Raises ``ValidationError`` if the event itself is malformed."""

    event_id: str
    job_id: str
    kind: str
    at: float
    provider: str | None = None
    provider_job_id: str | None = None
    attempt: int = 0
    progress: float | None = None
    video_url: str | None = None
    error: str | None = None
    # Only meaningful on ``queued``: the job as accepted.
    tenant: str | None = None
    user_id: str | None = None
    model: str | None = None
    webhook_url: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    push_platform: str | None = None
    push_token: str | None = field(default=None, repr=False)
    priority: str | None = None
    deadline_at: float | None = None
    """Epoch seconds past which the job, still waiting, expires."""
    request_hash: str | None = None
    queue_position: int | None = None
    """Jobs ahead of this one in its provider's own queue, as a status poll found it at ``at``
    (on ``submitted`` events: the provider accepted the job and keeps it waiting)."""

    def __post_init__(self) -> None:
        problems = _event_problems(self)
        if problems:
            raise ValidationError(problems)
        object.__setattr__(self, "metadata", _frozen_metadata(self.metadata))


def _event_problems(e: JobEvent) -> list[Problem]:
    problems: list[Problem] = []
    if not e.event_id:
        problems.append(Problem("event_id", "must not be empty"))
    if not e.job_id:
        problems.append(Problem("job_id", "must not be empty"))
    if e.kind not in EVENT_KINDS:
        problems.append(Problem("kind", f"unknown kind {e.kind!r}; known: {', '.join(sorted(EVENT_KINDS))}"))
    if not math.isfinite(e.at):
        problems.append(Problem("at", "must be a finite timestamp"))
    attempt_ok = isinstance(e.attempt, int) and not isinstance(e.attempt, bool) and e.attempt >= 0
    if not attempt_ok:
        problems.append(Problem("attempt", "must be an integer >= 0"))
    if e.progress is not None and not 0.0 <= e.progress <= 1.0:
        problems.append(Problem("progress", "must be between 0 and 1"))
    if e.queue_position is not None and _count(e.queue_position):
        problems.append(Problem("queue_position", "must be an integer >= 0"))
    if e.kind == "rerouted" and not e.provider:
        problems.append(Problem("provider", "a rerouted event must name the new provider"))
    if e.kind == "rerouted" and attempt_ok and e.attempt < 1:
        problems.append(Problem("attempt", "a rerouted event starts attempt 1 or later"))
    return problems


@dataclass(frozen=True)
class JobState:
    """What is known about one job; the value of the jobs table."""

    job_id: str
    tenant: str | None = None
    user_id: str | None = None
    model: str | None = None
    provider: str | None = None
    provider_job_id: str | None = None
    status: JobStatus = JobStatus.QUEUED
    progress: float = 0.0
    video_url: str | None = None
    error: str | None = None
    attempt: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    webhook_url: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    push_platform: str | None = None
    """With ``push_token``: the device to tell about the job's end (``floodgate.push``)."""
    push_token: str | None = field(default=None, repr=False)  # a device token stays out of logs
    priority: str | None = None
    """high, standard or low (None: standard, as for jobs accepted before priorities existed)."""
    deadline_at: float | None = None
    """Epoch seconds past which the job, still waiting, ends ``expired`` unsubmitted."""
    request_hash: str | None = None
    """The accepted request's ``request_hash``: what an Idempotency-Key retry is compared with."""
    serving_model: str | None = None
    """The model serving the job when not the one asked for (it spilled to an equivalent)."""
    route_note: str | None = None
    """Why the job's current attempt is where it is (a fallback's or a spill's reason)."""
    provider_queue_position: int | None = None
    """Jobs ahead of this one in its provider's own queue while it waits there, submitted (only
    providers that say so, fal); None otherwise, and from the moment it runs."""
    provider_queue_at: float | None = None
    """When the provider said so (epoch seconds): the newest word wins, whatever the order the
    words arrive in."""
    lined_at: float | None = None
    """When the job joined the line it waits in, if not at its acceptance (epoch seconds): a job
    that spilled to an equivalent joined that line at the back, behind the jobs already waiting
    there (``floodgate.spillover``). None: its place goes by ``created_at``."""
    moved_from: tuple[str, ...] = ()
    """The providers the job's earlier attempts were at, but for its current one, sorted: a word
    from one of them that names no attempt (a webhook) is old news, not news from the future."""
    early_news: tuple[JobEvent, ...] = ()
    """News from a provider the job is moving to, read before its ``rerouted`` event (``hold``),
    by time: taken in when an attempt opens there, let go when the job ends."""
    left_jobs: tuple[LeftJob, ...] | None = ()
    """The provider jobs of the attempts the job left, as far as the table learned them, sorted (at
    most ``LEFT_JOBS_LIMIT``, the latest attempts'): a word naming one is old news, never kept for a
    later attempt (``is_early``) nor taken by the current one, even once the job is back at that
    provider (``floodgate.jobs.events.aim``; the API's early word, which sees snapshots only, tells
    a job that moved nothing early but what names its attempt's own provider job:
    ``floodgate.api.heard``). None: a job that moved, in a state written before the field existed,
    whose earlier provider jobs are unknown (``is_early`` then takes every word from a provider the
    job left as old news, as that version did; back at that provider, a word from there is the
    current attempt's, as it was then)."""
    recent_events: tuple[str, ...] = ()
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", JobStatus(self.status))
        object.__setattr__(self, "metadata", _frozen_metadata(self.metadata))
        object.__setattr__(self, "moved_from", tuple(self.moved_from))
        object.__setattr__(self, "early_news", tuple(self.early_news))
        if self.left_jobs is not None:
            object.__setattr__(self, "left_jobs", tuple(LeftJob(*job) for job in self.left_jobs))
        object.__setattr__(self, "recent_events", tuple(self.recent_events))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_dict(to_dict())`` gives an equal state."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["status"] = self.status.value
        out["metadata"] = dict(self.metadata)
        out["recent_events"] = list(self.recent_events)
        if self.push_platform is None and self.push_token is None:
            # Most jobs name no phone: every changelog record stays as small as before the fields existed.
            del out["push_platform"], out["push_token"]
        for name in ("priority", "deadline_at"):
            if out[name] is None:
                del out[name]  # likewise
        for name in ("request_hash", "serving_model", "route_note", "provider_queue_position", "provider_queue_at",
                     "lined_at"):
            if out[name] is None:
                del out[name]
        del out["moved_from"], out["early_news"], out["left_jobs"]  # only a job that moved (or is moving) has them
        if self.moved_from:
            out["moved_from"] = list(self.moved_from)
        if self.early_news:
            out["early_news"] = [_news_dict(e) for e in self.early_news]
        # A job that moved writes its left provider jobs even when it learned none: a moved job's
        # record without them is one the previous version wrote (``from_dict``).
        if self.left_jobs or (self.moved_from and self.left_jobs is not None):
            out["left_jobs"] = [job._asdict() for job in self.left_jobs or ()]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobState:
        """Rebuild a state written by ``to_dict``.

        Unknown keys are ignored so an older reader survives a newer writer.
        Raises ``ValidationError`` naming every field that is missing or of the wrong type.
        """
        problems: list[Problem] = []
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.name in ("job_id", "status"):
                    problems.append(Problem(f.name, "missing"))
                continue
            value = data[f.name]
            problem = field_problem(f.name, value)
            if problem:
                problems.append(Problem(f.name, problem))
            else:
                kwargs[f.name] = value
        if problems:
            raise ValidationError(problems)
        if "early_news" in kwargs:
            kwargs["early_news"] = tuple(_news_event(kwargs["job_id"], doc) for doc in kwargs["early_news"])
        if kwargs.get("left_jobs") is not None:
            kwargs["left_jobs"] = tuple(LeftJob(**doc) for doc in kwargs["left_jobs"])
        elif "left_jobs" not in kwargs and kwargs.get("moved_from"):
            kwargs["left_jobs"] = None  # a job that moved, written before its left provider jobs were kept
        return cls(**kwargs)


_STATUS_VALUES = frozenset(s.value for s in JobStatus)
_OPTIONAL_STR = ("tenant", "user_id", "model", "provider", "provider_job_id", "video_url", "error", "webhook_url",
                 "push_platform", "push_token", "priority", "request_hash", "serving_model", "route_note")


def is_state_dict(data: Any) -> bool:
    """Whether ``JobState.from_dict`` takes ``data`` as it is (what reads a state's dict without
    building the state asks first)."""
    return (isinstance(data, Mapping) and "job_id" in data and "status" in data
            and not any(check(data[name]) for name, check in _CHECKS.items() if name in data))


def _job_id(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _optional_str(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "must be a string or null"


def _status(value: Any) -> str | None:
    return None if value in _STATUS_VALUES else f"unknown status {value!r}"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "must be an integer >= 0"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _time(value: Any) -> str | None:
    return None if _finite(value) else "must be a finite number"


def _optional_time(value: Any) -> str | None:
    return None if value is None or _finite(value) else "must be a finite number or null"


def _optional_count(value: Any) -> str | None:
    return None if value is None else _count(value)


def _progress(value: Any) -> str | None:
    if not _finite(value):
        return "must be a finite number"
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def _metadata(value: Any) -> str | None:
    ok = isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return None if ok else "must map strings to strings"


def _strings(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return None if ok else "must be a list of strings"


_NEWS_FIELDS = ("provider_job_id", "progress", "video_url", "error", "queue_position")
"""What a provider's word may say besides its id, kind, time, provider and attempt."""


def _news_dict(event: JobEvent) -> dict[str, Any]:
    """A kept event as the state's dict holds it (``early_news``)."""
    out: dict[str, Any] = {"event_id": event.event_id, "kind": event.kind, "at": event.at, "provider": event.provider,
                           "attempt": event.attempt}
    out.update((name, getattr(event, name)) for name in _NEWS_FIELDS if getattr(event, name) is not None)
    return out


def _news_event(job_id: str, doc: Mapping[str, Any]) -> JobEvent:
    """The event ``_news_dict`` wrote. Raises ``ValidationError`` (or ``TypeError`` for a missing
    field or one it does not know) when ``doc`` is not one."""
    if not isinstance(doc.get("provider"), str):
        raise ValidationError([Problem("provider", "news kept for later names its provider")])
    return JobEvent(job_id=job_id, **doc)


def _left_jobs(value: Any) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(doc, Mapping) and set(doc) == set(LeftJob._fields) and _count(doc["attempt"]) is None
        and all(isinstance(doc[name], str) and doc[name] for name in ("provider", "provider_job_id"))
        for doc in value)
    return None if ok else "must be a list of {attempt, provider, provider_job_id}"


def _news(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return "must be a list of events"
    for doc in value:
        try:
            _news_event("-", doc)
        except (ValidationError, TypeError, AttributeError, ValueError) as exc:
            return f"must be a list of events: {exc}"
    return None


_CHECKS: Mapping[str, Callable[[Any], str | None]] = MappingProxyType({
    "job_id": _job_id, "status": _status, "attempt": _count, "version": _count, "deadline_at": _optional_time,
    "provider_queue_position": _optional_count, "provider_queue_at": _optional_time, "lined_at": _optional_time,
    "progress": _progress, "created_at": _time, "updated_at": _time, "metadata": _metadata,
    "recent_events": _strings, "moved_from": _strings, "early_news": _news, "left_jobs": _left_jobs,
    **{name: _optional_str for name in _OPTIONAL_STR}})


def field_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be field ``name`` of a JobState, or None if it can."""
    check = _CHECKS.get(name)
    return None if check is None else check(value)


@dataclass(frozen=True)
class Transition:
    """The result of ``apply``. ``became_terminal`` is true only on the change that reached a terminal status."""

    state: JobState | None
    changed: bool
    became_terminal: bool
    reason: str
    ended_by: JobEvent | None = None
    """With ``became_terminal``: the event whose word ended the job, the one applied or news kept
    from before (``hold``) that the attempt it opened took in."""


_KIND_STATUS: Mapping[str, JobStatus] = MappingProxyType(
    {
        "queued": JobStatus.QUEUED,
        "submitted": JobStatus.SUBMITTED,
        "running": JobStatus.RUNNING,
        "progress": JobStatus.RUNNING,
        "completed": JobStatus.COMPLETED,
        "failed": JobStatus.FAILED,
        "cancelled": JobStatus.CANCELLED,
        "rerouted": JobStatus.QUEUED,
        "expired": JobStatus.EXPIRED,
    }
)

ENDING_KINDS: frozenset[str] = frozenset(kind for kind, status in _KIND_STATUS.items() if status in TERMINAL)
"""The event kinds that say a job ended (at the provider that sends them)."""

_IDENTITY = ("tenant", "user_id", "model", "webhook_url", "push_platform", "push_token", "priority", "deadline_at",
             "request_hash")


def apply(state: JobState | None, event: JobEvent, same: SameJob = exact_job) -> Transition:
    """Fold ``event`` into ``state``. Pure; never raises for a well-formed event. ``same`` compares
    provider job ids (``SameJob``).

    Raises ``ValueError`` if the event belongs to another job.
    """
    if state is None:
        blank = JobState(job_id=event.job_id, created_at=event.at, updated_at=event.at)
        merged, _, ended_by = _merge(blank, event, same)
        return Transition(_stamp(blank, merged, event), True, merged.terminal, f"created by {event.kind}",
                          ended_by if merged.terminal else None)
    if event.job_id != state.job_id:
        raise ValueError(f"event {event.event_id!r} is for job {event.job_id!r}, not {state.job_id!r}")
    if event.event_id in state.recent_events:
        return Transition(state, False, False, "duplicate event")
    merged, reason, ended_by = _merge(state, event, same)
    if merged == state:
        return Transition(state, False, False, reason or "no change")
    became_terminal = merged.terminal and not state.terminal
    return Transition(_stamp(state, merged, event), True, became_terminal, reason or "merged",
                      ended_by if became_terminal else None)


def from_webhook(event: JobEvent) -> bool:
    """Whether ``event`` stands for a provider's webhook (``WEBHOOK_PREFIX``): it names no attempt."""
    return event.event_id.startswith(WEBHOOK_PREFIX)


def names_left_job(state: JobState, event: JobEvent, same: SameJob = exact_job) -> bool:
    """Whether ``event`` names a provider job of an attempt the job has left (``left_jobs``), as
    ``same`` compares provider job ids. Each attempt is a provider job of its own (the provider
    sees the attempt as the order's identity: ``floodgate.dispatch.Order.idempotency_key``), so
    such a word is never the current attempt's."""
    named, provider = event.provider_job_id, event.provider
    if not named or not provider or not state.left_jobs:
        return False
    return any(job.provider == provider and same(provider, job.provider_job_id, named) for job in state.left_jobs)


def is_early(state: JobState | None, event: JobEvent, same: SameJob = exact_job) -> bool:
    """Whether ``event`` is news from the future: from a provider the job is moving to, read before
    the ``rerouted`` event that sends it there (the submitter writes that event, then the order
    straight to the next provider's dispatch topic; nothing waits for the jobs table to read it).

    That is a word from a provider other than the job's current one, naming no provider job of an
    attempt the job left (``left_jobs``), that names a later attempt (its dispatcher's), or
    that names none (a webhook: attempt 0) from a provider none of the job's earlier attempts was
    at (``moved_from``). From a provider an earlier attempt was at, and the job may go back to
    (A → B → A), a webhook is news from the future when it names a provider job: one of an
    attempt the job left there is old news by ``left_jobs``. A job that ended takes no more news
    (it ignores later attempts).

    Where the state cannot say where a job that moved has been, or which provider jobs it left, a
    word that names no attempt is old news, as it always was: a state written before
    ``moved_from`` or ``left_jobs`` existed (after an upgrade in place: else the timeout of the
    provider it left, which names attempt 0, would be kept instead of freeing that provider's
    slot) or a job moved from a provider to itself. So is a dispatcher's word of attempt 0 (it
    names the job's first attempt), and a word that names no provider job.

    An attempt whose provider job the table never learned (its submission's answer was lost, and
    the job moved on) leaves no trace in ``left_jobs``: a webhook of that job then reads as news
    from the future, kept until the job ends, and taken in should the job go back to that
    provider, as it would be if it came after the job went back (no order of reading can tell
    which attempt such a webhook speaks of: only the attempt in the webhook could). It takes a
    job the provider made although its submission failed, and a way back to that provider (a
    fallback, then a spill to an equivalent whose first provider it is; a spill then a fallback
    leaves a provider whose attempt was never submitted).
    """
    if state is None or state.terminal or event.kind in ("queued", "rerouted"):
        return False
    if not event.provider or not state.provider or event.provider == state.provider:
        return False
    if names_left_job(state, event, same):
        return False
    if event.attempt:
        return event.attempt > state.attempt
    if not state.attempt:
        return True  # the job has been nowhere else yet
    if not state.moved_from:
        return False
    if event.provider not in state.moved_from:
        return True
    return from_webhook(event) and bool(event.provider_job_id) and state.left_jobs is not None


def hold(state: JobState | None, event: JobEvent, same: SameJob = exact_job) -> Transition | None:
    """``state`` keeping ``event``, news from the future (``is_early``), until an attempt opens at
    its provider (``apply`` then takes it in); None when ``event`` is not such news.

    The job's face, version and time do not change (its watchers are told nothing new), but the
    state does (``recent_events``: the news is a duplicate from now on), and it is written, so the
    news is as durable as the table. At most
    ``EARLY_NEWS_LIMIT`` are kept, the furthest on (an end before a start, the latest first):
    which ones does not depend on the order they came in.
    """
    if state is None or not is_early(state, event, same):
        return None
    if event.event_id in state.recent_events or event in state.early_news:
        return Transition(state, False, False, "duplicate event")
    kept = _furthest((*state.early_news, event))
    if kept == state.early_news:
        return Transition(state, False, False, f"{event.kind} from {event.provider} is behind what is kept")
    # Its version and time stay: what the job's watchers see has not changed (a new version would
    # tell every one of them the same face again); recent_events makes a redelivery a duplicate.
    held = dataclasses.replace(state, early_news=kept,
                               recent_events=(*state.recent_events, event.event_id)[-RECENT_EVENTS_LIMIT:])
    return Transition(held, True, False, f"{event.kind} from {event.provider} kept until the job moves there")


def _furthest(news: tuple[JobEvent, ...]) -> tuple[JobEvent, ...]:
    """The ``EARLY_NEWS_LIMIT`` events of ``news`` furthest on, in the order of their time."""
    best = sorted(news, key=lambda e: (_RANK[_KIND_STATUS[e.kind]], e.at, e.event_id), reverse=True)
    return tuple(sorted(best[:EARLY_NEWS_LIMIT], key=lambda e: (e.at, e.event_id)))


def _stamp(old: JobState, merged: JobState, event: JobEvent) -> JobState:
    recent = (*old.recent_events, event.event_id)[-RECENT_EVENTS_LIMIT:]
    return dataclasses.replace(
        merged,
        # max, so a late event does not make the job look older than what we already knew (and
        # merged's: news kept from before and taken in now, _take_early, is as new as it was)
        updated_at=max(old.updated_at, merged.updated_at, event.at),
        recent_events=recent,
        version=old.version + 1,
    )


def _merge(state: JobState, event: JobEvent, same: SameJob) -> tuple[JobState, str, JobEvent | None]:
    """The state with the event's facts folded in (version/recent/updated untouched), why, and
    the event that ended the job if it ended now."""
    s = _merge_identity(state, event) if event.kind == "queued" else state
    filled = "job fields filled" if s is not state else ""
    s, why, ended_by = _merge_attempt(s, event, same)
    if s.early_news:  # what is no longer news from the future goes: old news, or the job ended
        still = tuple(e for e in s.early_news if is_early(s, e, same))
        s = s if still == s.early_news else dataclasses.replace(s, early_news=still)
    return s, "; ".join(r for r in (filled, why) if r), ended_by


def _left(state: JobState, provider: str | None, now_at: str | None) -> JobState:
    """``state`` knowing that ``provider`` was at an earlier attempt than the one at ``now_at``."""
    if provider is None or provider == now_at or provider in state.moved_from:
        return state
    return dataclasses.replace(state, moved_from=tuple(sorted((*state.moved_from, provider))))


def _left_job(state: JobState, attempt: int, provider: str | None, provider_job_id: str | None) -> JobState:
    """``state`` knowing that ``provider_job_id`` at ``provider`` was the job of ``attempt``, which
    it left. Sorted and bounded alike in any order (the latest attempts' stay)."""
    if state.left_jobs is None or not provider or not provider_job_id:
        return state
    job = LeftJob(attempt, provider, provider_job_id)
    if job in state.left_jobs:
        return state
    kept = tuple(sorted((*state.left_jobs, job)))[-LEFT_JOBS_LIMIT:]
    return state if kept == state.left_jobs else dataclasses.replace(state, left_jobs=kept)


def _merge_attempt(s: JobState, event: JobEvent, same: SameJob) -> tuple[JobState, str, JobEvent | None]:
    if event.attempt < s.attempt:
        # (The provider an old attempt names is one the job left, and the provider job it names,
        # that attempt's: so they converge in any order. A webhook names no attempt.)
        s = _left(s, event.provider, s.provider)
        if not from_webhook(event):
            s = _left_job(s, event.attempt, event.provider, event.provider_job_id)
        return s, f"stale attempt {event.attempt} < {s.attempt}", None
    if s.terminal:
        if event.attempt > s.attempt:
            return s, f"{s.status.value} is terminal; attempt {event.attempt} ignored", None
        late = _merge_facts(s, event)
        return late, f"{s.status.value} is terminal" + ("; late facts merged" if late is not s else ""), None
    opened = event.attempt > s.attempt
    if opened:
        s = _left_job(_left(s, s.provider, event.provider), s.attempt, s.provider, s.provider_job_id)
        s = dataclasses.replace(
            s,
            moved_from=tuple(p for p in s.moved_from if p != event.provider),
            attempt=event.attempt,
            provider=event.provider,
            provider_job_id=None,
            status=JobStatus.QUEUED,
            progress=0.0,
            video_url=None,
            error=None,
            provider_queue_position=None,
            provider_queue_at=None,
        )
        if event.kind == "rerouted":
            # A spill names the equivalent model: its order joins that line at the back (its
            # ``lined_at``, the event's time: the dispatcher stamped both). A fallback keeps both.
            s = dataclasses.replace(s, route_note=event.error)
            if event.model:
                s = dataclasses.replace(s, serving_model=event.model, lined_at=event.at)
            reason = f"rerouted to {event.provider} (attempt {event.attempt})"
        else:
            reason = f"attempt {event.attempt} opened by {event.kind}"
    elif event.kind == "rerouted":
        return s, f"rerouted needs attempt > {s.attempt}", None
    else:
        reason = ""
    s = _merge_facts(s, event)
    s, why = _advance(s, event)
    s = _queue_place(s, event)
    ended_by = event if s.terminal else None
    if opened and s.early_news:
        s, taken, ended_by = _take_early(s, same, ended_by)
        why = "; ".join(r for r in (why, taken) if r)
    return s, "; ".join(r for r in (reason, why) if r), ended_by


def _take_early(s: JobState, same: SameJob, ended_by: JobEvent | None) -> tuple[JobState, str, JobEvent | None]:
    """The attempt that just opened at ``s.provider`` takes in the news kept from there (a webhook's,
    or its dispatcher's of this attempt), by time, as if it had come now; and what ended the job
    (``ended_by`` as it came, else the news that ended it). News naming a provider job of an
    attempt the job left is never kept (``is_early``; ``_merge`` lets it go once that is known)."""
    due = [e for e in s.early_news if e.provider == s.provider and e.attempt in (0, s.attempt)]
    if not due:
        return s, "", ended_by
    s = dataclasses.replace(s, early_news=tuple(e for e in s.early_news if e not in due))
    whys = []
    for early in due:
        # As apply folds in a word of the current attempt (a terminal status is never left, only
        # late facts count then), and, where it changed something, as new as the word was (hold
        # left the job's time as it was).
        merged, why, _ = _merge_attempt(s, dataclasses.replace(early, attempt=s.attempt), same)
        if ended_by is None and merged.terminal:
            ended_by = early  # (as it came: the jobs agent asks whether the bridge released its end)
        s = s if merged == s else dataclasses.replace(merged, updated_at=max(s.updated_at, early.at))
        whys.append(why)
    return s, "news kept from before: " + (", ".join(w for w in whys if w) or "no change"), ended_by


def _merge_identity(state: JobState, event: JobEvent) -> JobState:
    changes: dict[str, Any] = {name: getattr(event, name) for name in _IDENTITY if getattr(state, name) is None}
    if not state.metadata and event.metadata:
        changes["metadata"] = event.metadata
    if event.at < state.created_at:
        changes["created_at"] = event.at
    return dataclasses.replace(state, **changes) if changes else state


def _merge_facts(state: JobState, event: JobEvent) -> JobState:
    """Facts that only fill in or grow, so they are safe in any order within one attempt."""
    changes: dict[str, Any] = {}
    if state.provider is None and event.provider is not None:
        changes["provider"] = event.provider
    if state.provider_job_id is None and event.provider_job_id is not None:
        changes["provider_job_id"] = event.provider_job_id
    if event.progress is not None and event.progress > state.progress:
        changes["progress"] = event.progress
    return dataclasses.replace(state, **changes) if changes else state


def _queue_place(state: JobState, event: JobEvent) -> JobState:
    """The job's place in its provider's own queue: the word with the latest ``at`` (a queue
    position may grow as well as shrink: fal puts requests over its limit back in line), gone
    once the job runs or ends. Either way the result does not depend on the order of events."""
    position = event.queue_position
    if position is None and state.provider_queue_at is None and state.provider_queue_position is None:
        return state  # (nearly every event: it tells no place and the job holds none)
    if _RANK[state.status] >= _RANK[JobStatus.RUNNING]:
        if state.provider_queue_position is None and state.provider_queue_at is None:
            return state
        return dataclasses.replace(state, provider_queue_position=None, provider_queue_at=None)
    if position is None:
        return state
    held, at = state.provider_queue_position, state.provider_queue_at
    if at is not None and held is not None and (event.at, -position) <= (at, -held):
        return state  # older news (or the same instant's larger place): kept as it is
    return dataclasses.replace(state, provider_queue_position=position, provider_queue_at=event.at)


def _provider_cancel_error(event: JobEvent) -> str:
    """The error of a job failed by its provider's word that it cancelled it (``_advance``): where,
    and the provider's own words, if any."""
    where = f"cancelled at {event.provider}"
    return f"{where}: {event.error}" if event.error else where


def _advance(state: JobState, event: JobEvent) -> tuple[JobState, str]:
    target = _KIND_STATUS[event.kind]
    if event.kind == "completed" and not event.video_url:
        return (
            dataclasses.replace(state, status=JobStatus.FAILED, error=event.error or "completed without a video_url"),
            "completed without video_url: marked failed",
        )
    if _RANK[target] <= _RANK[state.status]:
        return state, ""
    if target is JobStatus.COMPLETED:
        done = dataclasses.replace(state, status=target, progress=1.0, video_url=event.video_url, error=None)
        return done, "completed"
    if target is JobStatus.FAILED:
        return dataclasses.replace(state, status=target, error=event.error or "failed"), "failed"
    if target is JobStatus.CANCELLED and event.provider:
        # The owner's cancel names no provider (``floodgate.api.cancel``) and ends the job before
        # the dispatcher cancels the provider job, so a provider saying it cancelled a job that has
        # not ended speaks of a cancel the owner never made: our own timeout's, read before the
        # failure it sends; the provider's deadline; an operator at its console. The job failed.
        # (Its release then only frees the slot: a ``cancelled`` one would have the dispatcher
        # cancel, and mark, a job its provider already said was cancelled.)
        failed = dataclasses.replace(state, status=JobStatus.FAILED, error=_provider_cancel_error(event))
        return failed, f"cancelled at {event.provider}: marked failed"
    if target is JobStatus.CANCELLED:
        return dataclasses.replace(state, status=target, error=event.error), "cancelled"
    if target is JobStatus.EXPIRED:
        if state.status is not JobStatus.QUEUED:
            return state, "expired too late: the job left the line already"
        return dataclasses.replace(state, status=target, error=event.error or "deadline passed"), "expired"
    return dataclasses.replace(state, status=target), f"{state.status.value} -> {target.value}"
