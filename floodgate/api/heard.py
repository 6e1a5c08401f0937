"""A provider's word on a job, told to the job's watchers before the jobs table has it. Pure.

The bridge writes a verified webhook to ``webhooks`` and, once Kafka has it (``acks=all``), the
jobs agent in the worker folds it into the job's state; the job view reads the new state from
``notifications`` and only then tells the job's SSE and WebSocket subscribers. Two Kafka hops and
the worker's turn lie between the provider's word and the watcher, and while the worker runs at
its max that turn is most of the wait (a webhook waits there for the consumer to fetch it and
hand it out: p50 about 50 ms, p99 150-660 ms in the notification bench's runs beside the
pipeline at its max).

The API process that received the webhook knows what it says the moment Kafka acknowledged it:
``as_heard`` lays that word over the snapshot its view holds, with the jobs agent's own rules
(``floodgate.jobs.events.webhook_event``, ``aim`` and the state machine's ``apply``), so the early
word is what the table will say unless another event about the job (a cancel, a reroute) gets to
the worker first. Then the table's word follows, and the watcher is told that too: the
subscription ends on the table's terminal state, never on a heard one.

The other API processes (behind a load balancer, a job's watcher and its provider's webhook
seldom meet on one) read ``webhooks`` too, from its end, and decode only the records of jobs their
own subscribers watch (``floodgate.api.feed``): their watchers hear the word one Kafka hop after
the bridge, still ahead of the worker. Nothing here is durable: the table's word is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.providers.base import ProviderEvent
from floodgate.errors import ValidationError
from floodgate.jobs.events import aim, webhook_event
from floodgate.jobs.state import TERMINAL, JobState, JobStatus, apply, status_rank

Snapshot = dict[str, Any]

HEARD = "_heard"
"""Marks a snapshot with a provider's word laid over it (not yet the jobs table's)."""


@dataclass(frozen=True)
class Heard:
    """A verified webhook, stored on Kafka: which provider said it, and what it says of which job."""

    provider: str
    job_id: str
    event: ProviderEvent


def rank(snapshot: Snapshot) -> int:
    """How far the job has gone: queued 0, submitted 1, running 2, ended 3."""
    return status_rank(snapshot["status"])


def face(snapshot: Snapshot) -> tuple[Any, ...]:
    """What a watcher sees of the job's progress (its status and what goes with it)."""
    return (snapshot.get("status"), snapshot.get("progress"), snapshot.get("attempt"), snapshot.get("provider"),
            snapshot.get("provider_job_id"), snapshot.get("provider_queue_position"), snapshot.get("video_url"),
            snapshot.get("error"))


def _state_of(snapshot: Snapshot) -> JobState:
    """The part of the job's state the provider's word can change, from its snapshot."""
    return JobState(
        job_id=snapshot["job_id"], provider=snapshot.get("provider"), provider_job_id=snapshot.get("provider_job_id"),
        status=JobStatus(snapshot["status"]), progress=float(snapshot.get("progress") or 0.0),
        video_url=snapshot.get("video_url"), error=snapshot.get("error"), attempt=int(snapshot.get("attempt") or 0),
        updated_at=int(snapshot.get("updated_at") or 0) / 1000,
        provider_queue_position=snapshot.get("provider_queue_position"))


def _may_be_the_attempts(named: str | None, before: JobState) -> bool:
    """Whether the table may take a word naming provider job ``named`` as the current attempt's,
    as far as the snapshot ``before`` was built from can say.

    The table takes a word naming a provider job of an attempt the job left as old news, even from
    the provider the job is back at (``JobState.left_jobs``), and a snapshot does not say which
    those are. A job that never moved (attempt 0) left none; the attempt's own provider job is
    never one of them (each attempt is a provider job of its own). So a job that moved hears early
    only a word naming no provider job or the snapshot's own, compared exactly (the view has no
    connector to say that two spellings name one fal job); any other word, its attempt's provider
    job not known yet included, is the table's to tell, once it has taken it, if it does."""
    return not named or not before.attempt or named == before.provider_job_id


