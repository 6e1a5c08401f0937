"""A slot table's writes from outside an agent's event (``RecordTable.put_in`` / ``remove_in``): a
record Kafka refuses is sent again until it lands, unless the key was written again meanwhile,
so the changelog never stays behind the table in memory."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from floodgate.settings import Settings
from streams import tables
from streams.app import bind_producer, create_app
from streams.tables import RecordTable


class Changelog:
    """The table's changelog sends: each a future the test settles; ``sent`` wakes a waiting test."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None, asyncio.Future[None]]] = []
        self.sent = asyncio.Event()

    def __call__(self, partition: int, key: bytes, value: bytes | None, **_: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.records.append((key, value, future))
        self.sent.set()
        return future

    def refuse_last(self) -> None:
        self.records[-1][2].set_exception(RuntimeError("NotEnoughReplicas"))

    async def next_send(self, count: int) -> tuple[bytes, bytes | None]:
        """The ``count``-th send (1-based), once made."""
        async with asyncio.timeout(5):
            while len(self.records) < count:
                self.sent.clear()
                await self.sent.wait()
        key, value, _ = self.records[count - 1]
        return key, value


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RecordTable[bytes], Changelog]:
    monkeypatch.setattr(tables, "RESEND_AFTER", 0.0, raising=False)
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    made: RecordTable[bytes] = RecordTable(create_app(settings, datadir=tmp_path / "w0"), "inflight-x",
                                           partitions=2, encode=bytes, decode=bytes)
    changelog = Changelog()
    made.table.send_changelog = changelog  # type: ignore[method-assign,assignment]  # a fake producer
    return made, changelog


