"""The API's Kafka producer: every HTTP 2xx that stands for a record is sent only after the
broker acknowledged that record on all in-sync replicas.

``acks=all`` + idempotence: an acknowledged record survives a leader failover and a retried
batch is never written twice. The linger (how long a record waits for others to share its
batch) is the caller's choice: the API's ingress takes 5 ms, the webhook bridge none (see
``floodgate.api.server``).

The producer is librdkafka's (confluent-kafka), not aiokafka's: the accept path is the API's
hot path, and librdkafka builds, batches and sends records in its own C threads, where aiokafka
does that work in Python on the event loop (the API's own CPU per acknowledged record measured
2.5-5x lower this way, which is CPU the 202s get back under load). Acknowledgements are served
by the event loop itself, which polls the producer without blocking while records are in
flight (see ``_Link``).

A record that times out while no broker answers (a broker restart) leaves librdkafka's
idempotent producer to reset its own sequence numbers (a new epoch or producer id). Where it
cannot, it raises a *fatal* error and that producer instance takes no more records
(``floodgate.fatal_errors``: the loop's poll raises it, ``produce()`` answers ``_FATAL``). The
sender then replaces it with a new one, once however many polls and sends saw the error: the
records that producer held fail at once (their requests are answered 503, as any unacknowledged
one; a record in flight may have been written, and a retry with the same Idempotency-Key finds its
job), and a send that found the producer broken goes out on the new one, since the broken one
never took it.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from floodgate.errors import KafkaUnavailable, RecordTooLarge
from floodgate.fatal_errors import fatal_in, is_fatal

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

# Bodies up to 1 MiB reach the webhook bridge; the envelope adds headers and framing on top.
MAX_REQUEST_BYTES = 1024 * 1024 + 128 * 1024

_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})

POLL_SECONDS = 0.001
"""How often the event loop polls the producer while records wait for their acknowledgement
(the default; the ingress, whose records linger 5 ms anyway, polls less often)."""

Settled = list[tuple[asyncio.Future[None], KafkaError | None]]


class Sender(Protocol):
    """What HTTP handlers need from a producer; tests may pass any implementation."""

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Headers) -> None:
        """Return once the record is acknowledged; raise ``KafkaUnavailable`` or ``RecordTooLarge``."""
        ...


class _Link:
    """One librdkafka producer; its acknowledgements are served on the event loop.

    While records wait for their acknowledgement, the loop polls the producer (without
    blocking) every ``poll_seconds`` and settles what it delivered; with nothing in flight it
    does not poll at all. A thread blocked in ``poll()`` answers up to a millisecond sooner, but
    it is woken for each acknowledgement, takes the GIL from the handlers and wakes the loop
    through its self-pipe each time: at 1,000 requests/s such a thread and those wake-ups cost
    about 4% of the API's CPU per accepted request (``dev/accept_cpu.py``, four rounds).

    The same ticks bound every wait: librdkafka's message timeout fails a record first, and a
    record still unsettled ``wait_bound`` seconds after its send (an acknowledgement that never
    came) is failed here. Sends share one bound, so they expire in the order they were made and
    the oldest is the only one each tick looks at, where a timer per send (``asyncio.timeout``)
    cost each 202 a timer set and cancelled."""

    def __init__(self, producer: Any, loop: asyncio.AbstractEventLoop, *, poll_seconds: float = POLL_SECONDS,
                 wait_bound: float = 11.0, on_fatal: Callable[[_Link, KafkaError], None] = lambda link, error: None
                 ) -> None:
        """``on_fatal(link, error)``: called once, when a poll finds the producer broken for good."""
        self.producer = producer
        self._on_fatal = on_fatal
        self.fatal: KafkaError | None = None
        """The fatal error the producer raised, once it did: it takes no more records."""
        self._loop = loop
        self._poll_seconds = poll_seconds
        self._wait_bound = wait_bound
        self._done: Settled = []
        self._waiting: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._tick: asyncio.TimerHandle | None = None
        self._running = True

    def delivered(self, acked: asyncio.Future[None], err: KafkaError | None, _msg: object) -> None:
        self._done.append((acked, err))  # inside poll() or flush()

    def sent(self, acked: asyncio.Future[None]) -> None:
        """A record was handed to the producer: poll for its acknowledgement soon (and, on a
        producer found broken, fail it at the next tick)."""
        self._waiting.append((self._loop.time() + self._wait_bound, acked))
        if self._tick is None and self._running:
            self._tick = self._loop.call_later(self._poll_seconds, self._poll)

    def _poll(self) -> None:
        self._tick = None
        try:
            self.producer.poll(0)
        except Exception as exc:  # raised inside a timer callback: nothing above would hear of it
            fatal = fatal_in(exc)
            if fatal is None:
                log.exception("polling the Kafka producer failed")
            elif self.fatal is None:
                self.fatal = fatal
                self._on_fatal(self, fatal)  # the sender replaces it
        if self._done:
            done, self._done = self._done, []
            _settle(done)
        waiting = self._waiting
        if waiting:
            now = self._loop.time()
            # A broken producer reports on nothing more: what it still holds fails now, not at
            # its bound (a record in flight may have been written; its client retries by key).
            while waiting and (waiting[0][1].done() or waiting[0][0] <= now or self.fatal is not None):
                _, acked = waiting.popleft()
                if not acked.done():
                    acked.set_exception(_NotAcknowledged())
        # Records (or their reports) still in flight, or sends still waiting.
        if self._running and self.fatal is None and (waiting or len(self.producer) > 0):
            self._tick = self._loop.call_later(self._poll_seconds, self._poll)

    async def close(self, flush_timeout: float) -> None:
        """Stop polling, then deliver what is pending (within ``flush_timeout``) and settle it;
        a send still unsettled then fails (nothing polls for it any more)."""
        self._running = False
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        # Only this thread serves acknowledgements now (the loop polls no more).
        try:
            await asyncio.to_thread(self.producer.flush, flush_timeout)
        except Exception as exc:  # a broken producer raises its fatal error again: settle what it served
            if fatal_in(exc) is None:
                log.exception("flushing the Kafka producer failed")
        done, self._done = self._done, []
        _settle(done)
        waiting, self._waiting = self._waiting, deque()
        for _, acked in waiting:
            if not acked.done():
                acked.set_exception(_NotAcknowledged())


class KafkaSender:
    """A librdkafka producer with the API's durability settings. ``start()`` before use (in the
    event loop that will send). ``producer_factory`` builds a producer from a librdkafka config
    (tests pass their own)."""

    def __init__(self, bootstrap: str, *, client_id: str = "floodgate-api", linger_ms: int = 1,
                 send_timeout: float = 10.0, poll_seconds: float = POLL_SECONDS,
                 producer_factory: Callable[[dict[str, Any]], Any] = Producer) -> None:
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "message.max.bytes": MAX_REQUEST_BYTES,
            # Bounds how long a record may wait for a broker before the send fails (and the
            # client gets a 503) instead of hanging the HTTP request for librdkafka's 300 s default.
            "message.timeout.ms": int(send_timeout * 1000),
            "socket.nagle.disable": True,
            # The Java client's partitioner (aiokafka's too): a job id lands on the partition the
            # worker's own producers would pick, so requests, events and webhooks stay co-partitioned.
            "partitioner": "murmur2_random",
        }
        self.linger_ms = linger_ms
        self._poll_seconds = poll_seconds
        self._factory = producer_factory
        self._send_timeout = send_timeout
        self._link: _Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renewing = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        self.renewals = 0
        """Producers replaced after a fatal error (for tests and logs)."""

    async def start(self) -> None:
        """Connect; raises ``KafkaUnavailable`` if no broker answers."""
        if self._link is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._link = await self._connect()

    async def _connect(self) -> _Link:
        assert self._loop is not None
        try:
            producer = self._factory(dict(self._config))
            # librdkafka connects lazily: ask for metadata so a missing broker fails the start.
            await asyncio.to_thread(producer.list_topics, timeout=self._send_timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot start the Kafka producer: {exc}") from exc
        # librdkafka's message timeout fails a record first; the link's bound is the backstop.
        return _Link(producer, self._loop, poll_seconds=self._poll_seconds, wait_bound=self._send_timeout + 1.0,
                     on_fatal=self._renew_soon)

    def _renew_soon(self, broken: _Link, error: KafkaError) -> None:
        """From the link's poll (a timer callback): renew in a task of its own."""
        task = asyncio.create_task(self._renew(broken, error), name="kafka-sender-renew")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def stop(self) -> None:
        """Flush what is pending and disconnect; safe to call twice."""
        link, self._link = self._link, None
        if link is not None:
            await link.close(self._send_timeout)
        async with self._renewing:  # a renewal under way sees the sender stopped and keeps nothing
            pass
        while self._retired:
            await asyncio.gather(*list(self._retired), return_exceptions=True)

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Headers) -> None:
        link, loop = self._link, self._loop
        if link is None or loop is None:
            raise KafkaUnavailable(f"record for {topic}: the producer is not running")
        acked: asyncio.Future[None] = loop.create_future()
        for last_try in (False, True):
            try:
                link.producer.produce(topic, value, key, headers=list(headers),
                                      on_delivery=partial(link.delivered, acked))
                link.sent(acked)
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is not None and error.code() in _TOO_LARGE:
                    raise RecordTooLarge(f"record for {topic} is too large: {exc}") from exc
                if error is not None and is_fatal(error):
                    await self._renew(link, error)
                    # The broken producer never took this record: send it once on the new one.
                    if not last_try and self._link is not None and self._link is not link:
                        link = self._link
                        continue
                log.warning("send to %s failed: %s", topic, exc)
                raise KafkaUnavailable(f"record for {topic} was not accepted by the producer") from exc
            except BufferError as exc:  # librdkafka's local queue is full: the broker is not keeping up
                log.warning("send to %s failed: producer queue full", topic)
                raise KafkaUnavailable(f"record for {topic} was not accepted by the producer") from exc
        try:
            await acked  # settled by the link: acknowledged, failed, or past its bound
        except _NotAcknowledged as exc:
            log.warning("send to %s failed: no acknowledgement", topic)
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc
        except _DeliveryFailed as exc:
            if exc.error.code() in _TOO_LARGE:
                raise RecordTooLarge(f"record for {topic} is too large: {exc.error.str()}") from exc
            if is_fatal(exc.error):
                await self._renew(link, exc.error)
            log.warning("send to %s failed: %s", topic, exc.error.str())
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc

    async def _renew(self, broken: _Link, error: KafkaError) -> None:
        """Replace ``broken`` (its producer raised a fatal error) with a new producer, once however
        many sends saw the error. If no broker answers now, the next fatal answer tries again."""
        async with self._renewing:
            if self._link is not broken:
                return
            log.warning("the Kafka producer failed for good (%s): starting a new one", error.str())
            try:
                fresh = await self._connect()
            except KafkaUnavailable as exc:
                log.warning("no new Kafka producer yet: %s", exc)
                return
            if self._link is not broken:  # stopped meanwhile (stop() closed the broken one)
                await fresh.close(0.0)
                return
            self._link = fresh
            self.renewals += 1
            # The broken one takes no more records; what it still holds fails and is settled.
            task = asyncio.create_task(broken.close(1.0), name="kafka-sender-retire")
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)


class _NotAcknowledged(Exception):
    """No acknowledgement came within the link's bound (nor a failure from librdkafka)."""


class _DeliveryFailed(Exception):
    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


def _settle(done: Settled) -> None:
    """In the event loop: resolve one poll's worth of acknowledgements."""
    for acked, err in done:
        if acked.done():
            continue  # its sender gave up waiting
        if err is None:
            acked.set_result(None)
        else:
            acked.set_exception(_DeliveryFailed(err))


__all__ = ["Headers", "KafkaSender", "KafkaUnavailable", "RecordTooLarge", "Sender"]
