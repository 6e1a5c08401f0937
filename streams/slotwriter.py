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
it, in the order it was made, over one idempotent ``acks=all`` producer, so a key's records keep
their order. Before Faust commits offsets it flushes its producer, and the worker's app flushes
this writer with it (``streams/app.py``): no offset is committed past a slot write not on Kafka.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlotWrite:
    topic: str
    partition: int
    key: bytes
    value: bytes | None
    """None: a tombstone (the key deleted)."""


class SlotWriter:
    """Sends table records in the order they are handed over, each future resolved once Kafka
    acknowledged its record (or failed with the producer's error)."""

    def __init__(self, bootstrap: str, *, client_id: str = "floodgate-slots") -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.enlisted = False
        """Whether any table writes through this writer: only then is it started with the worker."""
        self._queue: deque[tuple[SlotWrite, asyncio.Future[Any]]] = deque()
        self._unacked: set[asyncio.Future[Any]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Future[None] | None = None
        self._stopped = False

    def __len__(self) -> int:
        """Writes handed over and not yet acknowledged (queued or in flight)."""
        return len(self._queue) + len(self._unacked)

    def enlist(self) -> SlotWriter:
        self.enlisted = True
        return self

    def send(self, write: SlotWrite) -> asyncio.Future[Any]:
        """Queue ``write``; the future resolves once Kafka has it. Never blocks: the order of calls
        is the order on Kafka."""
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
        """Connect (once, however many callers ask at the same time)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._starting)

    async def _connect(self) -> None:
        # Linger 0: a slot write is sent as soon as the request before it returned.
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all",
                                    enable_idempotence=True, linger_ms=0)
        try:
            await producer.start()
        except BaseException:
            self._starting = None  # the next write tries again
            await producer.stop()
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
        """Flush, then close the producer. Writes handed over after this raise."""
        if self._task is not None and not self._task.done():
            await self.flush()
        self._stopped = True
        await cancel_and_wait(self._task)
        for _, done in self._queue:
            if not done.done():
                done.set_exception(RuntimeError("the slot writer stopped before sending this write"))
        self._queue.clear()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        while True:
            while self._queue:
                write, done = self._queue[0]
                try:
                    if self._producer is None:
                        await self.start()
                    assert self._producer is not None
                    # send() returns once the record is in the producer's buffer, in call order.
                    sent = await self._producer.send(write.topic, value=write.value, key=write.key,
                                                     partition=write.partition)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the caller decides: put_reliably_in sends it again
                    self._queue.popleft()  # (``_landed`` logs it)
                    if not done.done():
                        done.set_exception(exc)
                    continue
                self._queue.popleft()
                sent.add_done_callback(lambda result, done=done: _settle(done, result))
            self._wake.clear()
            await self._wake.wait()


def writes_alone(limit: int, max_limit: int) -> bool:
    """Whether a provider with concurrency ``limit`` gets the slot writer (``max_limit``:
    ``FLOODGATE_SLOT_PRODUCER_LIMIT``, 0 for none)."""
    return 0 < limit <= max_limit


def _settle(done: asyncio.Future[Any], result: asyncio.Future[Any]) -> None:
    if done.done():
        return
    if result.cancelled():
        done.set_exception(RuntimeError("the slot write was cancelled by the producer"))
    elif (exc := result.exception()) is not None:
        done.set_exception(exc)
    else:
        done.set_result(result.result())


__all__ = ["SlotWrite", "SlotWriter", "writes_alone"]
