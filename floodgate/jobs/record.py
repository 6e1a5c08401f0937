"""The value of the jobs table, and the snapshot the outside world sees of it. Pure.

The jobs table's changelog *is* the ``notifications`` topic: one state change costs one Kafka
record, which is at once the table's durable copy and the message the API's job view reads. Its
values are JSON documents (a table changelog carries no headers, so the self-describing JSON
form is the one that can evolve; ``v`` names the layout)::

    {"v": 1, "s": <JobState.to_dict()>, "e": <last event id>, "src": [partition, offset], "sent": <Sent>,
     "end": {"e": <event id>, "sent": <Sent>, "v": <the job's version it ended at>}}

``src`` is the ``requests`` record that admitted the job: the same record seen again after a
crash (its offset was not committed) is processed again, a replay of the job from another record
is a duplicate. A job whose state was created by an event before its request was read (a cancel
that overtook it) has no ``src`` yet; if that event ended it, its result went out without the
request's fields, and goes out again once the request has filled them in (``ended_unadmitted``).

``sent`` says what the change that wrote an ended job's record sent besides it (``Sent``: the jobs
agent sends it again when it reads the same event again). It is written only when it is not
``Sent.RESULT_AND_RELEASE``: the record of a job that has not ended, or whose end the jobs agent
released itself, is written as before the field existed, and a record without it reads as that
version read it.

``end`` is the change that ended the job, once a later change wrote its record (a word that filled
in a late fact, a request read after a cancel): its event, what it sent and the job's version it
sent (``Ending``), kept by every later write. The later write can land while the end's sends did
not (the changelog and ``results`` are written independently, offsets committed after both); the
end's event, read again, must still send the job's result, though ``e`` and ``sent`` now speak of
the later change, and at the version the end sent: the owner's webhook of a result is named by
the job's version, so a newer one would be a second webhook of the same end. A record
whose own change ended the job, or whose job has not ended, has no ``end`` and is written as before
the field existed; a record without it (every one an earlier version wrote) reads as that version
read it.

``snapshot`` is the ``JobSnapshot`` contract (``schemas/job_snapshot.avsc``), written to
``results`` and given to the API's readers.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from floodgate import codec
from floodgate.errors import SchemaError, ValidationError
from floodgate.jobs.state import JobEvent, JobState, SameJob, Transition, exact_job, from_webhook, is_state_dict

RECORD_VERSION = 1
SCHEMA_HEADER = "fg-schema"


class Sent(StrEnum):
    """What the change that wrote an ended job's record sent besides the record itself.

    The jobs agent sends it again when it reads the same event again (its first sends may not
    have landed), and no more: a release the webhook bridge made is not the agent's to repeat (a
    ``cancelled`` one, for a job an earlier version ended ``cancelled`` on its provider's word, has
    the dispatcher cancel a provider job its provider said was cancelled; this version ends such a
    job ``failed``: ``floodgate.jobs.state``), and a result of a version never sent is one more
    webhook to the job's owner. It cannot be told from the state: an end kept from before
    (``state.hold``) and taken in by a reroute is gone from the state once taken in, and a word on
    a job that had ended leaves it ended as the end did."""

    RESULT_AND_RELEASE = "result+release"
    """The change ended the job, and the jobs agent released its slot: the job's result and that
    release. What a record that does not say means (every record before the field existed)."""
    RESULT = "result"
    """The change ended the job with its provider's webhook, whose end the webhook bridge released
    already, or ended a job at no provider (a cancel read before its request: a release needs a
    provider, so none went): the job's result only."""
    RELEASE = "release"
    """A provider's word on a job that had ended, which filled in a late fact: the release of the
    job's slot there, again, and no result."""


@dataclass(frozen=True)
class Ending:
    """The change that ended a job, kept in its record once a later change wrote it."""

    event_id: str
    sent: Sent
    """What that change sent besides the record (``Sent``): never ``Sent.RELEASE``, which a change
    that ends nothing sends, but for a record an earlier version wrote after a late fact (its own
    ``sent`` is all such a record knows)."""
    version: int | None = None
    """The job's version that change wrote, which its result carried (None: not known, then the
    record's own). Sent again, the result keeps it: an outgoing webhook is named by the job and
    its version, and its receiver drops one it has had, but not the same end at a newer version."""


