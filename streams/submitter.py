"""dispatch.<provider> → the provider, never more in flight than its concurrency limit.

The limit is shared across the dispatch topic's partitions (``partition_share``): each partition
has a fixed share and partitions belong to exactly one worker, so the shares add up to the limit
whatever the number of workers. A slot is held by an entry in the ``inflight-<provider>`` table
(written before the provider is called) and freed when ``release.<provider>`` says the job ended
(or when the job moves on to a fallback provider). After a restart the table is recovered from its
changelog, and the count with it. While a partition's share is used up the agent waits: the
backlog stays in Kafka, not in memory.

The provider call itself runs in a background task once the slot is durable, so one partition
keeps up to its share of submissions in flight at once instead of one round trip per order.
This is not Faust's ``concurrency=`` (which can commit past an unfinished event, faust-streaming
#606): the order's offset may be committed as soon as its slot is on Kafka, because the slot
entry, not the order, is then the durable record of the work.

A timer polls the provider for jobs that have been quiet for ``poll_after`` seconds (lost
webhooks), re-dispatches jobs whose submission never completed (a crash mid-call), and fails jobs
older than ``job_timeout``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import TP

from connectors.providers.base import SubmitOrder
from floodgate import codec
from floodgate.errors import FloodgateError, ProviderUnavailable
from floodgate.routing import next_target
from floodgate.submit_policy import SubmitPolicy, decide
from floodgate.throttle import BreakerState
from streams import guard
from streams.context import Pipeline
from streams.lane import Lane, parse_slot_key, slot_key

log = logging.getLogger(__name__)


def register_provider(pipe: Pipeline, name: str, policy: SubmitPolicy = SubmitPolicy()) -> None:
    app, names, emit, settings = pipe.app, pipe.names, pipe.emit, pipe.settings
    spec = pipe.routing.providers[name]
    connector = pipe.providers[name]
    parts = names.dispatch_partitions(spec.concurrency_limit)
    lane = Lane(app, spec, parts)
    slots = lane.slots
    orders = emit.topic(names.dispatch(name), partitions=parts)
    releases = emit.topic(names.release(name), partitions=parts)
    webhook_url = f"{(settings.webhook_base_url or '').rstrip('/')}/webhooks/{name}" if settings.webhook_base_url else None

    def count_slots() -> None:
        pipe.metrics.inflight.labels(name).set(len(slots.table))

    async def event(job_id: str, kind: str, attempt: int, **fields: Any) -> None:
        suffix = fields.pop("suffix", "")
        await emit.send(names.events, "JobEvent", job_id, {
            "event_id": f"{job_id}:{kind}:{name}:{attempt}{suffix}", "job_id": job_id, "kind": kind,
            "at": pipe.now_ms(), "provider": name, "attempt": attempt, **fields})

    async def move_on(order: dict[str, Any], key: bytes, partition: int, reason: str, *, reroute: bool) -> None:
        slots.remove_in(partition, key)
        lane.free(partition, order["job_id"])
        count_slots()
        await pump(partition)
        job_id, attempt = order["job_id"], order["attempt"]
        tried = [*order["tried"], name]
        nxt = next_target(pipe.routing, order["model"], tried, datetime.now(UTC)) if reroute else None
        if nxt is None:
            await event(job_id, "failed", attempt, error=reason)
            return
        pipe.metrics.reroutes.labels(name).inc()
        await event(job_id, "rerouted", attempt + 1, provider=nxt.provider, error=reason)
        await emit.send(names.dispatch(nxt.provider), "DispatchOrder", job_id, {
            **order, "provider": nxt.provider, "provider_model": nxt.provider_model,
            "attempt": attempt + 1, "tried": tried})

    async def submit(order: dict[str, Any], key: bytes, partition: int) -> None:
        job_id, attempt = order["job_id"], order["attempt"]
        request = SubmitOrder(
            job_id=job_id, model=order["provider_model"], prompt=order["prompt"], image_url=order["image_url"],
            webhook_url=webhook_url, idempotency_key=f"{job_id}:{attempt}", metadata={"fg_attempt": str(attempt)})
        failures, started = 0, time.monotonic()
        has_fallback = next_target(pipe.routing, order["model"], [*order["tried"], name], datetime.now(UTC)) is not None
        while True:
            now = time.monotonic()
            if not lane.breaker.allow(now) and has_fallback:
                await move_on(order, key, partition, f"{name} is failing (circuit open)", reroute=True)
                return
            if lane.bucket is not None:
                wait = lane.bucket.take(now)
                if wait > 0:
                    await asyncio.sleep(wait)
            try:
                result = await connector.submit(pipe.session(), request)
            except FloodgateError as exc:
                if isinstance(exc, ProviderUnavailable):
                    lane.breaker.record_failure(time.monotonic())
                elif exc.retriable:
                    pipe.metrics.rate_limited.labels(name).inc()
                decision = decide(exc, failures=failures, waited=time.monotonic() - started, has_fallback=has_fallback,
                                  breaker_open=lane.breaker.state(time.monotonic()) is BreakerState.OPEN,
                                  policy=policy, backoff=lane.backoff)
                if decision.action == "retry":
                    failures += 1
                    pipe.metrics.retries.labels(name).inc()
                    await asyncio.sleep(decision.delay)
                    continue
                await move_on(order, key, partition, decision.reason, reroute=decision.action == "reroute")
                return
            lane.breaker.record_success()
            break
        entry = slots.get(key)
        if entry is not None:  # not released meanwhile (a very fast job)
            slots.put_in(partition, key, {**entry, "pj": result.provider_job_id})
        pipe.metrics.submissions.labels(name).inc()
        await event(job_id, "submitted", attempt, provider_job_id=result.provider_job_id)

    @app.agent(orders, name=f"submit-{name}")
    async def submitter(stream: faust.StreamT) -> None:
        # Acks are manual: an order waiting for a slot stays unacknowledged (its offset is not
        # committed) while the agent reads on. The agent must never block on a slot: Faust
        # delivers every topic from one loop, and once this stream's buffer is full that loop
        # waits for it, so releases (and everything else) would stop arriving: a deadlock.
        orders_in = stream.noack()
        async for ev in orders_in.events():
            msg = ev.message
            pipe.metrics.events_processed.labels(f"submit-{name}").inc()
            waiting = False

            async def take(ev: Any = ev, msg: Any = msg) -> None:
                nonlocal waiting
                waiting = await intake(orders_in, ev, codec.decode("DispatchOrder", msg.value, msg.headers))

            await guard.process(take, emit=emit, dlq=names.dlq, message=msg, stage=f"submit-{name}",
                                on_dead_letter=pipe.metrics.dead_letters.labels("submitter").inc)
            if not waiting:
                await orders_in.ack(ev)

    async def intake(orders_in: faust.StreamT, ev: Any, order: dict[str, Any]) -> bool:
        """Act on an order now, or queue it for a slot (True: it waits, unacknowledged)."""
        partition = ev.message.partition
        lane.sync(partition, ev.message.generation_id)
        key = slot_key(partition, order["job_id"])
        entry = slots.get(key)
        if entry is not None and entry["a"] > order["attempt"]:
            return False  # an order for an attempt that has been superseded
        if entry is not None and entry.get("pj"):
            # Already submitted (a redelivered or re-dispatched order): say so again, idempotently.
            await event(order["job_id"], "submitted", entry["a"], provider_job_id=entry["pj"])
            return False
        if key in lane.submitting:
            return False  # its submission is still running here (e.g. waiting out 429s)
        if entry is not None:
            # It holds a durable slot but its submission never finished (a crash mid-call).
            lane.run_in_background(key, submit(order, key, partition))
            return False
        # Parked, not in progress: Faust waits for every tracked, unacknowledged message before
        # a rebalance or shutdown completes, and a parked order may wait minutes for a slot. Its
        # offset still holds back the partition's commit (commits follow acknowledgements), so
        # the next owner reads it again.
        app.consumer._unacked_messages.discard(ev.message)
        if lane.lines[partition].push((orders_in, ev, order)):
            app.consumer.on_buffer_full(TP(ev.message.topic, partition))  # Faust's own pause: keeps the fetched rest
        await pump(partition)
        return True

    async def pump(partition: int) -> None:
        """Give free slots of ``partition`` to its waiting orders, oldest first. Several callers
        may pump at once (new orders, releases, fallbacks): a slot is taken synchronously."""
        line = lane.lines[partition]
        while (nxt := lane.next_waiting(partition, lambda item: item[2]["job_id"])) is not None:
            (orders_in, ev, order), fresh = nxt
            if fresh:
                await start(orders_in, ev, order, partition)
            else:
                await orders_in.ack(ev)  # a second order for a job that holds a slot
            if line.resume_due():
                app.consumer.on_buffer_drop(TP(ev.message.topic, partition))

    async def start(orders_in: faust.StreamT, ev: Any, order: dict[str, Any], partition: int) -> None:
        key = slot_key(partition, order["job_id"])
        written = False

        async def write() -> None:
            nonlocal written
            # The slot must be on Kafka before the provider hears of the job: a crash after
            # the call but before the changelog write would otherwise forget the slot.
            await slots.put_durably_in(partition, key, {"a": order["attempt"], "t": time.time(), "o": order})
            written = True

        await guard.process(write, emit=emit, dlq=names.dlq, message=ev.message, stage=f"submit-{name}",
                            on_dead_letter=pipe.metrics.dead_letters.labels("submitter").inc)
        count_slots()
        if not written:  # dead-lettered: give the slot back
            slots.remove_in(partition, key)
            lane.free(partition, order["job_id"])
            await orders_in.ack(ev)
            return
        if ev.message.generation_id != app.consumer_generation_id:
            return  # a rebalance meanwhile: the partition's next owner reads this order again
        await orders_in.ack(ev)
        lane.run_in_background(key, submit(order, key, partition))

    @app.agent(releases, name=f"release-{name}")
    async def releaser(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            msg = ev.message
            pipe.metrics.events_processed.labels(f"release-{name}").inc()
            await guard.process(lambda: release(codec.decode("SlotRelease", msg.value, msg.headers), msg),
                                emit=emit, dlq=names.dlq, message=msg, stage=f"release-{name}",
                                on_dead_letter=pipe.metrics.dead_letters.labels("release").inc)

    async def release(rel: dict[str, Any], msg: Any) -> None:
        partition = msg.partition
        lane.sync(partition, msg.generation_id)
        key = slot_key(partition, rel["job_id"])
        entry = slots.get(key)
        if entry is not None and entry["a"] <= rel["attempt"]:
            slots.remove_in(partition, key)
            lane.free(partition, rel["job_id"])
            count_slots()
        await pump(partition)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: set[Any], **kwargs: object) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == orders.get_topic_name()}
        dropped = lane.forget_waiting(mine)
        if dropped:
            log.info("%s: %d waiting orders left to the partitions' next owner", name, dropped)

    @app.timer(interval=max(1.0, min(10.0, settings.poll_after / 3)), name=f"poll-{name}")
    async def poll() -> None:
        now = time.time()
        count_slots()  # also after a rebalance
        for partition, line in lane.lines.items():
            if len(line):
                await pump(partition)  # a safety net: every slot freed also pumps
        for key, entry in list(slots.items()):
            if key in lane.submitting:
                continue
            await check_slot(key, entry, now)

    async def check_slot(key: bytes, entry: dict[str, Any], now: float) -> None:
        age = now - entry["t"]
        _, job_id = parse_slot_key(key)
        attempt = entry["a"]
        if age > settings.job_timeout:
            pipe.metrics.timeouts.labels(name).inc()
            await event(job_id, "failed", attempt, error=f"no result from {name} after {settings.job_timeout:.0f}s")
            if entry.get("pj"):
                try:
                    await connector.cancel(pipe.session(), entry["pj"])
                except FloodgateError:
                    log.warning("cancel of %s at %s failed", entry["pj"], name)
            return
        if age < settings.poll_after:
            return
        if not entry.get("pj"):
            # The submission never finished (the worker died mid-call): dispatch it again; the
            # provider's idempotency key makes the second call return the first job.
            await emit.send(names.dispatch(name), "DispatchOrder", job_id, entry["o"])
            return
        try:
            status = await connector.status(pipe.session(), entry["pj"])
        except FloodgateError as exc:
            log.info("status poll of %s at %s failed: %s", job_id, name, exc)
            return
        pipe.metrics.polls.labels(name).inc()
        kind = {"running": "progress" if status.progress else "running", "completed": "completed",
                "failed": "failed", "cancelled": "cancelled"}.get(status.state)
        if kind:
            await event(job_id, kind, attempt, provider_job_id=entry["pj"], progress=status.progress,
                        video_url=status.video_url, error=status.error, suffix=f":poll:{int(now)}")

    @app.on_before_shutdown.connect
    async def _stop_submissions(app: faust.App, **kwargs: object) -> None:
        await lane.stop()
