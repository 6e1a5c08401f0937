"""The API's Kafka producer: every HTTP 2xx that stands for a record is sent only after the
broker acknowledged that record on all in-sync replicas.

``acks=all`` + idempotence: an acknowledged record survives a leader failover and a retried
batch is never written twice. A small linger (1 ms) lets concurrent requests share a batch
without adding noticeable latency to a lone request.

The producer is librdkafka's (confluent-kafka), not aiokafka's: the accept path is the API's
hot path, and librdkafka builds, batches and sends records in its own C threads, where aiokafka
does that work in Python on the event loop (the API's own CPU per acknowledged record measured
2.5-5x lower this way, which is CPU the 202s get back under load). Acknowledgements come back
through one poller thread, which hands each batch of them to the event loop in one call.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from floodgate.errors import KafkaUnavailable, RecordTooLarge

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

# Bodies up to 1 MiB reach the webhook bridge; the envelope adds headers and framing on top.
MAX_REQUEST_BYTES = 1024 * 1024 + 128 * 1024

_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})


class Sender(Protocol):
    """What HTTP handlers need from a producer; tests may pass any implementation."""

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Headers) -> None:
        """Return once the record is acknowledged; raise ``KafkaUnavailable`` or ``RecordTooLarge``."""
        ...


class KafkaSender:
    """A librdkafka producer with the API's durability settings. ``start()`` before use (in the
    event loop that will send)."""

    def __init__(self, bootstrap: str, *, client_id: str = "floodgate-api", linger_ms: int = 1,
                 send_timeout: float = 10.0) -> None:
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
        self._send_timeout = send_timeout
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: threading.Thread | None = None
        self._running = False
        self._done: list[tuple[asyncio.Future[None], KafkaError | None]] = []

    async def start(self) -> None:
        """Connect; raises ``KafkaUnavailable`` if no broker answers."""
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            producer = Producer(self._config)
            # librdkafka connects lazily: ask for metadata so a missing broker fails the start.
            await asyncio.to_thread(producer.list_topics, timeout=self._send_timeout)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot start the Kafka producer: {exc}") from exc
        self._producer, self._running = producer, True
        self._poller = threading.Thread(target=self._poll, name="floodgate-api-acks", daemon=True)
        self._poller.start()

    async def stop(self) -> None:
        """Flush what is pending and disconnect; safe to call twice."""
        producer, poller = self._producer, self._poller
        if producer is None:
            return
        self._producer, self._running = None, False
        if poller is not None:
            await asyncio.to_thread(poller.join)
        # Only this thread serves acknowledgements now (the poller has exited).
        await asyncio.to_thread(producer.flush, self._send_timeout)
        done, self._done = self._done, []
        _settle(done)

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Headers) -> None:
        producer, loop = self._producer, self._loop
        if producer is None or loop is None:
            raise KafkaUnavailable(f"record for {topic}: the producer is not running")
        acked: asyncio.Future[None] = loop.create_future()
        try:
            producer.produce(topic, value, key, headers=list(headers), on_delivery=partial(self._delivered, acked))
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() in _TOO_LARGE:
                raise RecordTooLarge(f"record for {topic} is too large: {exc}") from exc
            log.warning("send to %s failed: %s", topic, exc)
            raise KafkaUnavailable(f"record for {topic} was not accepted by the producer") from exc
        except BufferError as exc:  # librdkafka's local queue is full: the broker is not keeping up
            log.warning("send to %s failed: producer queue full", topic)
            raise KafkaUnavailable(f"record for {topic} was not accepted by the producer") from exc
        try:
            # librdkafka's message timeout fails the record first; this bounds the wait even if
            # an acknowledgement were never delivered.
            async with asyncio.timeout(self._send_timeout + 1.0):
                await acked
        except TimeoutError as exc:
            log.warning("send to %s failed: no acknowledgement", topic)
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc
        except _DeliveryFailed as exc:
            if exc.error.code() in _TOO_LARGE:
                raise RecordTooLarge(f"record for {topic} is too large: {exc.error.str()}") from exc
            log.warning("send to %s failed: %s", topic, exc.error.str())
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc

    # -- the poller thread -------------------------------------------------------------------

    def _delivered(self, acked: asyncio.Future[None], err: KafkaError | None, _msg: object) -> None:
        self._done.append((acked, err))  # in the poller thread, inside poll()

    def _poll(self) -> None:
        producer = self._producer
        while self._running and producer is not None:
            producer.poll(0.1)
            if self._done:
                done, self._done = self._done, []
                try:
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(_settle, done)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return


class _DeliveryFailed(Exception):
    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


def _settle(done: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    """In the event loop: resolve one poll's worth of acknowledgements."""
    for acked, err in done:
        if acked.done():
            continue  # its sender gave up waiting
        if err is None:
            acked.set_result(None)
        else:
            acked.set_exception(_DeliveryFailed(err))


__all__ = ["Headers", "KafkaSender", "KafkaUnavailable", "RecordTooLarge", "Sender"]
