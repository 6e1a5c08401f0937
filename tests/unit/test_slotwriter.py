"""Which providers' slot tables write through the worker's slot writer (streams/slotwriter.py), and
how the writer replaces a producer that failed a write; the writer itself is tested on a broker
(tests/integration/test_slot_writer.py, tests/integration/test_slot_writer_renewal.py)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

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
# pinned on the broker in tests/integration/test_slot_writer_renewal.py; here the producers are
# stand-ins, so the test can hold a record in flight on the old producer while the new one is due.

class Producers:
    """Every stand-in producer the writer made, and the records that reached "Kafka", in order."""

    def __init__(self) -> None:
        self.made: list[StandInProducer] = []
        self.landed: list[tuple[bytes, bytes | None]] = []
        self.changed = asyncio.Event()
        self.land_at_once = False
        """Whether a producer made from now on has each record land as it takes it."""

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not done():
                self.changed.clear()
                await self.changed.wait()


class StandInProducer:
    """aiokafka's producer as the writer uses it: ``send`` hands back the record's future;
    ``stop`` returns once every record it took is acknowledged or refused (its flush)."""

    def __init__(self, producers: Producers) -> None:
        self.producers = producers
        self.taken: list[tuple[bytes, bytes | None, asyncio.Future[Any]]] = []
        self.stopping = False
        self.stopped = False
        self.land_at_once = producers.land_at_once
        producers.made.append(self)
        producers.changed.set()

    async def start(self) -> None:
        pass

    async def send(self, topic: str, value: bytes | None = None, key: bytes = b"", partition: int = 0) -> Any:
        assert not self.stopping, "a record handed to a producer being stopped"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.taken.append((key, value, future))
        self.producers.changed.set()
        if self.land_at_once:
            self.land(len(self.taken) - 1)
        return future

    def land(self, index: int) -> None:
        key, value, future = self.taken[index]
        self.producers.landed.append((key, value))
        future.set_result(len(self.producers.landed) - 1)

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
    # A test that failed may leave records unsettled, and a stop would wait for them for good.
    for producer in producers.made:
        for _, _, future in producer.taken:
            if not future.done():
                future.set_exception(OutOfOrderSequenceNumber())
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
    assert old.stopped
    assert old.taken[1:] == []  # nothing after the refusal went through the old producer
    assert producers.landed == [(b"0:job", b"taken")]
    assert writer.renewals == 1


async def test_the_new_producer_sends_nothing_before_the_old_one_settled_what_it_held(producers: Producers,
                                                                                      writer: SlotWriter) -> None:
    """A key's records keep their order across the change: a record still in flight on the old
    producer (``0:b``'s first) lands, or is refused, before the new producer sends anything (its
    second). Sent at once, the second could land first, and a recovery would read the first."""
    refused = writer.send(SlotWrite("slots", 0, b"0:a", b"a1"))
    in_flight = writer.send(SlotWrite("slots", 1, b"0:b", b"b1"))
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 2)
    old = producers.made[0]
    producers.land_at_once = True  # the producers made from now on: Kafka takes their records at once
    old.refuse(0)
    with pytest.raises(OutOfOrderSequenceNumber):
        await refused
    later = writer.send(SlotWrite("slots", 1, b"0:b", b"b2"))
    await producers.until(lambda: old.stopping)
    # The loop turns in which a writer that did not wait would make a new producer and send b2
    # through it (a handful); ours waits for the old producer's stop, which waits for b1.
    for _ in range(50):
        await asyncio.sleep(0)
    assert producers.landed == []
    assert not later.done()
    old.land(1)
    await in_flight
    await later
    assert producers.landed == [(b"0:b", b"b1"), (b"0:b", b"b2")]


async def test_many_refusals_of_one_producer_replace_it_once(producers: Producers, writer: SlotWriter) -> None:
    writes = [writer.send(SlotWrite("slots", 0, f"0:job-{i}".encode(), b"v")) for i in range(3)]
    await producers.until(lambda: len(producers.made) == 1 and len(producers.made[0].taken) == 3)
    for index in range(3):
        producers.made[0].refuse(index)
    await asyncio.wait(writes)
    assert writer.renewals == 1
    assert producers.made[0].stopped


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
