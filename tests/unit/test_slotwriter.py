"""Which providers' slot tables write through the worker's slot writer (streams/slotwriter.py), and
how the writer replaces a producer that failed a write; the writer itself is tested on a broker
(tests/integration/test_slot_writer.py, tests/integration/test_slot_writer_renewal.py)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber

from floodgate.errors import ConfigError
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings
from streams import slotwriter
from streams.app import create_app
from streams.context import Pipeline
from streams.dispatcher import Dispatcher
from streams.slotwriter import SlotWrite, SlotWriter, writes_alone


@pytest.mark.parametrize(("limit", "max_limit", "alone"), [
    (5, 50, True), (50, 50, True), (51, 50, False), (500, 50, False), (5, 0, False)])
def test_a_provider_writes_alone_up_to_the_configured_limit(limit: int, max_limit: int, alone: bool) -> None:
    assert writes_alone(limit, max_limit) is alone


def _settings(tmp_path: Path, slot_producer_limit: int) -> Settings:
    return Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                simulator_url="http://127.0.0.1:9",
                                                slot_producer_limit=slot_producer_limit)


@pytest.mark.parametrize(("slot_producer_limit", "through_writer"), [(10, True), (9, False)])
async def test_every_table_of_a_lane_writes_through_the_same_producer(tmp_path: Path, slot_producer_limit: int,
                                                                      through_writer: bool) -> None:
    """All or none of a lane's tables: a key's records (a waiting order, its slot, the slot's
    deletion) must keep their order, and two producers would not keep it."""
    settings = _settings(tmp_path, slot_producer_limit)
    app = create_app(settings, datadir=tmp_path / "w0")
    setup = dev_setup(settings.simulator_url)  # every provider's limit is 10
    pipe = Pipeline(app, settings, setup, setup.build_connectors())
    lane = Dispatcher(pipe, "wan").lane
    expected = app.slot_writer if through_writer else None
    assert app.slot_writer is not None
    assert [t.writer for t in (lane.entries, lane.old_waiting, lane.marks)] == [expected] * 3
    assert app.slot_writer.enlisted is through_writer
    await pipe.close()


def test_no_writer_at_all_when_the_limit_is_zero(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, 0), datadir=tmp_path / "w0")
    assert app.slot_writer is None


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="SLOT_PRODUCER_LIMIT"):
        Settings.from_env({"FLOODGATE_SLOT_PRODUCER_LIMIT": "-1"})


# --- a producer that failed a write is replaced ----------------------------------------------------
# aiokafka's real behaviour (a refused batch spends its partition's batch numbers for good) is
# pinned on the broker in tests/integration/test_slot_writer_renewal.py, and the writer is run with
# aiokafka's producer against a stand-in broker in tests/unit/test_slotwriter_aiokafka.py; here the
# producers are stand-ins, so a test can hold a record in flight on the old producer while the new
# one is due.

MAX_REQUEST = 64
"""The stand-in producer's ``max_request_size``: a larger record is refused by ``send`` itself."""


class Producers:
    """Every stand-in producer the writer made, and the records that reached "Kafka", in order."""

    def __init__(self) -> None:
        self.made: list[StandInProducer] = []
        self.landed: list[tuple[bytes, bytes | None]] = []
        self.changed = asyncio.Event()
        self.land_at_once = False
        """Whether every record lands as soon as a producer takes it."""
        self.connecting: asyncio.Future[None] | None = None
        """Set: every ``start`` waits for it (a broker that does not answer)."""
        self.returning: dict[bytes, asyncio.Future[None]] = {}
        """Per key: ``send`` takes the record, then returns only once this is set."""

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not done():
                self.changed.clear()
                await self.changed.wait()


