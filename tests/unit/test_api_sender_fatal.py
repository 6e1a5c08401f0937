"""The API's producer (floodgate/api/kafka_io.py) when its real librdkafka producer suffers a
fatal idempotence error: on librdkafka's mock cluster (no broker), the error raised on demand
(``tests/librdkafka_faults.py``). The stand-in of ``tests/unit/test_kafka_sender.py`` reports a
fatal error as a delivery report's; librdkafka does not: its poll raises it, and ``produce()``
answers ``_FATAL`` (whose ``fatal()`` is False) from then on."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from floodgate.api.kafka_io import KafkaSender
from floodgate.errors import KafkaUnavailable
from tests.librdkafka_faults import inject_fatal_error

TOPIC = "floodgate.requests"
SAFETY = 20.0
"""A guard against a hang, not a measurement: every wait here ends on an event far sooner."""


class Made:
    """The sender's producers, each a real librdkafka producer on a mock cluster of its own."""

    def __init__(self) -> None:
        self.producers: list[Producer] = []

    def __call__(self, config: dict[str, Any]) -> Producer:
        config = {**config, "test.mock.num.brokers": 1}
        self.producers.append(Producer(config))
        return self.producers[-1]


async def started(made: Made, **options: Any) -> KafkaSender:
    # The bound on a wait is a minute: a send that fails sooner failed because of the fatal error.
    sender = KafkaSender("unused:9092", send_timeout=60.0, producer_factory=made, **options)
    await sender.start()
    return sender


async def test_a_send_after_a_fatal_error_goes_out_on_a_new_producer() -> None:
    made = Made()
    sender = await started(made)
    try:
        async with asyncio.timeout(SAFETY):
            await sender.send_and_wait(TOPIC, "job-1", b"before", [])
            inject_fatal_error(made.producers[0])  # nothing of ours in flight: produce() finds it
            await sender.send_and_wait(TOPIC, "job-2", b"after", [])  # answered 202, not 503
            await sender.send_and_wait(TOPIC, "job-3", b"and after", [])
        assert sender.renewals == 1 and len(made.producers) == 2
    finally:
        await sender.stop()


async def test_the_records_a_broken_producer_held_fail_at_once_and_the_next_go_through() -> None:
    made = Made()
    # A linger keeps the record queued in the producer when the fatal error strikes.
    sender = await started(made, linger_ms=500)
    try:
        async with asyncio.timeout(SAFETY):
            waiting = asyncio.ensure_future(sender.send_and_wait(TOPIC, "job-1", b"held", []))
            while len(made.producers[0]) == 0:  # handed over (produce() runs before the first await)
                await asyncio.sleep(0)
            inject_fatal_error(made.producers[0])  # the loop's next poll raises it
            try:
                await waiting
            except KafkaUnavailable:
                pass
            else:
                raise AssertionError("a record the broken producer held was acknowledged")
            await sender.send_and_wait(TOPIC, "job-2", b"after", [])
        assert sender.renewals == 1 and len(made.producers) == 2
    finally:
        await sender.stop()


class GatedProducer:
    """A stand-in whose ``list_topics`` (the new producer's connect) waits for ``gate``, and whose
    poll raises a fatal error once ``broken``."""

    def __init__(self, gate: threading.Event | None) -> None:
        self.gate = gate
        self.pending: list[Any] = []
        self.broken = False
        self.flushed = False

    def list_topics(self, timeout: float) -> None:
        if self.gate is not None:
            assert self.gate.wait(SAFETY)

    def produce(self, topic: str, value: bytes, key: Any, headers: Any = None, on_delivery: Any = None) -> None:
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        if self.broken:
            raise KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "injected", fatal=True))
        done, self.pending = self.pending, []
        for callback in done:
            callback(None, None)
        return len(done)

    def flush(self, timeout: float) -> int:
        self.flushed = True
        return 0 if self.broken else self.poll(0)

    def __len__(self) -> int:
        return len(self.pending)


async def test_a_stop_during_a_renewal_keeps_no_producer() -> None:
    """stop() while the renewal connects its new producer: the new one is closed, not installed
    after stop() returned (never flushed, still taking records)."""
    gate = threading.Event()
    made: list[GatedProducer] = []
    connecting = asyncio.Event()

    def factory(config: dict[str, Any]) -> GatedProducer:
        made.append(GatedProducer(gate if made else None))
        if len(made) == 2:
            connecting.set()
        return made[-1]

    sender = KafkaSender("unused:9092", send_timeout=5.0, producer_factory=factory)
    await sender.start()
    made[0].broken = True  # the next poll raises the fatal error
    async with asyncio.timeout(SAFETY):
        with pytest.raises(KafkaUnavailable):
            await sender.send_and_wait(TOPIC, "job-1", b"held", [])
        await connecting.wait()  # the renewal is connecting its new producer
        stopping = asyncio.ensure_future(sender.stop())
        await asyncio.sleep(0)  # (lets stop() take the broken link; not a wait for the thread)
        gate.set()
        await stopping
    assert made[1].flushed, "the producer made during the stop was closed"
    with pytest.raises(KafkaUnavailable):
        await sender.send_and_wait(TOPIC, "job-2", b"after stop", [])
