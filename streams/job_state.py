"""events → the jobs table (through the pure state machine) → notifications, results, releases.

Outputs of a change are re-sent when the *same* event is seen again (a redelivery after a crash
between the table write and the sends); consumers of every output are idempotent (snapshots
carry a version, releases of a slot not held are no-ops, outgoing webhooks keep their id).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import faust

from floodgate import codec
from floodgate.jobs.state import JobEvent, JobState, apply
from streams import guard
from streams.app import job_table_options
from streams.context import Pipeline
from streams.tables import JsonTable

log = logging.getLogger(__name__)

_EVENT_FIELDS = ("provider", "provider_job_id", "progress", "video_url", "error", "tenant", "user_id", "model",
                 "webhook_url")


def event_from_record(rec: dict[str, Any]) -> JobEvent:
    return JobEvent(
        event_id=rec["event_id"], job_id=rec["job_id"], kind=rec["kind"], at=rec["at"] / 1000.0,
        attempt=rec.get("attempt") or 0, metadata=rec.get("metadata") or {},
        **{k: rec.get(k) for k in _EVENT_FIELDS},
    )


def aim(before: JobState | None, event: JobEvent) -> JobEvent | None:
    """``event`` as it applies to the job's current attempt, or None to ignore it.

    Webhooks, polls and user cancels (``provider`` None, attempt 0) do not know the attempt: they
    speak for the current one. News from a provider the job has already moved away from is
    ignored. ``queued`` and ``rerouted`` carry their own attempt and pass unchanged. Pure.
    """
    if before is None or event.kind in ("queued", "rerouted"):
        return event
    if event.provider and before.provider and event.provider != before.provider:
        return None
    if event.attempt < before.attempt:
        return dataclasses.replace(event, attempt=before.attempt)
    return event


def snapshot(state: JobState) -> dict[str, Any]:
    """The JobSnapshot record for ``state`` (notifications and results)."""
    return {
        "job_id": state.job_id, "tenant": state.tenant or "default", "user_id": state.user_id or "",
        "model": state.model or "", "provider": state.provider, "provider_job_id": state.provider_job_id,
        "status": state.status.value, "progress": float(state.progress), "video_url": state.video_url,
        "error": state.error, "attempt": state.attempt, "created_at": int(state.created_at * 1000),
        "updated_at": int(state.updated_at * 1000), "webhook_url": state.webhook_url,
        "metadata": dict(state.metadata), "version": state.version,
    }


def register(pipe: Pipeline) -> None:
    app, names, emit = pipe.app, pipe.names, pipe.emit
    source = emit.topic(names.events, partitions=pipe.settings.partitions)
    jobs = JsonTable(app, "jobs", partitions=pipe.settings.partitions, **job_table_options(pipe.settings, "jobs"))

    async def outputs(state: JobState, terminal: bool, attempt: int, provider: str | None) -> None:
        snap = snapshot(state)
        await emit.send(names.notifications, "JobSnapshot", state.job_id, snap)
        if terminal:
            await emit.send(names.results, "JobSnapshot", state.job_id, snap)
            await release(state.job_id, provider, attempt, state.status.value)

    async def release(job_id: str, provider: str | None, attempt: int, status: str) -> None:
        if provider and provider in pipe.providers:
            await emit.send(names.release(provider), "SlotRelease", job_id, {
                "job_id": job_id, "provider": provider, "attempt": attempt, "status": status,
                "at": pipe.now_ms()})

    @app.agent(source, name="job-state")
    async def job_state(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            msg = ev.message
            pipe.metrics.events_processed.labels("job-state").inc()

            async def take(msg: Any = msg) -> None:
                await handle(event_from_record(codec.decode("JobEvent", msg.value, msg.headers)))

            await guard.process(take, emit=emit, dlq=names.dlq, message=msg, stage="job-state",
                                on_dead_letter=pipe.metrics.dead_letters.labels("job-state").inc)

    async def handle(event: JobEvent) -> None:
        key = event.job_id.encode()
        raw = jobs.get(key)
        before = JobState.from_dict(raw["s"]) if raw else None
        if raw and raw.get("e") == event.event_id and before is not None:
            # Same event again: the previous run may have died before its sends landed.
            await outputs(before, before.terminal, before.attempt, before.provider)
            return
        aimed = aim(before, event)
        if aimed is None:
            return
        event = aimed
        step = apply(before, event)
        if step.changed and step.state is not None:
            jobs[key] = {"s": step.state.to_dict(), "e": event.event_id}
            await outputs(step.state, step.became_terminal, step.state.attempt, step.state.provider)
            pipe.metrics.transitions.labels(step.state.status.value).inc()
            if step.became_terminal:
                pipe.metrics.job_latency.labels(step.state.status.value).observe(
                    max(0.0, step.state.updated_at - step.state.created_at))
        if before is not None and before.terminal and event.provider:
            # A provider still reports on a finished job (a duplicate dispatch re-submitted after
            # completion, or a job cancelled before its order reached the submitter), whether or
            # not the report filled a late fact: make sure no slot (and, for a cancelled job, no
            # provider job) stays alive for it. Releases of a slot not held are no-ops.
            await release(event.job_id, event.provider, event.attempt, before.status.value)