class StandInProducer:
    """aiokafka's producer as the writer uses it: ``send`` hands back the record's future (or
    raises, for a record over ``MAX_REQUEST``, before taking it); ``stop`` returns once every
    record it took is acknowledged or refused (its flush)."""

    def __init__(self, producers: Producers) -> None:
        self.producers = producers
        self.taken: list[tuple[bytes, bytes | None, asyncio.Future[Any]]] = []
        self.started = False
        self.stopping = False
        self.stopped = False
        producers.made.append(self)
        producers.changed.set()

    async def start(self) -> None:
        self.started = True
        self.producers.changed.set()
        if self.producers.connecting is not None:
            await self.producers.connecting

    async def send(self, topic: str, value: bytes | None = None, key: bytes = b"", partition: int = 0) -> Any:
        if value is not None and len(value) > MAX_REQUEST:
            raise MessageSizeTooLargeError("larger than max_request_size")
        assert not self.stopping, "a record handed to a producer being stopped"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.taken.append((key, value, future))
        self.producers.changed.set()
        if self.producers.land_at_once:
            self.land(len(self.taken) - 1)
        if (returning := self.producers.returning.get(key)) is not None:
            await returning
        return future

    def keys(self) -> list[bytes]:
        return [key for key, _, _ in self.taken]

    def land(self, index: int) -> None:
        key, value, future = self.taken[index]
        self.producers.landed.append((key, value))
        future.set_result(len(self.producers.landed) - 1)
        self.producers.changed.set()

    def refuse(self, index: int) -> None:
        self.taken[index][2].set_exception(OutOfOrderSequenceNumber())

    async def stop(self) -> None:
        self.stopping = True
        self.producers.changed.set()
        unsettled = [future for _, _, future in self.taken if not future.done()]
        if unsettled:
            await asyncio.wait(unsettled)
        self.stopped = True
        self.producers.changed.set()


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> Producers:
    made = Producers()
    monkeypatch.setattr(slotwriter, "AIOKafkaProducer", lambda **_: StandInProducer(made))
    return made


@pytest.fixture
async def writer(producers: Producers) -> AsyncIterator[SlotWriter]:
    made = SlotWriter("stand-in:9092")
    yield made
    # A test that failed may leave records unsettled, and a stop would wait for them for good:
    # refused, and those taken from now on land at once.
    producers.land_at_once = True
    for producer in producers.made:
        for _, _, future in producer.taken:
            if not future.done():
                future.set_exception(OutOfOrderSequenceNumber())
    if producers.connecting is not None and not producers.connecting.done():
        producers.connecting.set_result(None)
    for returning in producers.returning.values():
        if not returning.done():
            returning.set_result(None)
    async with asyncio.timeout(5):
        await made.stop()


async def test_a_write_sent_again_after_a_refusal_goes_through_a_new_producer(producers: Producers,
                                                                              writer: SlotWriter) -> None:
    """The refused record's producer has spent the partition's batch numbers: the resend (what
    ``RecordTable`` does for a refused changelog record) must not go through it, or it is refused
    again for as long as the worker lives, and the worker's flush waits for it that long."""
    first = writer.send(SlotWrite("slots", 0, b"0:job", b"taken"))
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 1)
    old = producers.made[0]
    old.refuse(0)
    with pytest.raises(OutOfOrderSequenceNumber):
        await first
    again = writer.send(SlotWrite("slots", 0, b"0:job", b"taken"))
    await producers.until(lambda: len(producers.made) == 2 and len(producers.made[1].taken) == 1)
    producers.made[1].land(0)
    await again
    await producers.until(lambda: old.stopped)
    assert old.taken[1:] == []  # nothing after the refusal went through the old producer
    assert producers.landed == [(b"0:job", b"taken")]
    assert writer.renewals == 1


