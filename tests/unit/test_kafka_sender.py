"""The API's producer (floodgate/api/kafka_io.py) on a stand-in for librdkafka's ``Producer``: a
fatal error replaces the producer once, however many sends saw it; other errors do not; the event
loop serves the acknowledgements, polling only while records are in flight."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError

from floodgate.api.kafka_io import KafkaSender, _Link, _NotAcknowledged
from floodgate.errors import KafkaUnavailable


class FakeProducer:
    """Acknowledges every record on the next ``poll`` with ``error`` (None: delivered)."""

    def __init__(self, error: KafkaError | None) -> None:
        self.error = error
        self.produced: list[bytes] = []
        self._pending: list[Callable[[KafkaError | None, object], None]] = []
        self._lock = threading.Lock()
        self.polls: list[tuple[int, float]] = []
        """(thread id, timeout) of every poll."""

    def __len__(self) -> int:  # librdkafka's: records (and their reports) not yet served
        with self._lock:
            return len(self._pending)

    def list_topics(self, timeout: float) -> object:
        return object()

    def produce(self, topic: str, value: bytes, key: str | None, *, headers: Any, on_delivery: Any) -> None:
        with self._lock:
            self.produced.append(value)
            self._pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls.append((threading.get_ident(), timeout))
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


async def test_the_loop_serves_acknowledgements_without_blocking_and_stops_polling_when_none_is_due() -> None:
    sender, made = _sender([None])
    await sender.start()
    try:
        await asyncio.gather(*(sender.send_and_wait("t", "k", b"v%d" % i, []) for i in range(5)))
        producer = made[0]
        assert producer.produced == [b"v%d" % i for i in range(5)]
        # Every poll ran on the loop's own thread and none blocked: no thread waits in poll().
        assert producer.polls and {tid for tid, _ in producer.polls} == {threading.get_ident()}
        assert {timeout for _, timeout in producer.polls} == {0}
        polls = len(producer.polls)
        # Nothing in flight: no poll is scheduled, so an idle API does not wake up for this.
        assert sender._link is not None and sender._link._tick is None
        await asyncio.sleep(0)
        assert len(producer.polls) == polls
        await sender.send_and_wait("t", "k", b"again", [])  # and the next record is served again
        assert len(producer.polls) > polls and sender._link._tick is None
    finally:
        await sender.stop()


class SilentProducer(FakeProducer):
    """Takes records and never reports on them; ``holding`` says what ``len()`` claims (a lost
    report: librdkafka thinks nothing is pending)."""

    def __init__(self, holding: bool) -> None:
        super().__init__(None)
        self.holding = holding

    def __len__(self) -> int:
        return len(self.produced) if self.holding else 0

    def poll(self, timeout: float) -> int:
        self.polls.append((threading.get_ident(), timeout))
        return 0


@pytest.mark.parametrize("holding", [True, False], ids=["still-pending", "report-lost"])
async def test_a_send_that_is_never_acknowledged_fails_at_the_links_bound(holding: bool) -> None:
    link = _Link(SilentProducer(holding), asyncio.get_running_loop(), poll_seconds=0.001, wait_bound=0.05)
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    started = loop.time()
    link.sent(first)
    link.sent(second)
    with pytest.raises(_NotAcknowledged):
        await first
    with pytest.raises(_NotAcknowledged):
        await second
    assert loop.time() - started >= 0.05  # not before the bound
    assert link._tick is None and not link._waiting  # and then nothing left to poll for


async def test_a_send_whose_acknowledgement_never_comes_is_answered_unavailable() -> None:
    silent = SilentProducer(holding=True)
    sender = KafkaSender("unused:9092", send_timeout=0.0, producer_factory=lambda config: silent)
    await sender.start()
    try:
        with pytest.raises(KafkaUnavailable, match="not acknowledged"):
            await sender.send_and_wait("t", "k", b"v", [])
    finally:
        await sender.stop()


async def test_closing_the_link_fails_the_sends_that_flush_did_not_settle() -> None:
    loop = asyncio.get_running_loop()
    link = _Link(SilentProducer(holding=True), loop, poll_seconds=60.0, wait_bound=60.0)
    acked = loop.create_future()
    link.sent(acked)
    await link.close(0.0)
    with pytest.raises(_NotAcknowledged):
        await acked


async def test_a_send_given_up_by_its_caller_leaves_the_link() -> None:
    loop = asyncio.get_running_loop()
    link = _Link(SilentProducer(holding=False), loop, poll_seconds=0.001, wait_bound=60.0)
    acked = loop.create_future()
    link.sent(acked)
    acked.cancel()  # the client went away; nothing else is pending
    assert link._tick is not None
    link._tick.cancel()
    link._poll()  # the tick, run now
    assert not link._waiting and link._tick is None
