"""requests → (validate, dedupe, route) → a `queued` event and a dispatch order.

Dedupe is by job id: every record on `requests` carries its own. The `admitted` table remembers
which record (partition, offset) admitted a job, so the *same* record seen again after a crash
(its offset was not committed) is processed again — its sends may not have reached Kafka — while
a replay of the job from another record is dropped as a duplicate.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.partitioner import murmur2

from floodgate import codec
from floodgate.errors import SchemaError, ValidationError
from floodgate.routing import chain_for, known_models
from floodgate.validation import validate_job_request
from streams import guard
from streams.app import job_table_options
from streams.context import Pipeline
from streams.tables import JsonTable

log = logging.getLogger(__name__)


def _as_payload(req: dict[str, Any]) -> dict[str, Any]:
    inp = req["input"]
    return {
        "model": req["model"], "user_id": req["user_id"],
        "input": {"prompt": inp["prompt"], "image_url": inp.get("image_url"), "params": inp.get("params") or None},
        "webhook_url": req.get("webhook_url"), "metadata": req.get("metadata") or None,
    }


def register(pipe: Pipeline) -> None:
    app, names, emit = pipe.app, pipe.names, pipe.emit
    source = emit.topic(names.requests, partitions=pipe.settings.partitions)
    source_partitions = pipe.settings.partitions
    admitted = JsonTable(app, "admitted", partitions=pipe.settings.partitions,
                         **job_table_options(pipe.settings, "admitted"))

    @app.agent(source, name="admission")
    async def admission(stream: faust.StreamT) -> None:
        async for event in stream.events():
            pipe.metrics.events_processed.labels("admission").inc()
            msg = event.message

            async def take(msg: Any = msg) -> None:
                await admit(msg)

            await guard.process(take, emit=emit, dlq=names.dlq, message=msg, stage="admission",
                                on_dead_letter=pipe.metrics.dead_letters.labels("admission").inc)

    async def admit(msg: Any) -> None:
        try:
            req = codec.decode_request(msg.value, msg.headers)
            now = datetime.now(UTC)
            if req["source"] != "http":  # SDKs and CLI replays run outside our control: check again
                validate_job_request(_as_payload(req), known_models=known_models(pipe.routing, now))
        except (SchemaError, ValidationError) as exc:
            pipe.metrics.dead_letters.labels("admission").inc()
            await emit.dead_letter(names.dlq, msg, f"invalid request: {exc}", exc)
            return
        job_id = req["job_id"]
        key = job_id.encode()
        home = (murmur2(key) & 0x7FFFFFFF) % source_partitions  # the Java client's rule
        if msg.partition != home:
            # Produced with another partitioner (kcat and librdkafka default to CRC32): the dedupe
            # table for this job id lives on partition `home`, so the record goes there first.
            pipe.metrics.rehomed.inc()
            await source.send(key=key, value=msg.value, headers=list(msg.headers or []), partition=home, force=True)
            return
        here = {"p": msg.partition, "o": msg.offset}
        seen = admitted.get(key)
        if seen is not None and seen != here:
            pipe.metrics.duplicates.inc()
            return
        if seen is None:
            admitted[key] = here
        inp = req["input"]
        at = int(req["accepted_at"])
        queued = {
            "event_id": f"{job_id}:queued", "job_id": job_id, "kind": "queued", "at": at, "attempt": 0,
            "tenant": req["tenant"], "user_id": req["user_id"], "model": req["model"],
            "webhook_url": req.get("webhook_url"), "metadata": req.get("metadata") or {},
        }
        try:
            target = chain_for(pipe.routing, req["model"], now)[0]
        except ValidationError as exc:
            # Accepted earlier, unroutable now (e.g. every provider for the model retired since):
            # the job exists for its owner, so it fails visibly rather than vanishing into the DLQ.
            await emit.send(names.events, "JobEvent", job_id, queued)
            await emit.send(names.events, "JobEvent", job_id, {
                "event_id": f"{job_id}:failed:route", "job_id": job_id, "kind": "failed", "at": at,
                "attempt": 0, "error": str(exc)})
            return
        queued["provider"] = target.provider
        await emit.send(names.events, "JobEvent", job_id, queued)
        await emit.send(names.dispatch(target.provider), "DispatchOrder", job_id, {
            "job_id": job_id, "tenant": req["tenant"], "model": req["model"], "provider": target.provider,
            "provider_model": target.provider_model, "prompt": inp["prompt"], "image_url": inp.get("image_url"),
            "params": inp.get("params") or {}, "attempt": 0, "tried": [], "queued_at": at,
            "webhook_url": req.get("webhook_url"), "metadata": req.get("metadata") or {},
        })
        pipe.metrics.admitted.labels(req["source"]).inc()