async def settle() -> None:
    """Let callbacks scheduled with no delay run (a few turns of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_refused_write_is_sent_again_until_it_lands(table: tuple[RecordTable[bytes], Changelog]) -> None:
    records, changelog = table
    first = records.put_in(1, b"1:job", b"slot")
    changelog.refuse_last()
    with pytest.raises(RuntimeError):
        await first  # the caller still hears of the refusal
    assert await changelog.next_send(2) == (b"1:job", b"slot")
    changelog.refuse_last()
    assert await changelog.next_send(3) == (b"1:job", b"slot")
    changelog.records[-1][2].set_result(None)
    await settle()
    assert len(changelog.records) == 3, "landed: nothing more is sent"


async def test_a_refused_tombstone_is_sent_again(table: tuple[RecordTable[bytes], Changelog]) -> None:
    records, changelog = table
    records.put_in(0, b"0:job", b"slot")
    changelog.records[-1][2].set_result(None)
    records.remove_in(0, b"0:job")
    changelog.refuse_last()
    assert await changelog.next_send(3) == (b"0:job", None)


async def test_a_later_write_supersedes_a_refused_one(table: tuple[RecordTable[bytes], Changelog]) -> None:
    records, changelog = table
    records.put_in(0, b"0:a", b"slot")
    records.put_in(0, b"0:a", b"slot, submitted")  # written again before the first was refused
    changelog.records[0][2].set_exception(RuntimeError("refused"))
    records.put_in(0, b"0:b", b"slot")
    records.remove_in(0, b"0:b")
    records.put_in(0, b"0:b", b"taken again")  # deleted, then written again: the tombstone is stale
    changelog.records[3][2].set_exception(RuntimeError("refused"))
    await settle()
    assert [(key, value) for key, value, _ in changelog.records] == [
        (b"0:a", b"slot"), (b"0:a", b"slot, submitted"), (b"0:b", b"slot"), (b"0:b", None), (b"0:b", b"taken again")]


async def test_a_flush_begun_before_a_refusal_waits_for_the_resend(table: tuple[RecordTable[bytes], Changelog]) -> None:
    """A commit must not pass a refused record, though the flush began before the refusal was
    known: on Faust's producer the flush wakes on the batch's future, before the record's own
    future runs the callback that learns of the refusal."""
    records, changelog = table
    records.put_in(1, b"1:job", b"slot")
    settled = asyncio.ensure_future(records.owed.settled())
    await settle()
    assert not settled.done(), "the write in flight is owed"
    changelog.refuse_last()
    await changelog.next_send(2)
    changelog.refuse_last()  # the resend refused too: still the same debt
    await changelog.next_send(3)
    assert not settled.done()
    changelog.records[-1][2].set_result(None)
    async with asyncio.timeout(5):
        await settled
    assert len(records.owed) == 0


async def test_a_debt_passes_to_the_write_that_superseded_it(table: tuple[RecordTable[bytes], Changelog]) -> None:
    """Superseded by a later write of its key, a refused record is owed until that write lands,
    even when the flush began before the later write was made."""
    records, changelog = table
    records.put_in(0, b"0:job", b"slot")
    changelog.refuse_last()
    await changelog.next_send(2)  # the resend, in flight
    settled = asyncio.ensure_future(records.owed.settled())
    records.remove_in(0, b"0:job")  # deleted meanwhile: the tombstone takes the debt over
    changelog.records[1][2].set_exception(RuntimeError("refused"))
    await settle()
    assert not settled.done(), "the commit went past the refused record with its successor in flight"
    changelog.refuse_last()  # the tombstone refused too: owed as early as the record it replaced
    assert await changelog.next_send(4) == (b"0:job", None)
    await settle()
    assert not settled.done()
    changelog.records[-1][2].set_result(None)
    async with asyncio.timeout(5):
        await settled
    assert [(key, value) for key, value, _ in changelog.records] == [
        (b"0:job", b"slot"), (b"0:job", b"slot"), (b"0:job", None), (b"0:job", None),
    ], "the stale slot is not sent again"


async def test_a_debt_whose_key_is_gone_is_settled(table: tuple[RecordTable[bytes], Changelog]) -> None:
    """Entries dropped without a write (a partition now owned elsewhere) owe nothing: a flush
    must not wait for them for ever."""
    records, changelog = table
    records.put_in(0, b"0:job", b"slot")
    changelog.refuse_last()
    await changelog.next_send(2)  # the resend, in flight
    del records.data[b"0:job"]
    changelog.refuse_last()
    async with asyncio.timeout(5):
        await records.owed.settled()
    await settle()
    assert len(changelog.records) == 2, "a record of a key no longer held is not sent again"


async def test_a_reliable_write_is_owed_until_it_lands(table: tuple[RecordTable[bytes], Changelog]) -> None:
    records, changelog = table
    task = records.put_reliably_in(0, b"0:job", b"parked", retry_delay=0.0)
    settled = asyncio.ensure_future(records.owed.settled())
    changelog.refuse_last()
    await changelog.next_send(2)
    await settle()
    assert not settled.done() and not task.done()
    changelog.records[-1][2].set_result(None)
    async with asyncio.timeout(5):
        await settled
    assert task.done()


class FakeProducer:
    """Faust's producer as ``bind_producer`` sees it: a flush the test can hold."""

    def __init__(self) -> None:
        self.flushed = asyncio.Event()

    async def on_start(self) -> None:
        return None

    async def flush(self) -> None:
        self.flushed.set()

    async def on_stop(self) -> None:
        return None


async def test_the_worker_flush_waits_for_owed_records(table: tuple[RecordTable[bytes], Changelog]) -> None:
    records, changelog = table
    producer = FakeProducer()
    bind_producer(producer, None, records.owed)
    records.put_in(1, b"1:job", b"slot")
    changelog.refuse_last()
    await changelog.next_send(2)
    flush = asyncio.ensure_future(producer.flush())
    await producer.flushed.wait()
    await settle()
    assert not flush.done(), "the commit's flush went past a record Kafka refused"
    changelog.records[-1][2].set_result(None)
    async with asyncio.timeout(5):
        await flush
