"""A producer of their own for the slot tables of providers with a small limit.

Why: a slot's record must be on Kafka before its provider is called (the dispatcher awaits it),
so every handover waits for one write. Through the worker's Faust producer that write queues
behind whatever else the worker writes: aiokafka keeps one produce request per broker in
flight, the producer lingers ``FLOODGATE_PRODUCER_LINGER_MS`` for company, and during a burst's
admission the request in flight is full of the burst's records. Here the slot's record goes out
at once, in a request of its own on a connection of its own.

The price is one produce request per slot write instead of a share of a larger one, paid by the
worker and the broker on every write. A provider's slot writes per second are bounded by its
limit over its render time, so for the limits that providers grant (5-10, or tens) that price is
nothing and a handover is the point; for a limit of hundreds and quick jobs it is not (the
pipeline bench, limit 500 and instant renders, all of it through such a producer: 247 jobs/s
against 284). ``FLOODGATE_SLOT_PRODUCER_LIMIT`` draws the line (``streams/dispatcher.py``).

What the guarantees rest on, unchanged: every write of a table that uses the writer goes through
it, and a partition's writes go out in the order they were made, over one idempotent ``acks=all``
producer at a time, so a key's records keep their order. Before Faust commits offsets it flushes
its producer, and the worker's app flushes this writer with it (``streams/app.py``): no offset is
committed past a slot write not on Kafka.

A producer that failed a write is replaced (``renewals``). aiokafka 0.14's idempotent producer
numbers a partition's batches as it drains them (``MessageAccumulator._pop_batch``) and never resets
the numbers nor takes a new producer id once started, so a batch Kafka refused (for any reason: a
record too large, an authorization error, a batch expired while its partition had no leader) leaves
the partition's next number ahead of the broker's: every later batch to that partition is refused
with ``OutOfOrderSequenceNumber`` for as long as the producer lives (pinned on the broker by
``tests/integration/test_slot_writer_renewal.py``). ``RecordTable`` sends a refused slot record
again until it lands, and the worker's flush waits for it (``Owed``): through that producer the
resends would fail forever, no commit would pass them, and the worker would hold its partitions
doing nothing. A new producer (a new id, numbers from 0) takes the resend and the writes after it
at once, except those to a partition the old producer still holds records of (taken, neither
acknowledged nor refused yet): they wait until those are settled (``_held``). A record's future
settles when the request that carried it has returned, or when its batch expired unsent, so a
settled record can no longer land; a key is written to one partition, so its records keep their
order across the change (a refused one is sent again only while it is still its key's latest,
``Owed``). Order across partitions was never Kafka's to keep, and is not kept here: a partition the
old producer cannot settle for long (``NOT_ENOUGH_REPLICAS``, which it retries without end) holds
up its own writes only, not the provider's other slots. The old producer is stopped in the
background; ``stop`` waits for it.

Kafka refuses a batch whole, and ``RecordTable`` resends the records of a refused batch together a
second later: through one producer they would share a batch again, so one record Kafka will never
take (too large for the topic, say) would take its batch-mates down with it on every resend, and
their slots' handovers would wait until a later write of their keys superseded them. So a key
Kafka refused a record of goes alone (``_suspect``) until a record of it lands: its partition's
other writes wait in the queue for the answer. Refused again, it costs one producer and stays
suspect; landed, the key goes in batches again. So the records refused beside a poisoned one land
on their first resend, whatever else is written meanwhile (a key never refused is batched as
ever). The price falls on a partition whose every record is refused (an authorization error): one
producer per record sent again, not one per resend. A writer whose producer never failed holds
nothing back.

One gap is aiokafka's, not closed here: when its sender task dies of an unexpected error
(``Sender._fail_all``) it fails every batch taken, including those of a produce request to another
broker still on its way (that request's task is left running, and may still be connecting); such a
record counts as settled, its partition is not held, and the record can land after a later write of
its key made through the new producer.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Partition = tuple[str, int]
"""A topic and one of its partitions."""


@dataclass(frozen=True, slots=True)
class SlotWrite:
    topic: str
    partition: int
    key: bytes
    value: bytes | None
    """None: a tombstone (the key deleted)."""


class SlotWriter:
    """Sends table records in the order they are handed over (per partition), each future resolved
    once Kafka acknowledged its record (or failed with the producer's error; the writer then takes
    a new producer for the writes after it, see the module docstring)."""

    def __init__(self, bootstrap: str, *, client_id: str = "floodgate-slots") -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.enlisted = False
        """Whether any table writes through this writer: only then is it started with the worker."""
        self._queue: deque[tuple[SlotWrite, asyncio.Future[Any]]] = deque()
        self._unacked: set[asyncio.Future[Any]] = set()
        self._in_flight: dict[asyncio.Future[Any], tuple[SlotWrite, asyncio.Future[Any], AIOKafkaProducer]] = {}
        """Per record a producer took and has not settled (the producer's future): its write, the
        caller's future and the producer."""
        self._held: dict[Partition, set[asyncio.Future[Any]]] = {}
        """Partitions with records on a retired producer not settled yet, or with a record sent
        alone (``_suspect``) not answered yet (their futures): the writes to them wait, in order,
        and the others go on. Empty but after a refusal."""
        self._suspect: set[tuple[str, int, bytes]] = set()
        """Keys (with their topic and partition) Kafka refused a record of, and no record of which
        has landed since: one of them may be a record Kafka will never take, so each goes alone.
        Empty but after a refusal."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        """The stops of retired producers and of producers whose start failed (``stop`` waits)."""
        self._stopped = False
        self.renewals = 0
        """Producers replaced after they failed a write (for tests and logs)."""

    def __len__(self) -> int:
        """Writes handed over and not yet acknowledged (queued or in flight)."""
        return len(self._queue) + len(self._unacked)

    def enlist(self) -> SlotWriter:
        self.enlisted = True
        return self

    def send(self, write: SlotWrite) -> asyncio.Future[Any]:
        """Queue ``write``; the future resolves once Kafka has it. Never blocks: the order of calls
        is the order on Kafka (of each partition)."""
        if self._stopped:
            raise RuntimeError("the slot writer is stopped")
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((write, done))
        self._unacked.add(done)
        done.add_done_callback(self._landed)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="slot-writer")
        return done

    def _landed(self, done: asyncio.Future[Any]) -> None:
        self._unacked.discard(done)
        # Retrieved here, so a write nobody awaits (a tombstone) fails with a line in the log
        # rather than asyncio's "exception never retrieved"; an awaiting caller still gets it.
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.warning("slot write failed: %s", exc)

    async def start(self) -> None:
        """Connect (once, however many callers ask at the same time). Raises ``RuntimeError``
        after ``stop``: a stopped writer takes no writes, and a producer connected then would
        never be stopped."""
        if self._stopped:
            raise RuntimeError("the slot writer is stopped: it is not started again")
        if self._starting is None:
            self._starting = asyncio.create_task(self._connect(), name="slot-writer-connect")
        await asyncio.shield(self._starting)

    async def _connect(self) -> None:
        # Linger 0: a slot write is sent as soon as the request before it returned.
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all",
                                    enable_idempotence=True, linger_ms=0)
        try:
            await producer.start()
        except BaseException:  # (cancelled too: by ``stop``, which waits for this close)
            self._starting = None  # the next write tries again
            self._close(producer)
            raise
        self._producer = producer

    async def flush(self) -> None:
        """Return once every write handed over before the call is acknowledged or failed. Writes
        handed over meanwhile are not waited for: under steady load there always are some, and a
        commit must not wait for them (nor for offsets after its own)."""
        pending = list(self._unacked)
        if pending:
            await asyncio.wait(pending)

    async def stop(self) -> None:
        """Flush, then close the producers (a retired one once it has settled what it holds, one
        still connecting at once). Writes handed over after this raise."""
        if self._task is not None and not self._task.done():
            await self.flush()
        self._stopped = True
        await cancel_and_wait(self._task)
        for _, done in self._queue:
            if not done.done():
                done.set_exception(RuntimeError("the slot writer stopped before sending this write"))
        self._queue.clear()
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            # A start can wait for the broker for good: cut it short; its producer is then closed
            # like a retired one, below.
            starting.cancel()
            await asyncio.wait([starting])
        while self._closing:
            await asyncio.wait(list(self._closing))  # (not gather: a stop cancelled meanwhile leaves them be)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        while True:
            while self._queue:
                index = self._first_free() if self._held else 0
                if index is None:  # every queued write waits for its partition (``_release`` wakes us)
                    break
                write, done = self._queue[index]
                producer = self._producer
                try:
                    if producer is None:
                        await self.start()
                        producer = self._producer
                    assert producer is not None
                    # send() returns once the record is in the producer's buffer, in call order.
                    sent = await producer.send(write.topic, value=write.value, key=write.key,
                                               partition=write.partition)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the caller decides: put_reliably_in sends it again
                    del self._queue[index]  # (``_landed`` logs it)
                    # Not taken: no batch number spent. Replaced all the same, in case its sender
                    # died (every send then raises its error; a new producer costs little), but
                    # not for a record over ``max_request_size``, which aiokafka refuses before
                    # anything and a new producer would refuse too: each resend of each such
                    # record would cost a producer.
                    if not isinstance(exc, MessageSizeTooLargeError):
                        self._retire(producer, exc)
                    if not done.done():
                        done.set_exception(exc)
                    continue
                # (Writes are only appended meanwhile, and only this task takes any out.)
                del self._queue[index]
                self._in_flight[sent] = (write, done, producer)
                sent.add_done_callback(self._settle)
                if producer is not self._producer:  # retired while it took this record
                    self._hold(sent, write)
                elif self._suspect and (suspect := (write.topic, write.partition, write.key)) in self._suspect:
                    # (The emptiness check first: a writer Kafka refused nothing of builds no tuple.)
                    # Alone: the partition's other writes wait in the queue for its answer.
                    sent.add_done_callback(partial(self._cleared, suspect))
                    self._hold(sent, write)
            self._wake.clear()
            await self._wake.wait()

    def _first_free(self) -> int | None:
        """The queue's first write to a partition not held (``_held``: a held partition's writes
        stay behind in the queue, in their order)."""
        for index, (write, _) in enumerate(self._queue):
            if (write.topic, write.partition) not in self._held:
                return index
        return None

    def _settle(self, sent: asyncio.Future[Any]) -> None:
        write, done, producer = self._in_flight.pop(sent)
        error: BaseException
        if sent.cancelled():
            error = RuntimeError("the slot write was cancelled by the producer")
        elif (exc := sent.exception()) is None:
            if not done.done():
                done.set_result(sent.result())
            return
        else:
            error = exc
        # It and its batch-mates, refused with it, are sent again: each alone.
        self._suspect.add((write.topic, write.partition, write.key))
        # Refused after the producer took it: its partition's batch numbers are spent past the
        # broker's (module docstring), so no later write goes through this producer.
        self._retire(producer, error)
        if not done.done():
            done.set_exception(error)

    def _retire(self, producer: AIOKafkaProducer | None, error: BaseException | None) -> None:
        """Stop ``producer`` after it failed a write (once, however many writes it failed); the
        next write connects a new one, and the writes to a partition it still holds records of
        wait until those are settled."""
        if producer is None or producer is not self._producer or self._stopped:
            # Retired already, never connected (``start`` failed: the next write tries again), or
            # being stopped with the writer.
            return
        self._producer, self._starting = None, None
        self.renewals += 1
        log.warning("the slot writer's producer failed a write (%s): a new producer takes the writes after it "
                    "(those to a partition the old one holds records of once it has settled them)", error)
        for sent, (write, _, owner) in self._in_flight.items():
            if owner is producer and not sent.done():
                self._hold(sent, write)
        self._close(producer)

    def _hold(self, sent: asyncio.Future[Any], write: SlotWrite) -> None:
        """No write to ``write``'s partition goes out before ``sent`` (its record, on a retired
        producer) is settled."""
        partition = (write.topic, write.partition)
        self._held.setdefault(partition, set()).add(sent)
        sent.add_done_callback(partial(self._release, partition))

    def _cleared(self, suspect: tuple[str, int, bytes], sent: asyncio.Future[Any]) -> None:
        """A record of a suspect key, sent alone, is answered: landed, the key is batched again
        (refused, ``_settle`` has kept it suspect). Runs before ``_release`` lets the next write
        out."""
        if not sent.cancelled() and sent.exception() is None:
            self._suspect.discard(suspect)

    def _release(self, partition: Partition, sent: asyncio.Future[Any]) -> None:
        held = self._held.get(partition)
        if held is None:
            return
        held.discard(sent)
        if not held:
            del self._held[partition]
            self._wake.set()

    def _close(self, producer: AIOKafkaProducer) -> None:
        """Stop ``producer`` in the background (``stop`` waits for it)."""
        closing = asyncio.ensure_future(_stop_quietly(producer))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)


def writes_alone(limit: int, max_limit: int) -> bool:
    """Whether a provider with concurrency ``limit`` gets the slot writer (``max_limit``:
    ``FLOODGATE_SLOT_PRODUCER_LIMIT``, 0 for none)."""
    return 0 < limit <= max_limit


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    """``producer.stop()``: returns once every record it held is acknowledged or refused (its
    flush), and its sender has ended with no request on its way. Its errors are its records'."""
    try:
        await producer.stop()
    except Exception as exc:
        log.warning("stopping a producer of the slot writer: %s", exc)


__all__ = ["SlotWrite", "SlotWriter", "writes_alone"]