async def test_after_a_renewal_only_the_partitions_the_old_producer_holds_records_of_wait(
        producers: Producers, writer: SlotWriter) -> None:
    """A key's records keep their order across the change: ``0:b``'s first record, still in flight
    on the old producer (partition 1, its leader short of replicas, say: aiokafka retries that
    without end), lands or is refused before its second goes out through the new producer. The
    other partitions do not wait for it: the refused record sent again (partition 0, where the old
    producer holds nothing more) and a slot on partition 2 go out at once. Before, every write
    waited for the old producer's stop, so one sick partition held up all of a provider's slots."""
    refused = writer.send(SlotWrite("slots", 0, b"0:a", b"a1"))
    in_flight = writer.send(SlotWrite("slots", 1, b"0:b", b"b1"))
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 2)
    old = producers.made[0]
    old.refuse(0)
    with pytest.raises(OutOfOrderSequenceNumber):
        await refused
    later = writer.send(SlotWrite("slots", 1, b"0:b", b"b2"))
    again = writer.send(SlotWrite("slots", 0, b"0:a", b"a1"))
    other = writer.send(SlotWrite("slots", 2, b"0:c", b"c1"))
    await producers.until(lambda: len(producers.made) == 2 and len(producers.made[1].taken) == 2)
    new = producers.made[1]
    # Taken in the order handed over, so b2 (handed over first) would be among them by now.
    assert new.keys() == [b"0:a", b"0:c"]
    new.land(0)
    new.land(1)
    await again
    await other
    assert not later.done()
    assert not old.stopped
    old.land(1)  # the partition's leader has its replicas back
    await producers.until(lambda: len(new.taken) == 3)
    new.land(2)
    await in_flight
    await later
    assert producers.landed == [(b"0:a", b"a1"), (b"0:c", b"c1"), (b"0:b", b"b1"), (b"0:b", b"b2")]
    await producers.until(lambda: old.stopped)


async def test_a_record_taken_by_a_producer_as_it_was_retired_holds_its_partition_too(
        producers: Producers, writer: SlotWriter) -> None:
    """The writer knows a record is the producer's once ``send`` returned; the producer can fail
    another write in between (the record is then taken by a producer already retired), and that
    record's partition waits for it like the others."""
    refused = writer.send(SlotWrite("slots", 0, b"0:a", b"a1"))
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 1)
    old = producers.made[0]
    returning = producers.returning[b"0:b"] = asyncio.get_running_loop().create_future()
    taken = writer.send(SlotWrite("slots", 1, b"0:b", b"b1"))
    await producers.until(lambda: len(old.taken) == 2)  # taken; its send has not returned yet
    old.refuse(0)
    with pytest.raises(OutOfOrderSequenceNumber):
        await refused
    assert writer.renewals == 1
    returning.set_result(None)
    later = writer.send(SlotWrite("slots", 1, b"0:b", b"b2"))
    writer.send(SlotWrite("slots", 2, b"0:c", b"c1"))
    await producers.until(lambda: len(producers.made) == 2 and len(producers.made[1].taken) == 1)
    new = producers.made[1]
    assert new.keys() == [b"0:c"]  # not b2, handed over before it
    old.land(1)
    await taken
    await producers.until(lambda: len(new.taken) == 2)
    new.land(1)
    await later
    assert new.keys() == [b"0:c", b"0:b"]
    assert producers.landed == [(b"0:b", b"b1"), (b"0:b", b"b2")]


async def test_many_refusals_of_one_producer_replace_it_once(producers: Producers, writer: SlotWriter) -> None:
    writes = [writer.send(SlotWrite("slots", 0, f"0:job-{i}".encode(), b"v")) for i in range(3)]
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 3)
    for index in range(3):
        producers.made[0].refuse(index)
    await asyncio.wait(writes)
    assert writer.renewals == 1
    await producers.until(lambda: producers.made[0].stopped)


