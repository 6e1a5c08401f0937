"""dispatch.<provider> → the provider, never more in flight than its concurrency limit.

The limit is shared across the dispatch topic's partitions (``partition_share``): each partition
has a fixed share and partitions belong to exactly one worker, so the shares add up to the limit
whatever the number of workers. A slot is held by an entry in the ``inflight-<provider>`` table
(written before the provider is called) and freed when ``release.<provider>`` says the job ended
(or when the job moves on to a fallback provider). After a restart the table is recovered from its
changelog, and the count with it. While a partition's share is used up its orders wait in a
short line (``waiting-<provider>``, see ``streams.lane``) and, once that is full, the partition is
paused: the backlog stays in Kafka, not in memory.

The provider call itself runs in a background task once the slot is durable, so one partition
keeps up to its share of submissions in flight at once instead of one round trip per order.
This is not Faust's ``concurrency=`` (which can commit past an unfinished event, faust-streaming
#606): the order's offset may be committed as soon as its slot is on Kafka, because the slot
entry, not the order, is then the durable record of the work.

A timer polls the provider for jobs that have been quiet for ``poll_after`` seconds (lost
webhooks), re-dispatches jobs whose submission never completed (a crash mid-call), and fails jobs
older than ``job_timeout``.

**Cancelled jobs.** A user cancel is a ``cancelled`` event; the job-state agent makes the job
terminal and sends the release (status ``cancelled``) to its provider's release topic, i.e. to
the partition that holds the job's slot or order. Where the job is at that moment decides:

* *submitted* (its slot has a provider job id): a background task cancels the provider job,
  then frees the slot, in that order, so the provider never sees more than the limit. A failed
  cancel is only logged and the slot is freed all the same (the provider may then answer 429
  for a while, which submissions retry);
* *being submitted* (``key in lane.submitting``): the job is marked cancelled and the slot is
  kept; the submission looks for the mark before every provider call and once the call returns,
  so it either never reaches the provider or cancels the job it just created, then frees the slot;
* *waiting for a slot*: its order is taken out of the line and the waiting table;
* *still in Kafka* (not yet read, or written after the cancel: an admission or fallback running
  behind it): the job is marked, and intake drops (acknowledges) the order when it comes and
  deletes the mark. Marks never read expire (``lane.mark_expired``) once the partition has been
  read past the end offset it had when the mark was made, so a mark outlives every order written
  before the cancel, and at most ``MARK_MAX_AGE`` otherwise.

A cancelled job cannot slip through unseen either: if its order was submitted anyway (a mark lost
with a crash before its changelog write, a duplicate order), the ``submitted`` event reaches a
terminal job, and the job-state agent answers every provider event on a terminal job with a
release, whose status ``cancelled`` cancels the provider job here.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

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

DEFAULT_POLICY = SubmitPolicy()


def register_provider(pipe: Pipeline, name: str, policy: SubmitPolicy = DEFAULT_POLICY) -> Lane:
    """Register ``name``'s submitter and releaser agents and timers; returns its ``Lane``."""
    app, names, emit, settings = pipe.app, pipe.names, pipe.emit, pipe.settings
    spec = pipe.routing.providers[name]
    connector = pipe.providers[name]
    parts = names.dispatch_partitions(spec.concurrency_limit)
    lane = Lane(app, spec, parts)
    slots = lane.slots
    orders = emit.topic(names.dispatch(name), partitions=parts)
    releases = emit.topic(names.release(name), partitions=parts)
    webhook_url = (f"{settings.webhook_base_url.rstrip('/')}/webhooks/{name}"
                   if settings.webhook_base_url else None)

    def count_slots() -> None:
        pipe.metrics.inflight.labels(name).set(len(slots.table))

    async def free(partition: int, key: bytes, job_id: str) -> None:
        """Give the slot of ``key`` back and let a waiting order have it."""
        slots.remove_in(partition, key)
        lane.free(partition, job_id)
        count_slots()
        pump(partition)

    async def cancel_at_provider(job_id: str, provider_job_id: str) -> None:
        try:
            await connector.cancel(pipe.session(), provider_job_id)
        except FloodgateError as exc:
            log.warning("cancel of %s (%s) at %s failed: %s", job_id, provider_job_id, name, exc)
        except Exception:  # a background chore must not die silently
            log.exception("cancel of %s (%s) at %s failed", job_id, provider_job_id, name)
        else:
            log.info("cancelled %s (%s) at %s", job_id, provider_job_id, name)

    async def cancel_then_free(partition: int, key: bytes, job_id: str, provider_job_id: str) -> None:
        try:
            await cancel_at_provider(job_id, provider_job_id)
        finally:
            lane.cancelling.discard(key)
        # (Not in `finally`: a worker shutting down leaves the slot to the next owner's poller.)
        entry = slots.get(key)
        if entry is not None and entry.get("pj") == provider_job_id:
            await free(partition, key, job_id)

    async def give_up_cancelled(key: bytes, partition: int, job_id: str) -> None:
        """A submission whose job was cancelled meanwhile: free its slot, use up the mark."""
        lane.unmark(partition, key)
        await free(partition, key, job_id)

    async def event(job_id: str, kind: str, attempt: int, **fields: Any) -> None:
        suffix = fields.pop("suffix", "")
        await emit.send(names.events, "JobEvent", job_id, {
            "event_id": f"{job_id}:{kind}:{name}:{attempt}{suffix}", "job_id": job_id, "kind": kind,
            "at": pipe.now_ms(), "provider": name, "attempt": attempt, **fields})

    async def move_on(order: dict[str, Any], key: bytes, partition: int, reason: str, *, reroute: bool) -> None:
        job_id, attempt = order["job_id"], order["attempt"]
        if lane.marked(key):
            await give_up_cancelled(key, partition, job_id)  # cancelled: neither fail nor fall back
            return
        await free(partition, key, job_id)
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
            if lane.marked(key):
                await give_up_cancelled(key, partition, job_id)  # never reaches the provider
                return
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
        pipe.metrics.submissions.labels(name).inc()
        # No await between this check and the slot write below: a release either sees the
        # provider job id (and cancels it) or left the mark that is read here.
        if lane.marked(key):
            await cancel_at_provider(job_id, result.provider_job_id)  # before the slot is given back
            await give_up_cancelled(key, partition, job_id)
            return
        entry = slots.get(key)
        if entry is not None:  # not released meanwhile (a very fast job)
            slots.put_in(partition, key, {**entry, "pj": result.provider_job_id})
        await event(job_id, "submitted", attempt, provider_job_id=result.provider_job_id)

    @app.agent(orders, name=f"submit-{name}")
    async def submitter(stream: faust.StreamT) -> None:
        # The agent never blocks on a slot: Faust delivers every topic from one loop, and once this
        # stream's buffer is full that loop waits for it, so releases (and everything else) would
        # stop arriving: a deadlock. An order that cannot have a slot now is parked in the waiting
        # table, and its record acknowledged, like every other, in offset order.
        orders_in = cast(faust.Stream, stream).noack()  # Faust passes a Stream; StreamT lacks noack()
        async for ev in orders_in.events():
            msg = ev.message
            pipe.metrics.events_processed.labels(f"submit-{name}").inc()
            lane.read_to[msg.partition] = max(msg.offset, lane.read_to.get(msg.partition, -1))

            async def take(msg: Any = msg) -> None:
                await intake(msg, codec.decode("DispatchOrder", msg.value, msg.headers))

            await guard.process(take, emit=emit, dlq=names.dlq, message=msg, stage=f"submit-{name}",
                                on_dead_letter=pipe.metrics.dead_letters.labels("submitter").inc)
            if msg.generation_id == app.consumer_generation_id:
                await orders_in.ack(ev)
            else:
                # Revoked meanwhile: what was written is on Kafka, but the partition's next owner
                # may have recovered the tables before it landed, so it reads the order again.
                # Faust would wait for this tracked message before completing a rebalance.
                app.consumer._unacked_messages.discard(msg)  # type: ignore[attr-defined]  # private, on Consumer only

    async def intake(msg: Any, order: dict[str, Any]) -> None:
        """Act on an order now, start it if a slot is free, or park it until one is."""
        partition = msg.partition
        lane.sync(partition, msg.generation_id)
        key = slot_key(partition, order["job_id"])
        if lane.marked(key):
            # The job was cancelled before its order got here: drop it. A submission still running
            # for the job uses the mark itself.
            if key not in lane.submitting:
                lane.unmark(partition, key)
            return
        entry = slots.get(key)
        if entry is not None and entry["a"] > order["attempt"]:
            return  # an order for an attempt that has been superseded
        if entry is not None and entry.get("pj"):
            # Already submitted (a redelivered or re-dispatched order): say so again, idempotently.
            await event(order["job_id"], "submitted", entry["a"], provider_job_id=entry["pj"])
            return
        if key in lane.submitting:
            return  # its submission is still running here (e.g. waiting out 429s)
        if entry is not None:
            # It holds a durable slot but its submission never finished (a crash mid-call).
            lane.run_in_background(key, submit(order, key, partition))
            return
        parked = lane.parked(key)
        if parked is not None and parked["attempt"] >= order["attempt"]:
            return  # it waits already (a redelivered order)
        line = lane.lines[partition]
        if parked is None and not len(line) and lane.pools[partition].try_acquire(order["job_id"]):
            # Nobody waits and a slot is free: take it without parking (one changelog write, not three).
            try:
                await write_slot(order, key, partition)
            except BaseException:
                slots.remove_in(partition, key)  # the guard tries again from the start
                lane.free(partition, order["job_id"])
                raise
            lane.run_in_background(key, submit(order, key, partition))
            return
        if parked is not None:
            line.remove(lambda waiting: waiting["job_id"] == order["job_id"])  # a newer attempt replaces it
        if await lane.park(partition, msg.offset, order):
            app.consumer.on_buffer_full(TP(msg.topic, partition))  # Faust's own pause: keeps the fetched rest
        pump(partition)

    async def write_slot(order: dict[str, Any], key: bytes, partition: int) -> None:
        # The slot must be on Kafka before the provider hears of the job: a crash after the call
        # but before the changelog write would otherwise forget the slot.
        await slots.put_durably_in(partition, key, {"a": order["attempt"], "t": time.time(), "o": order})
        count_slots()

    def pump(partition: int) -> None:
        """Give free slots of ``partition`` to its waiting orders, oldest first. Several callers
        may pump at once (new orders, releases, fallbacks): a slot is taken synchronously."""
        line = lane.lines[partition]
        while (nxt := lane.next_waiting(partition)) is not None:
            order, fresh = nxt
            key = slot_key(partition, order["job_id"])
            if fresh:
                lane.run_in_background(key, start(order, key, partition, lane.generations.get(partition)))
            elif key not in lane.submitting:
                # Its job holds a slot already: a start cut short by a rebalance, whose slot write
                # landed but whose waiting entry did not go. Finish what it began.
                lane.unpark(partition, key)
                entry = slots.get(key)
                if entry is not None and not entry.get("pj"):
                    lane.run_in_background(key, submit(order, key, partition))
        if line.resume_due():
            app.consumer.on_buffer_drop(TP(orders.get_topic_name(), partition))

    async def start(order: dict[str, Any], key: bytes, partition: int, generation: int | None) -> None:
        """A waiting order got a slot: make the slot durable, stop the waiting, submit.

        ``generation``: the one ``partition`` was synced in. A revoke forgets it at once, while
        ``app.consumer_generation_id`` only changes once the next assignment arrives: in between,
        the partition's next owner may already count its slots without this one."""

        def still_mine() -> bool:
            return generation is not None and lane.generations.get(partition) == generation

        try:
            await write_slot(order, key, partition)
        except Exception as exc:  # Kafka refused the write: the order waits on
            log.warning("slot write for %s on %s failed, it waits again: %s", order["job_id"], name, exc)
            slots.remove_in(partition, key)
            lane.free(partition, order["job_id"])
            if still_mine():
                lane.lines[partition].push_front(order)  # the next pump (at the latest the poll tick) retries
            return
        if not still_mine():
            return  # revoked meanwhile: the partition's next owner finds the slot and the waiting entry
        lane.unpark(partition, key)
        await submit(order, key, partition)

    @app.agent(releases, name=f"release-{name}")
    async def releaser(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            msg = ev.message
            pipe.metrics.events_processed.labels(f"release-{name}").inc()

            async def take(msg: Any = msg) -> None:
                await release(codec.decode("SlotRelease", msg.value, msg.headers), msg)

            await guard.process(take, emit=emit, dlq=names.dlq, message=msg, stage=f"release-{name}",
                                on_dead_letter=pipe.metrics.dead_letters.labels("release").inc)

    async def release(rel: dict[str, Any], msg: Any) -> None:
        partition = msg.partition
        lane.sync(partition, msg.generation_id)
        key = slot_key(partition, rel["job_id"])
        entry = slots.get(key)
        if rel["status"] == "cancelled" and (entry is None or entry["a"] <= rel["attempt"]):
            await cancel(partition, key, rel["job_id"])
        elif entry is not None and entry["a"] <= rel["attempt"]:
            await free(partition, key, rel["job_id"])

    async def cancel(partition: int, key: bytes, job_id: str) -> None:
        """The job was cancelled: see the module docstring for each place its order may be."""
        entry, end = slots.get(key), None
        if not (entry is not None and entry.get("pj")):
            # Asked first, so that nothing can change between looking at the job and marking it.
            end = await end_offset(partition)
            entry = slots.get(key)
        if entry is not None and entry.get("pj"):
            if key not in lane.cancelling:  # else a cancel of it is already under way
                lane.cancelling.add(key)
                lane.spawn(cancel_then_free(partition, key, job_id, entry["pj"]), f"cancel:{key.decode()}")
            return
        line = lane.lines[partition]
        dropped = line.remove(lambda waiting: waiting["job_id"] == job_id)
        lane.unpark(partition, key)  # if it was waiting here, it never gets a slot
        if not dropped or key in lane.submitting:
            lane.mark(partition, key, end, time.time())
            if key not in lane.submitting and entry is not None:
                # A slot whose submission is not running: it is being started (the submission
                # will find the mark) or was left by a crash (the poller's re-dispatch will).
                await free(partition, key, job_id)
        if dropped and line.resume_due():
            app.consumer.on_buffer_drop(TP(orders.get_topic_name(), partition))

    async def end_offset(partition: int) -> int | None:
        """The dispatch partition's end offset now, from the broker (None if it does not answer)."""
        tp = TP(orders.get_topic_name(), partition)
        try:
            return int((await asyncio.wait_for(app.consumer.highwaters(tp), 5.0))[tp])
        except Exception as exc:  # any failure only makes the mark last MARK_MAX_AGE
            log.info("end offset of %s[%d] unknown: %s", tp.topic, partition, exc)
            return None

    # mode's SignalHandlerT is (sender, *args, signal=, **kwargs): it cannot say that this signal
    # always sends one positional argument, the revoked set.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app: faust.App, revoked: set[Any], **kwargs: object) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == orders.get_topic_name()}
        dropped = lane.forget_waiting(mine)
        if dropped:
            log.info("%s: %d waiting orders left to the partitions' next owner", name, dropped)

    def assigned() -> set[int] | None:
        """This worker's dispatch partitions, or None while a rebalance or recovery is under way."""
        if app.rebalancing or app.in_recovery:
            return None
        topic = orders.get_topic_name()
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}

    @app.timer(interval=1.0, name=f"wake-{name}")
    async def wake() -> None:
        # After a restart or a rebalance, orders in the waiting table must move even when no
        # dispatch record or release arrives on their partition to trigger ``lane.sync``.
        mine = assigned()
        if mine is None:
            return
        generation = app.consumer_generation_id
        if lane.settled_generation != generation:
            lane.settled_generation = generation
            dropped = lane.drop_unassigned(mine)
            if dropped:
                log.info("%s: dropped %d local table entries of partitions now owned elsewhere", name, dropped)
        for partition in sorted(mine):
            if lane.sync(partition, generation):
                pump(partition)

    @app.timer(interval=max(1.0, min(10.0, settings.poll_after / 3)), name=f"poll-{name}")
    async def poll() -> None:
        now = time.time()
        count_slots()  # also after a rebalance
        mine = assigned()
        if mine is not None:
            for partition in sorted(mine):  # (``wake`` has synced them to this generation)
                lane.reconcile(partition)  # self-healing: see Lane.reconcile
                if len(lane.lines[partition]):
                    pump(partition)  # a safety net: every slot freed also pumps
        lane.expire_marks(now)
        for key, entry in list(slots.items()):
            if key in lane.submitting or key in lane.cancelling or parse_slot_key(key)[0] not in lane.generations:
                continue  # (the last: not this worker's partition, or not yet recovered)
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
    async def _stop_submissions(app: faust.App, /, *args: object, **kwargs: object) -> None:
        await lane.stop()

    return lane