def as_heard(snapshot: Snapshot, word: Heard) -> Snapshot | None:
    """``snapshot`` as the jobs table will have it once it takes ``word`` in, with the same version
    and marked ``HEARD``; None when the word changes nothing the table would change (old news, a
    provider the job has left, a job that has ended: a terminal state is the table's to tell), or
    may be a word the table ignores (on a job that moved, one naming another provider job than its
    attempt's: ``_may_be_the_attempts``), or is a provider's cancel (whose, only the table knows)."""
    if snapshot.get("status") in TERMINAL or snapshot.get("job_id") != word.job_id:
        return None
    try:
        said = word.event
        event = webhook_event(word.provider, job_id=word.job_id, webhook_id=said.webhook_id, state=said.state,
                              occurred_at=said.occurred_at, provider_job_id=said.provider_job_id,
                              progress=said.progress, video_url=said.video_url, error=said.error)
        before = _state_of(snapshot)
    except (ValidationError, ValueError, TypeError):
        return None  # the jobs agent dead-letters what does not make an event; nothing to tell early
    if event is None or not _may_be_the_attempts(event.provider_job_id, before):
        return None
    if event.kind == "cancelled":
        # Whose cancel it tells, only the table knows: the echo of the owner's cancel, which the
        # table recorded (``cancelled``) and this view may not have read yet, or one the owner
        # never made (``failed``: ``floodgate.jobs.state``). Told early as either, it could be
        # wrong, and a repeated cancel would meet the wrong end (409 instead of 202).
        return None
    aimed = aim(before, event)
    if aimed is None:
        return None
    step = apply(before, aimed)
    after = step.state
    if not step.changed or after is None:
        return None
    return {**snapshot, "status": after.status.value, "progress": float(after.progress), "provider": after.provider,
            "provider_job_id": after.provider_job_id, "video_url": after.video_url, "error": after.error,
            "provider_queue_position": after.provider_queue_position,
            "updated_at": max(int(snapshot.get("updated_at") or 0), int(word.event.occurred_at * 1000)), HEARD: True}


@dataclass
class Told:
    """What one subscriber (an SSE response, a WebSocket subscription) was told of its job last,
    and whether a snapshot is news to it.

    A snapshot is news when it is further on than the last one told: a newer version, or the same
    version further on (``rank``, then progress), which is how the view shows what it learnt
    beside the jobs table (the job's submission read from its slot, a provider's word heard at
    the bridge). The table's own copy of a word told early is not news again, except an end's:
    the recorded end is what tells the subscriber (``final``) that nothing follows."""

    version: int = -1
    rank: int = -1
    progress: float = -1.0
    heard: tuple[Any, ...] | None = None
    """The face of the last snapshot told, when it was a heard one."""

    @classmethod
    def resumed(cls, version: int) -> Told:
        """A client that says it saw ``version`` (SSE's ``Last-Event-ID``): everything of it."""
        return cls(version=version, rank=3, progress=1.0)

    def _mark(self) -> tuple[int, int, float]:
        return self.version, self.rank, self.progress

    def news(self, snapshot: Snapshot) -> bool:
        mark = (int(snapshot["version"]), rank(snapshot), float(snapshot.get("progress") or 0.0))
        if mark <= self._mark():
            return False
        if self.heard is not None and mark[0] > self.version and face(snapshot) == self.heard:
            self.version = mark[0]  # the table caught up with what was told: nothing new to say,
            self.heard = None if not snapshot.get(HEARD) else self.heard
            return final(snapshot)  # but that the end told is recorded now
        return True

    def sent(self, snapshot: Snapshot) -> None:
        self.version, self.rank = int(snapshot["version"]), rank(snapshot)
        self.progress = float(snapshot.get("progress") or 0.0)
        self.heard = face(snapshot) if snapshot.get(HEARD) else None


def final(snapshot: Snapshot) -> bool:
    """Whether nothing can follow ``snapshot`` for its subscriber: the table's terminal state."""
    return snapshot.get("status") in TERMINAL and not snapshot.get(HEARD)


__all__ = ["HEARD", "Heard", "Told", "as_heard", "face", "final", "rank"]