@dataclass(frozen=True)
class JobRecord:
    state: JobState
    last_event: str | None = None
    admitted_by: tuple[int, int] | None = None
    """(partition, offset) of the ``requests`` record that admitted the job, once one has."""
    sent: Sent = Sent.RESULT_AND_RELEASE
    """What the change that wrote the record sent besides it, when the job has ended (``Sent``)."""
    ended_by: Ending | None = None
    """The change that ended the job, when a later change wrote the record; None while the record
    is the end's own (``last_event`` and ``sent`` say it) or the job has not ended."""

    @property
    def ending(self) -> Ending | None:
        """The change that ended the job, as far as the record knows: what a later write of it
        carries (``ended_by``). The record's own change when the job has ended and ``ended_by`` is
        not set: an earlier version's record of a later change names that change, the best it
        knows. An end at no provider released nothing, so it owes its result only, even once a
        request has filled the provider in."""
        if self.ended_by is not None:
            return self.ended_by
        if not self.state.terminal or self.last_event is None:
            return None
        sent = self.sent
        if sent is Sent.RESULT_AND_RELEASE and self.state.provider is None:
            sent = Sent.RESULT
        return Ending(self.last_event, sent, self.state.version)

    @property
    def ended_unadmitted(self) -> bool:
        """Whether the job ended before any request admitted it (a user's cancel read before the
        request). Its result then lacks the request's fields (tenant, owner, webhook, push
        target), so the request that admits it must send the result again; it never dispatches."""
        return self.admitted_by is None and self.state.terminal

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"v": RECORD_VERSION, "s": self.state.to_dict(), "e": self.last_event}
        if self.admitted_by is not None:
            doc["src"] = list(self.admitted_by)
        if self.sent is not Sent.RESULT_AND_RELEASE:
            doc["sent"] = self.sent.value
        if self.ended_by is not None:
            end: dict[str, Any] = {"e": self.ended_by.event_id}
            if self.ended_by.sent is not Sent.RESULT_AND_RELEASE:
                end["sent"] = self.ended_by.sent.value
            if self.ended_by.version is not None:
                end["v"] = self.ended_by.version
            doc["end"] = end
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, raw: bytes) -> JobRecord:
        """Raises ``SchemaError`` for bytes that are not a job record."""
        try:
            doc = orjson.loads(raw)
            state = JobState.from_dict(doc["s"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            raise SchemaError(f"not a job record: {exc}") from exc
        return cls(state=state, last_event=doc.get("e"), admitted_by=_source(doc.get("src")),
                   sent=_sent(doc.get("sent")), ended_by=_ending(doc.get("end")))


def sent_of(before: JobState | None, step: Transition, aimed: JobEvent, same: SameJob = exact_job) -> Sent:
    """What the jobs agent sends besides the job's record for ``step``, the change ``aimed`` (the
    event as ``floodgate.jobs.events.aim`` gave it) made of ``before``; ``same`` compares provider
    job ids (``state.SameJob``). Meaningful once the job has ended: before, the default, which
    writes nothing.

    A provider's own word that its job ended was sent to the slot's dispatcher by the webhook
    bridge already (with the provider job id, which the connector may spell otherwise than the one
    recorded: fal); anything else is the agent's to release. The word is the one that ended the
    job: a reroute that took in an end kept from before (``hold``) owes what that end would have
    owed coming after it. Never a ``cancelled`` release (a cancel call, and a mark, for a provider
    job that provider already said was cancelled): a provider's word that it cancelled the job ends
    it ``failed`` (``floodgate.jobs.state``), whose release only frees the slot. A word on a job
    that had ended sends a release (its provider's slot, made sure of) and no result."""
    after = step.state
    if step.became_terminal and after is not None:
        ender = step.ended_by or aimed
        provider, named, recorded = ender.provider, ender.provider_job_id, after.provider_job_id
        if from_webhook(ender) and provider and named and recorded and same(provider, named, recorded):
            return Sent.RESULT
        return Sent.RESULT_AND_RELEASE
    if before is not None and before.terminal:
        return Sent.RELEASE
    return Sent.RESULT_AND_RELEASE


def snapshot(state: JobState) -> dict[str, Any]:
    """The ``JobSnapshot`` record for ``state``."""
    return {
        "job_id": state.job_id, "tenant": state.tenant or "default", "user_id": state.user_id or "",
        "model": state.model or "", "provider": state.provider, "provider_job_id": state.provider_job_id,
        "status": state.status.value, "progress": float(state.progress), "video_url": state.video_url,
        "error": state.error, "attempt": state.attempt, "created_at": int(state.created_at * 1000),
        "updated_at": int(state.updated_at * 1000), "webhook_url": state.webhook_url,
        "metadata": dict(state.metadata), "version": state.version,
        "push": ({"platform": state.push_platform, "token": state.push_token}
                 if state.push_platform and state.push_token else None),
        "priority": state.priority,
        "request_hash": state.request_hash,
        "serving_model": state.serving_model,
        "route_note": state.route_note,
        "provider_queue_position": state.provider_queue_position,
        "lined_at": None if state.lined_at is None else round(state.lined_at * 1000),
    }


Headers = Mapping[str, Any] | Iterable[tuple[str, Any]] | None


def is_avro(headers: Headers) -> bool:
    """Whether a record carries our Avro contract header (older ``notifications`` records do)."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return any(k == SCHEMA_HEADER for k, _ in pairs)


def decode_notification(value: bytes, headers: Headers = None) -> dict[str, Any]:
    """The snapshot a ``notifications`` record stands for: a jobs-table changelog value, or an
    Avro ``JobSnapshot`` as the topic carried before it became the changelog. Raises
    ``SchemaError`` when it is neither."""
    return read_notification(value, headers)[0]


def read_notification(value: bytes, headers: Headers = None) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """``decode_notification``'s snapshot, and the ``requests`` record that admitted the job
    (``src``: partition, offset; None where the record does not say, as an Avro snapshot)."""
    if is_avro(headers):
        return codec.decode("JobSnapshot", value, headers), None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"not a job record: {exc}") from exc
    found = _snapshot_of(doc.get("s")) if isinstance(doc, dict) else None
    if found is None:  # what the direct reading does not vouch for takes the long way, which says what is wrong
        record = JobRecord.decode(value)
        return snapshot(record.state), record.admitted_by
    return found, _source(doc.get("src"))


def _source(src: Any) -> tuple[int, int] | None:
    """A record's ``src`` as (partition, offset); None when absent or not two integers (a value
    that is not what ``JobRecord.encode`` writes names no record)."""
    if type(src) is list and len(src) == 2 and type(src[0]) is int and type(src[1]) is int:
        return src[0], src[1]
    return None


_SENT: Mapping[Any, Sent] = {sent.value: sent for sent in Sent}


def _sent(value: Any) -> Sent:
    """A record's ``sent``; what a record does not say, or says in a way this version does not
    know (a later version's), reads as a record written before the field existed."""
    return _SENT.get(value, Sent.RESULT_AND_RELEASE) if type(value) is str else Sent.RESULT_AND_RELEASE


def _ending(end: Any) -> Ending | None:
    """A record's ``end``; None when absent or not what ``JobRecord.encode`` writes (a record that
    names no end reads as one written before the field existed)."""
    if type(end) is dict and type(event_id := end.get("e")) is str:
        version = end.get("v")
        return Ending(event_id, _sent(end.get("sent")), version if type(version) is int else None)
    return None


def _snapshot_of(s: Any) -> dict[str, Any] | None:
    """``snapshot(JobState.from_dict(s))`` without building the state, or None when ``s`` is not a
    state ``JobState.from_dict`` would take as it is. The API's job view reads every state
    change of every job: the state's validation and construction were most of its cost per record."""
    if not is_state_dict(s):
        return None
    platform, token = s.get("push_platform"), s.get("push_token")
    return {
        "job_id": s["job_id"], "tenant": s.get("tenant") or "default", "user_id": s.get("user_id") or "",
        "model": s.get("model") or "", "provider": s.get("provider"), "provider_job_id": s.get("provider_job_id"),
        "status": s["status"], "progress": float(s.get("progress", 0.0)), "video_url": s.get("video_url"),
        "error": s.get("error"), "attempt": s.get("attempt", 0), "created_at": int(s.get("created_at", 0.0) * 1000),
        "updated_at": int(s.get("updated_at", 0.0) * 1000), "webhook_url": s.get("webhook_url"),
        "metadata": dict(s.get("metadata", {})), "version": s.get("version", 0),
        "push": {"platform": platform, "token": token} if platform and token else None,
        "priority": s.get("priority"),
        "request_hash": s.get("request_hash"),
        "serving_model": s.get("serving_model"),
        "route_note": s.get("route_note"),
        "provider_queue_position": s.get("provider_queue_position"),
        "lined_at": None if (lined := s.get("lined_at")) is None else round(lined * 1000),
    }