async def test_after_a_refusal_each_refused_key_goes_alone_until_it_lands(producers: Producers,
                                                                          writer: SlotWriter) -> None:
    """Kafka refuses a batch whole: records of other keys that shared one with a record it will
    never take (too large for the topic, say) are refused with it, and ``RecordTable`` sends them
    all again on the same tick. Through one producer they would share a batch again, and be refused
    again on every tick. A refused key goes alone until a record of it lands (its partition's other
    writes wait for the answer), whatever is written meanwhile: a key never refused is batched as
    ever, and a partition Kafka refused nothing of is not held up."""
    keys = [b"0:big", b"0:a", b"0:b", b"0:c"]
    first = [writer.send(SlotWrite("slots", 0, key, b"v")) for key in keys]
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == len(keys))
    for index in range(len(keys)):  # one batch, refused whole
        producers.made[0].refuse(index)
    await asyncio.wait(first)
    assert writer.renewals == 1

    fresh = writer.send(SlotWrite("slots", 0, b"0:x", b"v"))  # a handover meanwhile, of a key never refused
    await producers.until(lambda: len(producers.made) == 2 and len(producers.made[1].taken) == 1)
    second = producers.made[1]
    second.land(0)
    await fresh
    again = [writer.send(SlotWrite("slots", 0, key, b"v")) for key in keys]
    elsewhere = writer.send(SlotWrite("slots", 1, b"1:d", b"v"))
    await producers.until(lambda: len(second.taken) >= 3)
    assert second.keys() == [b"0:x", b"0:big", b"1:d"]  # the others of partition 0 wait for 0:big's answer
    second.land(2)
    await elsewhere
    second.refuse(1)  # never taken
    with pytest.raises(OutOfOrderSequenceNumber):
        await again[0]
    assert writer.renewals == 2
    await producers.until(lambda: len(producers.made) == 3 and len(producers.made[2].taken) >= 1)
    third = producers.made[2]
    for index, key in enumerate(keys[1:]):  # each alone: any of them might be refused as well
        def taken(count: int = index + 1) -> bool:
            return len(third.taken) == count

        await producers.until(taken)
        assert third.keys()[index] == key
        third.land(index)
        assert await again[1 + index] == len(producers.landed) - 1
    batched = [writer.send(SlotWrite("slots", 0, key, b"w")) for key in (b"0:a", b"0:b")]
    await producers.until(lambda: len(third.taken) == 5)  # landed since: together again, before any answer
    third.land(3)
    third.land(4)
    await asyncio.wait(batched)
    assert [key for key, _ in producers.landed] == [b"0:x", b"1:d", b"0:a", b"0:b", b"0:c", b"0:a", b"0:b"]
    assert writer.renewals == 2


async def test_a_record_too_large_for_the_producer_costs_no_renewal(producers: Producers,
                                                                    writer: SlotWriter) -> None:
    """aiokafka refuses a record over its ``max_request_size`` in ``send``, before it takes
    anything: the producer is fine, and a new one would refuse the record too. Sent again every
    second for as long as it is owed, each refusal would cost a new producer, one per such record
    of a tick."""
    too_large = [writer.send(SlotWrite("slots", 0, f"0:big-{i}".encode(), b"x" * (MAX_REQUEST + 1)))
                 for i in range(2)]
    fits = writer.send(SlotWrite("slots", 0, b"0:a", b"v"))
    await producers.until(lambda: any(p.taken for p in producers.made))
    for write in too_large:
        with pytest.raises(MessageSizeTooLargeError):
            await write
    assert writer.renewals == 0
    assert len(producers.made) == 1
    producers.made[0].land(0)
    await fits


async def test_a_stop_waits_for_the_replaced_producer_to_stop(producers: Producers, writer: SlotWriter) -> None:
    refused = writer.send(SlotWrite("slots", 0, b"0:a", b"a1"))
    held = writer.send(SlotWrite("slots", 1, b"0:b", b"b1"))
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 2)
    old = producers.made[0]
    old.refuse(0)
    await asyncio.wait([refused])
    stopping = asyncio.ensure_future(writer.stop())
    await producers.until(lambda: old.stopping)
    assert not stopping.done()
    old.land(1)
    await stopping
    assert held.result() == 0
    assert old.stopped


async def test_a_stop_closes_a_producer_still_connecting(producers: Producers, writer: SlotWriter) -> None:
    """A start can wait for the broker for good (aiokafka's waits for a producer id until it has
    one): ``stop`` cuts it short, and returns once that producer is closed, not before."""
    producers.connecting = asyncio.get_running_loop().create_future()  # never set: no answer
    starting = asyncio.ensure_future(writer.start())
    await producers.until(lambda: len(producers.made) == 1 and producers.made[0].started)
    await writer.stop()
    assert producers.made[0].stopped
    with pytest.raises(asyncio.CancelledError):  # its caller hears the start was cut short
        await starting


async def test_a_stopped_writer_is_not_started_again(producers: Producers, writer: SlotWriter) -> None:
    """The worker starts the writer once and stops it once, with Faust's producer
    (``streams/app.py``). A start after the stop raises, as a write does, rather than connect a
    producer that takes no write and that nothing would stop."""
    await writer.start()
    await writer.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await writer.start()
    assert len(producers.made) == 1
    assert producers.made[0].stopped
