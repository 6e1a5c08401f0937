"""Turning what reaches the jobs agent into ``JobEvent``s, and aiming them at the right attempt. Pure.

Three inputs speak about a job: a request (it is ``queued``), a provider webhook (``running``,
``progress``, ``completed``, ...) and the ``events`` topic (the submitter's ``rerouted``,
``failed``, ``expired``; a user's ``cancelled``; a poll's findings). A submission is not among
them: it is recorded in the job's slot, where the API's job view reads it
(``floodgate.api.view``). The ``submitted`` events there are a status poll's word on the job's
place in its provider's own queue (``queue_position``), and those earlier versions wrote.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from floodgate.dispatch import ENDED
from floodgate.jobs.state import (
    ENDING_KINDS,
    WEBHOOK_PREFIX,
    JobEvent,
    JobState,
    SameJob,
    exact_job,
    from_webhook,
    is_early,
    names_left_job,
)
from floodgate.push import target_of_request

_EVENT_FIELDS = ("provider", "provider_job_id", "progress", "video_url", "error", "tenant", "user_id", "model",
                 "webhook_url", "queue_position")

WEBHOOK_KINDS: Mapping[str, str | None] = {
    "queued": None, "running": "running", "completed": "completed", "failed": "failed", "cancelled": "cancelled"}
"""A provider's state in a webhook → the event kind it becomes (None: nothing to record). A provider's
``cancelled`` ends a job ``failed``: only its owner's cancel, which names no provider, ends it
``cancelled`` (``floodgate.jobs.state``)."""


def event_kind(state: str, progress: float | None) -> str | None:
    """The event kind a provider's word on a job stands for, in a webhook or a status answer
    (``WEBHOOK_KINDS``; ``running`` with progress is ``progress``); None: nothing to record."""
    kind = WEBHOOK_KINDS.get(state)
    return "progress" if kind == "running" and progress else kind


def event_from_record(rec: Mapping[str, Any]) -> JobEvent:
    """A ``JobEvent`` from its Avro record (``at`` in epoch ms)."""
    return JobEvent(
        event_id=rec["event_id"], job_id=rec["job_id"], kind=rec["kind"], at=rec["at"] / 1000.0,
        attempt=rec.get("attempt") or 0, metadata=rec.get("metadata") or {},
        **{k: rec.get(k) for k in _EVENT_FIELDS},
    )


def deadline_of(req: Mapping[str, Any], default_s: int) -> int | None:
    """Epoch milliseconds past which a request's job, still waiting, expires: its own
    ``deadline_s``, else ``default_s`` (0: none)."""
    seconds = req.get("deadline_s") or default_s
    return int(req["accepted_at"]) + int(seconds) * 1000 if seconds else None


def queued_event(req: Mapping[str, Any], provider: str | None, deadline_at: int | None = None) -> JobEvent:
    """The ``queued`` event of a decoded request (``JobRequest``), routed to ``provider``;
    ``deadline_at`` as ``deadline_of`` gives it."""
    job_id = req["job_id"]
    push = target_of_request(req)
    return JobEvent(
        event_id=f"{job_id}:queued", job_id=job_id, kind="queued", at=int(req["accepted_at"]) / 1000.0,
        attempt=0, provider=provider, tenant=req["tenant"], user_id=req["user_id"], model=req["model"],
        webhook_url=req.get("webhook_url"), metadata=req.get("metadata") or {},
        push_platform=push.platform if push else None, push_token=push.token if push else None,
        priority=req.get("priority") or "standard",
        deadline_at=None if deadline_at is None else deadline_at / 1000.0,
        request_hash=req.get("request_hash") or None)


def webhook_event(provider: str, *, job_id: str, webhook_id: str, state: str, occurred_at: float,
                  provider_job_id: str | None, progress: float | None, video_url: str | None,
                  error: str | None) -> JobEvent | None:
    """The event a verified, parsed provider webhook stands for, or None if it records nothing.
    Its id is the webhook's, so a redelivered webhook is a duplicate event."""
    kind = event_kind(state, progress)
    if kind is None:
        return None
    return JobEvent(
        event_id=f"{WEBHOOK_PREFIX}{provider}:{webhook_id}", job_id=job_id, kind=kind, at=occurred_at,
        provider=provider, provider_job_id=provider_job_id, attempt=0, progress=progress, video_url=video_url,
        error=error)


