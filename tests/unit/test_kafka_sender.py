"""The API's producer (floodgate/api/kafka_io.py) on a stand-in for librdkafka's ``Producer``: a
fatal error replaces the producer once, however many sends saw it; other errors do not."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError

from floodgate.api.kafka_io import KafkaSender
from floodgate.errors import KafkaUnavailable


class FakeProducer:
    """Acknowledges every record on the next ``poll`` with ``error`` (None: delivered)."""

    def __init__(self, error: KafkaError | None) -> None:
        self.error = error
        self.produced: list[bytes] = []
        self._pending: list[Callable[[KafkaError | None, object], None]] = []
        self._lock = threading.Lock()

    def list_topics(self, timeout: float) -> object:
        return object()

    def produce(self, topic: str, value: bytes, key: str | None, *, headers: Any, on_delivery: Any) -> None:
        with self._lock:
            self.produced.append(value)
            self._pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        with self._lock:
            pending, self._pending = self._pending, []
        for callback in pending:
            callback(self.error, None)
        if not pending:
            threading.Event().wait(min(timeout, 0.01))  # librdkafka's poll blocks up to its timeout
        return len(pending)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def _sender(errors: list[KafkaError | None]) -> tuple[KafkaSender, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        assert config["acks"] == "all" and config["enable.idempotence"] is True
        made.append(FakeProducer(errors[min(len(made), len(errors) - 1)]))
        return made[-1]

    return KafkaSender("unused:9092", send_timeout=5.0, producer_factory=factory), made


FATAL = KafkaError(KafkaError._FATAL, "out of order sequence number", fatal=True)


async def test_a_fatal_error_replaces_the_producer_once_and_later_sends_go_through() -> None:
    sender, made = _sender([FATAL, None])
    await sender.start()
    try:
        results = await asyncio.gather(*(sender.send_and_wait("t", "k", b"v%d" % i, []) for i in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, KafkaUnavailable) for r in results), results
        assert sender.renewals == 1 and len(made) == 2
        await sender.send_and_wait("t", "k", b"after", [])
        assert made[1].produced == [b"after"]
    finally:
        await sender.stop()


async def test_an_error_that_is_not_fatal_keeps_the_producer() -> None:
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out", retriable=True)
    sender, made = _sender([timed_out])
    await sender.start()
    try:
        with pytest.raises(KafkaUnavailable):
            await sender.send_and_wait("t", "k", b"v", [])
        assert sender.renewals == 0 and len(made) == 1
    finally:
        await sender.stop()
        await sender.stop()  # twice is harmless
