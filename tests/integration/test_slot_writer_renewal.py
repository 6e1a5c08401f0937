"""The slot writer after Kafka refused one of its records, on the test broker.

aiokafka 0.14's idempotent producer spends a partition's batch number when it sends a batch and
never gives it back: once Kafka refused a batch, every later batch of that producer to that
partition is refused with ``OutOfOrderSequenceNumber`` (the first test pins this). The refusal is
provoked for real: the changelog topic takes records of at most ``MAX_BYTES``, and a larger one is
refused by the broker (``MessageSizeTooLarge``) after the producer numbered it. A slot record
refused that way is sent again by ``RecordTable`` until it lands, and the worker's flush (which
Faust awaits before every commit) waits for it: through the same producer it would wait forever.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber
from confluent_kafka.admin import AdminClient, NewTopic

from streams.app import create_app
from streams.slotwriter import SlotWrite, SlotWriter
from streams.tables import RecordTable
from tests.kafka_util import consume_until, unique_name

MAX_BYTES = 1024
"""The topic's ``max.message.bytes``: a slot record fits, ``TOO_LARGE`` does not."""

TOO_LARGE = b"x" * (4 * MAX_BYTES)


def create_small_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, num_partitions=1, replication_factor=1, config={"max.message.bytes": str(MAX_BYTES)})
    admin.create_topics([topic])[name].result(timeout=30)


async def test_after_one_refused_batch_aiokafka_refuses_every_later_write_to_the_partition(
        kafka_bootstrap: str) -> None:
    """Why the slot writer replaces a producer that failed a write. Fails if aiokafka starts
    recovering from a refused batch (resetting its numbers or taking a new producer id)."""
    topic = unique_name("slots-")
    create_small_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all", linger_ms=0)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"taken", key=b"0:job-a", partition=0)
        with pytest.raises(MessageSizeTooLargeError):
            await producer.send_and_wait(topic, TOO_LARGE, key=b"0:job-b", partition=0)
        for _ in range(3):  # not once: for as long as the producer lives
            with pytest.raises(OutOfOrderSequenceNumber):
                await producer.send_and_wait(topic, b"freed", key=b"0:job-a", partition=0)
    finally:
        await producer.stop()


async def test_a_slot_record_refused_after_the_producer_broke_lands_before_the_commit(
        kafka_bootstrap: str, settings_for, tmp_path: Path) -> None:
    """The worst case: a freed slot's record behind a refused one. Before the writer replaced its
    producer, the record was refused and sent again every second for good, the commit's flush
    never returned, and the worker held its partitions doing nothing."""
    app = create_app(settings_for(), datadir=tmp_path / "w0")
    writer = app.slot_writer
    assert writer is not None
    slots: RecordTable[bytes] = RecordTable(app, unique_name("slots-"), partitions=1, encode=bytes, decode=bytes,
                                            writer=writer)
    changelog = slots.table.changelog_topic.get_topic_name()
    create_small_topic(kafka_bootstrap, changelog)
    try:
        await slots.put_durably_in(0, b"0:job-a", b"taken")  # the broker now knows the producer here
        with pytest.raises(MessageSizeTooLargeError):
            await writer.send(SlotWrite(changelog, 0, b"0:job-b", TOO_LARGE))
        slots.put_in(0, b"0:job-a", b"freed")
        async with asyncio.timeout(30):
            await app.producer.flush()  # what Faust awaits before it commits offsets
        assert writer.renewals == 1
        got = await asyncio.to_thread(consume_until, kafka_bootstrap, changelog, lambda ms: len(ms) >= 2)
        assert [(m.key(), m.value()) for m in got] == [(b"0:job-a", b"taken"), (b"0:job-a", b"freed")]
    finally:
        await writer.stop()


async def test_records_refused_with_one_kafka_never_takes_land_when_sent_again(kafka_bootstrap: str) -> None:
    """Kafka refuses a batch whole: records of other keys handed over with one it will never take
    (over the topic's ``max.message.bytes``) share its batch and are refused with it. ``RecordTable``
    sends each of them again a second later; then each refused key goes alone until it lands, and
    the others land (before, they were refused with it on every tick, until a later write of their
    keys superseded them)."""
    topic = unique_name("slots-")
    create_small_topic(kafka_bootstrap, topic)
    writer = SlotWriter(kafka_bootstrap)
    writes = [SlotWrite(topic, 0, b"0:big", TOO_LARGE), SlotWrite(topic, 0, b"0:a", b"a1"),
              SlotWrite(topic, 0, b"0:b", b"b1")]
    try:
        first = [writer.send(write) for write in writes]
        async with asyncio.timeout(30):
            await asyncio.wait(first)
        assert all(isinstance(f.exception(), MessageSizeTooLargeError) for f in first)
        assert writer.renewals == 1
        again = [writer.send(write) for write in writes]
        async with asyncio.timeout(30):
            await asyncio.wait(again)
        assert isinstance(again[0].exception(), MessageSizeTooLargeError)
        assert again[1].exception() is None and again[2].exception() is None
        assert writer.renewals == 2  # one for the record sent alone and refused again
    finally:
        await writer.stop()