def aim(before: JobState | None, event: JobEvent, same: SameJob = exact_job) -> JobEvent | None:
    """``event`` as it applies to the job's current attempt, or None to ignore it.

    Webhooks (``state.WEBHOOK_PREFIX``) and user cancels (no provider) name no attempt (theirs is
    0): they speak for the current one. A provider's dispatcher names its slot's attempt, 0
    included (a poll's word, the slot's timeout, its order's expiry or failed submission): its
    word of an earlier attempt than the job's is None, old news of a slot the job left, even at
    the provider the job is back at (A → B → A), and its end is released as any end of an attempt
    left (``stray_end``). News from another provider than the job's is None: from one the job has
    already moved away from it is ignored, and from one it is moving to (``state.is_early``: its
    ``rerouted`` event is not read yet) the jobs agent keeps it until it is (``state.hold``). So is
    a word naming a provider job of an attempt the job left (``state.left_jobs``), a webhook's too:
    that provider job is not the current attempt's. ``same`` compares provider job ids
    (``state.SameJob``). ``queued`` and ``rerouted`` carry their own attempt and pass unchanged.
    """
    if before is None or event.kind in ("queued", "rerouted"):
        return event
    if event.provider and before.provider and event.provider != before.provider:
        return None
    if before.left_jobs and _of_an_attempt_left(before, event, same):  # (a job that never moved left none)
        return None
    if event.attempt < before.attempt:
        if event.provider and not from_webhook(event):
            return None  # a dispatcher's word: it names the attempt of its slot, which the job left
        return dataclasses.replace(event, attempt=before.attempt)
    return event


def _of_an_attempt_left(before: JobState, event: JobEvent, same: SameJob) -> bool:
    """Whether ``event`` names a provider job of an attempt the job left (``state.names_left_job``)
    and not the current attempt's own: that one is never old news. A provider makes one job of two
    attempts only when a later attempt takes over the slot an earlier one still holds there (a
    crash or a duplicate dispatch kept it past the reroute: ``streams.dispatcher``'s
    ``take_over``); its dispatcher then names the current attempt with the provider job, and a
    dispatcher's word names its slot's attempt, so that word is the attempt's own."""
    if not names_left_job(before, event, same):
        return False
    if event.attempt == before.attempt and not from_webhook(event):
        return False  # the dispatcher of the current attempt's slot: its provider job is the attempt's
    provider, named, current = event.provider, event.provider_job_id, before.provider_job_id
    return not (provider and named and current and same(provider, current, named))


@dataclass(frozen=True)
class Release:
    """A slot release the jobs agent owes a provider (a ``SlotRelease`` but for its time)."""

    provider: str
    attempt: int
    status: str
    provider_job_id: str | None = None


def stray_end(before: JobState | None, event: JobEvent, same: SameJob = exact_job) -> Release | None:
    """The release owed to the provider of an event ``aim`` ignores because the job has moved on
    to another provider, or because it is of an attempt the job left at the provider the job is
    back at (a dispatcher's word naming that attempt, or a word naming its provider job), when the
    event says the job ended there; None otherwise.

    Such a provider may still hold a slot for the job (a duplicate dispatch, a fallback that ran
    behind a submission): its dispatcher keeps the slot until a release comes, and its timeout
    only tells the end again, so without this answer the slot is never freed. The job's own
    state is not changed. A provider job the event names is released as the webhook bridge
    releases one (``ENDED``: only the slot that holds that provider job is freed); else the end
    frees the provider's slot of the event's attempt or an earlier one. News from a provider the
    job is moving to (``state.is_early``) is no stray: it is kept for the job's next attempt. News
    of an attempt later than the table knows frees nothing either (a job that ended ignores it).
    ``same`` compares provider job ids (``state.SameJob``).
    """
    if before is None or not event.provider or event.kind not in ENDING_KINDS:
        return None
    if aim(before, event, same) is not None or is_early(before, event, same) or event.attempt > before.attempt:
        return None
    if event.provider_job_id:
        return Release(event.provider, event.attempt, ENDED, event.provider_job_id)
    # Never "cancelled": that release asks the dispatcher to cancel and mark the job, which has
    # moved on (a mark would drop a later order of the job there); any other status only frees.
    # (As a provider's cancel of the job's current attempt ends the job "failed": state._advance.)
    return Release(event.provider, event.attempt, "failed" if event.kind == "cancelled" else event.kind)
