"""The slot tables' producer of their own (streams/slotwriter.py), on the test broker: records land
in the order they were handed over, and a commit's flush waits for them."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.app import create_app
from streams.slotwriter import SlotWrite, SlotWriter
from tests.kafka_util import consume_until, create_topics, unique_name


def _writes(topic: str, n: int) -> list[SlotWrite]:
    """Three keys written in turn, each deleted after its last put: the order is the point."""
    out = [SlotWrite(topic, 0, f"0:job-{i % 3}".encode(), f"v{i}".encode()) for i in range(n)]
    return out + [SlotWrite(topic, 0, f"0:job-{k}".encode(), None) for k in range(3)]


async def test_writes_land_in_the_order_they_were_handed_over(kafka_bootstrap: str) -> None:
    topic = unique_name("slots-")
    create_topics(kafka_bootstrap, [topic])
    writer = SlotWriter(kafka_bootstrap)
    writes = _writes(topic, 30)
    try:
        acks = [writer.send(w) for w in writes]  # none awaited in between: one burst
        metas = await asyncio.gather(*acks)
    finally:
        await writer.stop()
    assert [m.offset for m in metas] == sorted(m.offset for m in metas)
    assert len({m.offset for m in metas}) == len(writes)
    got = await asyncio.to_thread(consume_until, kafka_bootstrap, topic, lambda ms: len(ms) >= len(writes))
    assert [(m.key(), m.value()) for m in got] == [(w.key, w.value) for w in writes]


async def test_the_commit_flush_of_the_worker_waits_for_slot_writes(kafka_bootstrap: str, settings_for,
                                                                    tmp_path: Path) -> None:
    """Faust flushes its producer before it commits offsets: the worker's app makes that flush
    wait for the slot writer too, so no offset is committed past a slot write not on Kafka."""
    settings = settings_for()
    app = create_app(settings, datadir=tmp_path / "w0")
    writer = app.slot_writer
    assert writer is not None
    topic = unique_name("slots-")
    create_topics(kafka_bootstrap, [topic])
    await writer.start()  # the connection made: what is measured below is the flush alone
    try:
        acks = [writer.send(w) for w in _writes(topic, 20)]
        assert not any(a.done() for a in acks)
        await app.producer.flush()
        assert all(a.done() and a.exception() is None for a in acks)
        assert len(writer) == 0
    finally:
        await writer.stop()


async def test_stop_lands_what_was_handed_over_then_refuses_more(kafka_bootstrap: str) -> None:
    topic = unique_name("slots-")
    create_topics(kafka_bootstrap, [topic])
    writer = SlotWriter(kafka_bootstrap)
    acks = [writer.send(w) for w in _writes(topic, 10)]
    await writer.stop()
    assert all(a.done() and a.exception() is None for a in acks)
    with pytest.raises(RuntimeError, match="stopped"):
        writer.send(SlotWrite(topic, 0, b"0:late", b"x"))


async def test_a_write_kafka_refuses_fails_its_future_and_the_next_still_lands(kafka_bootstrap: str) -> None:
    """A record to a partition that does not exist fails alone; the writer goes on (the caller
    decides: ``RecordTable.put_reliably_in`` sends it again)."""
    topic = unique_name("slots-")
    create_topics(kafka_bootstrap, [topic])
    writer = SlotWriter(kafka_bootstrap)
    try:
        bad = writer.send(SlotWrite(topic, 7, b"7:job", b"x"))
        good = writer.send(SlotWrite(topic, 0, b"0:job", b"y"))
        with pytest.raises(AssertionError, match="Unrecognized partition"):  # aiokafka's check in send()
            await bad
        assert (await good).offset == 0
    finally:
        await writer.stop()


async def test_a_flush_returns_while_writes_keep_coming(kafka_bootstrap: str) -> None:
    """Faust flushes before every commit: a flush that also waited for writes handed over after
    it began would never return under steady load, and no offset would be committed."""
    topic = unique_name("slots-")
    create_topics(kafka_bootstrap, [topic])
    writer = SlotWriter(kafka_bootstrap)
    handed: list[asyncio.Future[object]] = []
    feeding = True

    def another(_: object = None) -> None:  # each acknowledgement hands over the next write
        if feeding:
            done = writer.send(SlotWrite(topic, 0, b"0:job", b"v"))
            handed.append(done)
            done.add_done_callback(another)

    await writer.start()
    another()
    another()  # two in flight: at no moment is nothing unacknowledged
    before = list(handed)
    try:
        await asyncio.wait_for(writer.flush(), timeout=30)
        assert all(done.done() for done in before)
        assert len(writer) > 0  # the writes handed over since were not waited for
    finally:
        feeding = False
        await writer.stop()
