"""requests · webhooks · events → the jobs table → dispatch orders, results, slot releases.

One agent reads the three co-partitioned topics that speak about a job (all keyed by job id, with
the same partition count), so one table write per state change is all a job's life on this side
costs, and a webhook or a request is one hop, not two:

* a **request** is validated (again, when it did not come through the API), deduplicated against
  the jobs table, routed, and written as the job's ``queued`` state; then its dispatch order goes
  to ``dispatch.<provider>``;
* a **webhook** (verified at the bridge) is parsed by its provider's connector into an event;
* an **event** (from the submitter, a poll, a user's cancel) is decoded.

Every event goes through the pure state machine (``floodgate.jobs.state.apply``). The table's
changelog is the compacted ``notifications`` topic (see ``floodgate.jobs.record``): the write *is*
the notification the API's job view reads. A terminal change also goes to ``results`` and frees
the job's provider slot through ``release.<provider>``; so does a provider's word that the job
ended there after the job moved on to another provider, or that an attempt the job left there
ended once the job is back there (``floodgate.jobs.events.stray_end``). A provider's word read
before the ``rerouted`` event that sends the job there is kept in the job's state until that event
is read, and counts then (``floodgate.jobs.state.hold``); an end it tells is released as it would
be had it come after the reroute. Provider job ids are compared as the provider's connector says
(``same_job``).
A request read after a cancel that ended its job sends the job's result again, now with the
request's fields (``JobRecord.ended_unadmitted``).

Outputs of a change are sent again when the *same* record is seen again (a redelivery after a crash
between the table write and the sends), those the change sent and no others (an ended job's record
says which: ``JobRecord.sent``). So are the outputs of the change that ended a job when its event
is read again after a later word changed the job's record (a late fact, a request read after a
cancel: that write can land while the end's sends did not): every later write keeps the end's
event, what it sent and at which version (``JobRecord.ended_by``), and the result sent again is the
job's newest state at the version its owner's webhook was named by (a newer version would reach
the owner as a second webhook of the same end). Their consumers are idempotent (snapshots carry a
version, releases of a slot not held are no-ops, outgoing webhooks keep their id, the submitter
knows an order it has seen).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.partitioner import murmur2

from connectors.providers.base import read_webhook, same_provider_job
from floodgate import codec
from floodgate.errors import SchemaError, ValidationError
from floodgate.jobs.events import aim, deadline_of, event_from_record, queued_event, stray_end, webhook_event
from floodgate.jobs.record import JobRecord, Sent, sent_of, snapshot
from floodgate.jobs.state import JobEvent, JobState, Transition, apply, hold
from floodgate.jobs.timing import milestones
from floodgate.routing import chain_for, known_models
from floodgate.validation import validate_job_request
from streams import guard
from streams.app import job_table_options
from streams.context import Pipeline

log = logging.getLogger(__name__)

STAGES = {"requests": "admission", "webhooks": "webhooks", "events": "job-state"}
"""The stage label (metrics, dead letters) of each input topic."""


def home_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka, and the SDK) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def request_payload(req: dict[str, Any]) -> dict[str, Any]:
    """A decoded request in the shape ``validate_job_request`` checks."""
    inp = req["input"]
    return {
        "model": req["model"], "user_id": req["user_id"],
        "input": {"prompt": inp["prompt"], "image_url": inp.get("image_url"), "params": inp.get("params") or None},
        "webhook_url": req.get("webhook_url"), "metadata": req.get("metadata") or None,
        "notify": req.get("notify"), "priority": req.get("priority"), "deadline_s": req.get("deadline_s"),
    }


class SeenIds:
    """Bounded memory of recently seen ids: most duplicate webhooks stop here, cheaply; the state
    machine (idempotent per event id) drops the rest."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """True if ``key`` is new."""
        if key in self._ids:
            self._ids.move_to_end(key)
            return False
        self._ids[key] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class JobDesk:
    """The jobs agent: the one writer of the jobs table."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        app, names, emit, settings = pipe.app, pipe.names, pipe.emit, pipe.settings
        self.partitions = settings.partitions
        self.requests = emit.topic(names.requests, partitions=self.partitions)
        self.webhooks = emit.topic(names.webhooks, partitions=self.partitions)
        emit.topic(names.events, partitions=self.partitions)
        self.kinds = {names.requests: "requests", names.webhooks: "webhooks", names.events: "events"}
        self.source = app.topic(names.requests, names.webhooks, names.events, partitions=self.partitions,
                                key_type=bytes, value_type=bytes)
        # acks=False as Faust's own changelog topics: no stream of the worker reads this one (recovery
        # does), and an acknowledged topic no stream reads is a stalled agent to Faust's livelock
        # monitor, logged at ERROR every few seconds once the worker has run stream_processing_timeout.
        changelog = app.topic(names.notifications, partitions=self.partitions, key_type=bytes, value_type=bytes,
                              acks=False)
        self.table = app.Table("jobs", partitions=self.partitions, key_type=bytes, value_type=bytes,
                               changelog_topic=changelog, **job_table_options(settings, "jobs"))
        self.seen_webhooks = SeenIds()
        app.agent(self.source, name="jobs")(self._agent)

    async def _agent(self, stream: faust.StreamT) -> None:
        names, metrics = self.pipe.names, self.pipe.metrics
        async for ev in stream.events():
            msg = ev.message
            stage = STAGES[self.kinds[msg.topic]]
            metrics.events_processed.labels(stage).inc()

            async def handle(msg: Any = msg) -> None:
                await self.on_record(msg)

            await guard.process(handle, emit=self.pipe.emit, dlq=names.dlq, message=msg, stage=stage,
                                on_dead_letter=metrics.dead_letters.labels(stage).inc)

    async def on_record(self, msg: Any) -> None:
        kind = self.kinds[msg.topic]
        if kind == "requests":
            await self.on_request(msg)
        elif kind == "webhooks":
            await self.on_webhook(msg)
        else:
            await self.on_event(event_from_record(codec.decode("JobEvent", msg.value, msg.headers)))

    # -- the table ---------------------------------------------------------------------------

    def get(self, key: bytes) -> JobRecord | None:
        raw = self.table.get(key)
        return None if raw is None else JobRecord.decode(raw)

    def put(self, key: bytes, record: JobRecord) -> None:
        self.table[key] = record.encode()

    # -- requests ----------------------------------------------------------------------------

    async def on_request(self, msg: Any) -> None:
        pipe = self.pipe
        try:
            req = codec.decode_request(msg.value, msg.headers)
            now = datetime.now(UTC)
            if req["source"] != "http":  # SDKs and CLI replays run outside our control: check again
                validate_job_request(request_payload(req), known_models=known_models(pipe.routing, now),
                                     allow_private=pipe.settings.allow_private_webhooks)
        except (SchemaError, ValidationError) as exc:
            pipe.metrics.dead_letters.labels("admission").inc()
            await pipe.emit.dead_letter(pipe.names.dlq, msg, f"invalid request: {exc}", exc)
            return
        job_id = req["job_id"]
        key = job_id.encode()
        home = home_partition(key, self.partitions)
        if msg.partition != home:
            # Produced with another partitioner (kcat and librdkafka default to CRC32): the job's
            # table entry lives on partition `home`, so the record goes there first.
            pipe.metrics.rehomed.inc()
            await self.requests.send(key=key, value=msg.value, headers=list(msg.headers or []), partition=home,
                                     force=True)
            return
        here = (msg.partition, msg.offset)
        record = self.get(key)
        if record is not None and record.admitted_by not in (None, here):
            pipe.metrics.duplicates.inc()
            return
        if record is not None and record.admitted_by == here:
            await self.resend_admission(record.state, req)  # the same record again, after a crash
            return
        try:
            target = chain_for(pipe.routing, req["model"], now)[0]
        except ValidationError as exc:
            # Accepted earlier, unroutable now (e.g. every provider for the model retired since):
            # the job exists for its owner, so it fails visibly rather than vanishing into the DLQ.
            target, unroutable = None, str(exc)
        events = [queued_event(req, target.provider if target else None,
                               deadline_of(req, pipe.settings.default_deadline_s))]
        if target is None:
            events.append(JobEvent(event_id=f"{job_id}:failed:route", job_id=job_id, kind="failed",
                                   at=events[0].at, error=unroutable))
        state = record.state if record is not None else None
        # A job a cancel ended before this request was read: its result went out with no tenant,
        # owner, webhook or push target. The request fills them in without a terminal change, so
        # the result is sent again here (once: this record is now its admission, and any other
        # request for the job is a duplicate). A terminal job is never dispatched.
        refinish = record is not None and record.ended_unadmitted
        became_terminal = False
        for event in events:
            step = apply(state, event)
            state, became_terminal = step.state, became_terminal or step.became_terminal
        assert state is not None
        # A cancel's end is kept: its event read again still owes the job's result, at the version
        # sent below, the first result its owner's webhook carries (the cancel's had no target).
        ending = record.ending if record is not None else None
        if refinish and ending is not None:
            ending = dataclasses.replace(ending, version=state.version)
        self.put(key, JobRecord(state, events[-1].event_id, here, ended_by=ending))
        pipe.metrics.transitions.labels(state.status.value).inc()
        if became_terminal or refinish:
            await self.finish(state, provider=None)
        elif not state.terminal and target is not None:
            await self.dispatch(req, target.provider, target.provider_model)
        pipe.metrics.admitted.labels(req["source"]).inc()

    async def resend_admission(self, state: JobState, req: dict[str, Any]) -> None:
        if state.terminal:
            await self.finish(state, provider=None)
        elif state.attempt == 0 and state.status.value == "queued" and state.provider:
            target = next((t for t in chain_for(self.pipe.routing, req["model"], datetime.now(UTC))
                           if t.provider == state.provider), None)
            if target is not None:
                await self.dispatch(req, target.provider, target.provider_model)

    async def dispatch(self, req: dict[str, Any], provider: str, provider_model: str) -> None:
        inp = req["input"]
        await self.pipe.emit.send(self.pipe.names.dispatch(provider), "DispatchOrder", req["job_id"], {
            "job_id": req["job_id"], "tenant": req["tenant"], "model": req["model"], "provider": provider,
            "provider_model": provider_model, "prompt": inp["prompt"], "image_url": inp.get("image_url"),
            "params": inp.get("params") or {}, "attempt": 0, "tried": [], "queued_at": int(req["accepted_at"]),
            "webhook_url": req.get("webhook_url"), "metadata": req.get("metadata") or {},
            "priority": req.get("priority") or "standard",
            "deadline_at": deadline_of(req, self.pipe.settings.default_deadline_s),
        })

    # -- webhooks ----------------------------------------------------------------------------

    async def on_webhook(self, msg: Any) -> None:
        pipe = self.pipe
        try:
            provider, job_id, parsed = read_webhook(msg.value, msg.headers, pipe.providers)
        except Exception as exc:  # poison webhooks go to the DLQ, the agent goes on
            pipe.metrics.dead_letters.labels("webhooks").inc()
            await pipe.emit.dead_letter(pipe.names.dlq, msg, f"unusable webhook: {exc}", exc)
            return
        key = job_id.encode()
        home = home_partition(key, self.partitions)
        if msg.partition != home:
            pipe.metrics.rehomed.inc()  # keyed otherwise than by its job id: its job lives on `home`
            await self.webhooks.send(key=key, value=msg.value, headers=list(msg.headers or []), partition=home,
                                     force=True)
            return
        if not self.seen_webhooks.add(f"{provider}:{parsed.webhook_id}"):
            return
        event = webhook_event(provider, job_id=job_id, webhook_id=parsed.webhook_id,
                              state=parsed.state, occurred_at=parsed.occurred_at,
                              provider_job_id=parsed.provider_job_id, progress=parsed.progress,
                              video_url=parsed.video_url, error=parsed.error)
        if event is None:
            return
        pipe.metrics.webhooks.labels(provider).inc()
        await self.on_event(event)

    # -- events ------------------------------------------------------------------------------

    def same_job(self, provider: str, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` name one provider job at ``provider`` (``state.SameJob``)."""
        return same_provider_job(self.pipe.providers.get(provider), a, b)

    def observe_milestones(self, before: JobState | None, after: JobState) -> None:
        reached = milestones(before, after, time.time())
        if reached is None:
            return
        metrics = self.pipe.metrics
        if reached.first_progress is not None:
            metrics.first_progress.labels(reached.provider, reached.model).observe(reached.first_progress)
        if reached.completion is not None:
            metrics.completion.labels(reached.provider, reached.model).observe(reached.completion)

    async def on_event(self, event: JobEvent) -> None:
        pipe = self.pipe
        key = event.job_id.encode()
        record = self.get(key)
        before = record.state if record is not None else None
        if record is not None and before is not None and record.last_event == event.event_id:
            # Same event again: the previous run may have died before its sends landed. What it
            # sent is not in the state (an end a reroute took in is gone from it), so the record
            # keeps it (``JobRecord.sent``).
            if before.terminal:
                await self.send_again(record.state, record.sent, event)
            return
        if record is not None and record.ended_by is not None and record.ended_by.event_id == event.event_id:
            # The event that ended the job again, after a later word (a late fact) wrote the
            # record: that write may have landed and this event's sends not (the changelog and
            # `results` are written independently). aim and apply find nothing to change on an
            # ended job, so only the record can say the result is owed.
            end = record.ended_by
            state = record.state if end.version is None else dataclasses.replace(record.state, version=end.version)
            await self.send_again(state, end.sent, event)
            return
        aimed = aim(before, event, self.same_job)
        if aimed is None:
            held = hold(before, event, self.same_job)
            if held is not None:  # from the provider the job is moving to: it counts once the reroute is read
                if held.changed and held.state is not None:
                    self.put(key, JobRecord(held.state, event.event_id, record.admitted_by if record else None,
                                            ended_by=record.ending if record else None))
                return
            owed = stray_end(before, event, self.same_job)
            if owed is not None:  # an end of an attempt the job has left: free the slot it may hold there
                await self.release(event.job_id, owed.provider, owed.attempt, owed.status,
                                   provider_job_id=owed.provider_job_id)
            return
        step: Transition = apply(before, aimed, self.same_job)
        if step.changed and step.state is not None:
            sent = sent_of(before, step, aimed, self.same_job)
            # A later change of an ended job keeps the end (``ending``): its event read again owes
            # the result, which this change does not send.
            self.put(key, JobRecord(step.state, aimed.event_id, record.admitted_by if record else None, sent,
                                    ended_by=record.ending if record else None))
            pipe.metrics.transitions.labels(step.state.status.value).inc()
            self.observe_milestones(before, step.state)
            if step.became_terminal:
                pipe.metrics.job_latency.labels(step.state.status.value).observe(
                    max(0.0, step.state.updated_at - step.state.created_at))
                # (The webhook bridge released a provider's own word that its job ended: ``sent_of``.)
                await self.finish(step.state, provider=None if sent is Sent.RESULT else step.state.provider)
        if before is not None and before.terminal and aimed.provider:
            # A provider still reports on a finished job (a duplicate dispatch re-submitted after
            # completion, or a job cancelled before its order reached the submitter), whether or
            # not the report filled a late fact: make sure no slot (and, for a cancelled job, no
            # provider job) stays alive for it. Releases of a slot not held are no-ops.
            await self.release(event.job_id, aimed.provider, aimed.attempt, before.status.value)

    async def send_again(self, state: JobState, sent: Sent, event: JobEvent) -> None:
        """What the change that read ``event`` sent (``sent``: ``JobRecord.sent``, or the end's,
        ``JobRecord.ended_by``), sent again for ``state``, the ended job's as its record has it
        now: no more, since a release or a result its first reading did not send is not a harmless
        repeat. For an end read again after a late fact, ``state`` is the newest, at the version
        the end's result carried (the caller's): its owner's webhook is named by the job and that
        version, and a receiver drops what it has had, where a newer one would be a second."""
        if sent is Sent.RELEASE:
            # As the first reading sent it: to the provider that spoke (aim keeps a word's
            # provider, and takes it only from the job's), on the job's attempt.
            await self.release(state.job_id, event.provider, state.attempt, state.status.value)
        else:
            await self.finish(state, provider=None if sent is Sent.RESULT else state.provider)

    async def finish(self, state: JobState, *, provider: str | None) -> None:
        """A terminal state's outputs: the result, and the provider slot given back."""
        await self.pipe.emit.send(self.pipe.names.results, "JobSnapshot", state.job_id, snapshot(state))
        await self.release(state.job_id, provider, state.attempt, state.status.value)

    async def release(self, job_id: str, provider: str | None, attempt: int, status: str, *,
                      provider_job_id: str | None = None) -> None:
        if provider and provider in self.pipe.providers:
            await self.pipe.emit.send(self.pipe.names.release(provider), "SlotRelease", job_id, {
                "job_id": job_id, "provider": provider, "attempt": attempt, "status": status,
                "at": self.pipe.now_ms(), "provider_job_id": provider_job_id})


def register(pipe: Pipeline) -> JobDesk:
    return JobDesk(pipe)
