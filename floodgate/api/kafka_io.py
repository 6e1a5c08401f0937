"""The API's Kafka producer: every HTTP 2xx that stands for a record is sent only after the
broker acknowledged that record on all in-sync replicas.

``acks="all"`` + idempotence: an acknowledged record survives a leader failover and a retried
batch is never written twice. A small linger (1 ms) lets concurrent requests share a batch
without adding noticeable latency to a lone request.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

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
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_request_size=MAX_REQUEST_BYTES,
            # Bounds how long a batch may wait for a broker before the send fails (and the
            # client gets a 503) instead of hanging the HTTP request for aiokafka's 40 s default.
            request_timeout_ms=int(send_timeout * 1000),
        )
        self._send_timeout = send_timeout

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
        try:
            # The timeout bounds metadata lookups too (an unknown topic would otherwise block on
            # metadata for the full request timeout and then some). asyncio.timeout, not
            # wait_for: no extra task per record on the accept path.
            async with asyncio.timeout(self._send_timeout + 1.0):
                delivered = await self._producer.send(
                    topic, value=value, key=None if key is None else key.encode(), headers=list(headers))
                await delivered
        except MessageSizeTooLargeError as exc:
            raise RecordTooLarge(f"record for {topic} is too large: {exc}") from exc
        except (KafkaError, TimeoutError) as exc:
            log.warning("send to %s failed: %s: %s", topic, type(exc).__name__, exc)
            raise KafkaUnavailable(f"record for {topic} was not acknowledged") from exc


__all__ = ["Headers", "KafkaSender", "KafkaUnavailable", "RecordTooLarge", "Sender"]
