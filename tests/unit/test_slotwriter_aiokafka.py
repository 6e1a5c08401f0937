"""The slot writer (streams/slotwriter.py) with aiokafka's real producer, against a stand-in broker:
after a renewal, a partition the old producer still holds a record of waits for it, and the other
partitions do not; after a refusal, a record Kafka will never take does not take the records sent
again with it down on every resend.

The stand-in answers NOT_ENOUGH_REPLICAS for a partition marked sick, as a broker does while the
other replicas of that partition are down; aiokafka's idempotent producer retries that for as long
as it runs. A single-node test broker cannot be made to answer so (it caps min.insync.replicas at
the replication factor, see tests/unit/test_sdk_aiokafka.py), hence the stand-in. It speaks just
enough of the protocol (aiokafka's own structs encode and decode it) and checks batch numbers as
Kafka does, per producer id and partition."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.protocol.produce import ProduceRequest_v3, ProduceResponse_v3
from aiokafka.protocol.struct import Struct
from aiokafka.record.memory_records import MemoryRecords

from streams.slotwriter import SlotWrite, SlotWriter
from tests.stub_kafka import MESSAGE_TOO_LARGE, NOT_ENOUGH_REPLICAS, OUT_OF_ORDER_SEQUENCE_NUMBER, StubKafka

TOPIC = "slots"
PARTITIONS = 3


class StubBroker(StubKafka):
    """One node leading the partitions of ``TOPIC``. A batch to a partition in ``sick`` is refused
    with NOT_ENOUGH_REPLICAS, one holding a key in ``too_large`` with MESSAGE_TOO_LARGE, one whose
    first number is not the next its producer owes the partition with OUT_OF_ORDER_SEQUENCE_NUMBER;
    any other is written. ``asked``: every record of every produce request, retries too."""

    def __init__(self) -> None:
        super().__init__(TOPIC, PARTITIONS)
        self.sick: set[int] = set()
        self.too_large: set[bytes] = set()
        self.asked: list[tuple[bytes, bytes]] = []
        self.written: dict[int, list[tuple[int, bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
        """Per partition: (producer id, key, value), in order."""
        self.changed = asyncio.Event()
        self._next: dict[tuple[int, int], int] = {}

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    def produce(self, request: ProduceRequest_v3) -> Struct:
        answers = [(topic, [(p, *self._produce(p, data), -1) for p, data in parts])
                   for topic, parts in request.topics]
        self.changed.set()
        return ProduceResponse_v3(answers, 0)

    def _produce(self, partition: int, data: bytes) -> tuple[int, int]:
        """A partition's batch: (error code, offset of its first record)."""
        batch = MemoryRecords(data).next_batch()  # aiokafka sends one batch per partition
        assert batch is not None
        producer_id, first = batch.producer_id, batch.base_sequence
        records = [(record.key, record.value) for record in batch]
        self.asked.extend(records)
        if partition in self.sick:
            return NOT_ENOUGH_REPLICAS, -1
        if self.too_large & {key for key, _ in records}:
            return MESSAGE_TOO_LARGE, -1
        if first != self._next.get((producer_id, partition), 0):
            return OUT_OF_ORDER_SEQUENCE_NUMBER, -1
        self._next[producer_id, partition] = first + len(records)
        offset = len(self.written[partition])
        self.written[partition].extend((producer_id, key, value) for key, value in records)
        return 0, offset


@pytest.fixture
async def broker() -> AsyncIterator[StubBroker]:
    async with StubBroker() as stub:
        yield stub


async def test_a_partition_short_of_replicas_holds_up_its_own_writes_only(broker: StubBroker) -> None:
    """Partition 1 is short of replicas: the producer retries its record without end. Another
    record is refused for good (too large), so the producer is replaced: the new one takes
    partition 2's slots at once (before, every write waited for the old producer's stop, and so
    for partition 1), and partition 1's next record only after the old producer's has landed."""
    writer = SlotWriter(f"127.0.0.1:{broker.port}")
    broker.sick.add(1)
    try:
        first = writer.send(SlotWrite(TOPIC, 1, b"0:b", b"b1"))
        await broker.until(lambda: broker.asked.count((b"0:b", b"b1")) >= 2)  # refused, and tried again
        broker.too_large.add(b"0:big")
        with pytest.raises(MessageSizeTooLargeError):
            await writer.send(SlotWrite(TOPIC, 0, b"0:big", b"x"))
        assert writer.renewals == 1
        async with asyncio.timeout(5):
            await writer.send(SlotWrite(TOPIC, 2, b"0:c", b"c1"))
        second = writer.send(SlotWrite(TOPIC, 1, b"0:b", b"b2"))
        async with asyncio.timeout(5):
            await writer.send(SlotWrite(TOPIC, 2, b"0:c", b"c2"))  # handed over after b2
        assert (b"0:b", b"b2") not in broker.asked
        assert not first.done()
        broker.sick.clear()  # the replicas are back
        async with asyncio.timeout(5):
            await first
            await second
    finally:
        broker.sick.clear()
        await writer.stop()
    b1, b2 = broker.written[1]
    assert (b1[1:], b2[1:]) == ((b"0:b", b"b1"), (b"0:b", b"b2"))
    assert b1[0] != b2[0]  # the old producer's record, then the new one's
    assert [pid for pid, _, _ in broker.written[2]] == [b2[0]] * 2


async def test_records_refused_with_one_kafka_never_takes_land_on_the_next_resends(broker: StubBroker) -> None:
    """``RecordTable`` sends a refused slot record again a second later, the records of a refused
    batch on the same tick: here a round each. ``0:big`` is refused on every try. Through one
    producer the others shared its batch again on every round and were refused with it, and their
    slots' handovers waited until a later write of their keys superseded them. A refused key goes
    alone until a record of it lands: round 2 lands ``0:a`` and ``0:b``, each alone, and ``0:big``
    is refused alone, as in round 3."""
    writer = SlotWriter(f"127.0.0.1:{broker.port}")
    broker.too_large.add(b"0:big")
    owed = [SlotWrite(TOPIC, 0, key, b"v") for key in (b"0:a", b"0:big", b"0:b")]
    landed_in: dict[bytes, int] = {}
    try:
        for resend in (1, 2, 3):
            sent = [writer.send(write) for write in owed]  # in the order they were refused
            async with asyncio.timeout(5):
                await asyncio.wait(sent)
            answers = list(zip(owed, sent, strict=True))
            landed_in.update((write.key, resend) for write, done in answers if done.exception() is None)
            owed = [write for write, done in answers if done.exception() is not None]
    finally:
        await writer.stop()
    assert landed_in == {b"0:a": 2, b"0:b": 2}
    assert [key for _, key, _ in broker.written[0]] == [b"0:a", b"0:b"]
    assert (b"0:big", b"v") in broker.asked
    assert writer.renewals == 3  # one per round
