"""The API's Kafka producer: every HTTP 2xx that stands for a record is sent only after the
broker acknowledged that record on all in-sync replicas.

``acks="all"`` + idempotence: an acknowledged record survives a leader failover and a retried
batch is never written twice. A small linger (1 ms) lets concurrent requests share a batch
without adding noticeable latency to a lone request.

A batch that expires while no broker answers (a broker restart) has used up its sequence
numbers, and aiokafka carries on from there: the broker then refuses every later batch of that
producer id as out of order, for good. So an out-of-order answer replaces the producer with a new
one (a new producer id); that request is answered 503 like any unacknowledged one, the next ones
go through.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from floodgate.errors import KafkaUnavailable, RecordTooLarge

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

# Bodies up to 1 MiB reach the webhook bridge; the envelope adds headers and framing on top.
MAX_REQUEST_BYTES = 1024 * 1024 + 128 * 1024


class Sender(Protocol):
    """What HTTP handlers need from a producer; tests may pass any implementation."""

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Headers) -> None:
        """Return once the record is acknowledged; raise ``KafkaUnavailable`` or ``RecordTooLarge``."""
        ...


class KafkaSender:
    """An aiokafka producer with the API's durability settings. ``start()`` before use."""

    def __init__(self, bootstrap: str, *, client_id: str = "floodgate-api", linger_ms: int = 1,
                 send_timeout: float = 10.0) -> None:
        self._options = {
            "bootstrap_servers": bootstrap, "client_id": client_id, "acks": "all", "enable_idempotence": True,
            "linger_ms": linger_ms, "max_request_size": MAX_REQUEST_BYTES,
            # Bounds how long a batch may wait for a broker before the send fails (and the
            # client gets a 503) instead of hanging the HTTP request for aiokafka's 40 s default.
            "request_timeout_ms": int(send_timeout * 1000),
        }
        self._producer = self._new_producer()
        self._send_timeout = send_timeout
        self._renewing = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self._options)

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        """Replace ``broken`` with a fresh producer, once however many sends saw it fail."""
        async with self._renewing:
            if self._producer is not broken:
                return
            fresh = self._new_producer()
            try:
                await fresh.start()
            except KafkaError:
                await fresh.stop()
                return  # the broker is away again: the next out-of-order answer retries
            self._producer = fresh
            log.warning("Kafka refused the producer's sequence (a batch expired): started a new producer")
            retired = asyncio.get_running_loop().create_task(broken.stop())
            self._retired.add(retired)
            retired.add_done_callback(self._retired.discard)

    async def start(self) -> None:
        """Connect; raises ``KafkaUnavailable`` if no broker answers."""
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise KafkaUnavailable(f"cannot start the Kafka producer: {exc}") from exc

    async def stop(self) -> None:
        """Flush what is pending and disconnect; safe to call twice."""
        await self._producer.stop()

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Headers) -> None:
        producer = self._producer
        try:
            # The timeout bounds metadata lookups too (an unknown topic would otherwise block on
            # metadata for the full request timeout and then some). asyncio.timeout, not
            # wait_for: no extra task per record on the accept path.
            async with asyncio.timeout(self._send_timeout + 1.0):
                delivered = await producer.send(
                    topic, value=value, key=None if key is None else key.encode(), headers=list(headers))
                await delivered
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(f"record for {topic} is too large: {exc}") from exc
        except OutOfOrderSequenceNumber as exc:
            await self._renew(producer)
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc
        except (KafkaError, TimeoutError) as exc:
            log.warning("send to %s failed: %s: %s", topic, type(exc).__name__, exc)
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc


__all__ = ["Headers", "KafkaSender", "KafkaUnavailable", "RecordTooLarge", "Sender"]
