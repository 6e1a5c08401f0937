"""The line board's reader (``streams.lines``), fed by a stand-in consumer: no Kafka. A record on
``lines`` that is not a report is passed over; the reports behind it are still kept, and a reader
that fails reads again instead of leaving spillover with reports that only grow stale."""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from floodgate.spillover import LineReport
from streams.lines import LineBoard

TOPIC = "floodgate.lines"
DEADLINE = 5.0


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes | None


class Consumer:
    """Hands out ``batches`` one per ``getmany`` (an exception in their place is raised there),
    then waits like a consumer with nothing new, having set ``drained``."""

    def __init__(self, *batches: list[Record] | Exception) -> None:
        self.batches = deque(batches)
        self.drained = asyncio.Event()
        self.stops = 0

    async def start(self) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert partitions == [TopicPartition(TOPIC, 0)]

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        pass

    async def getmany(self, *, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        if not self.batches:
            self.drained.set()
            await asyncio.Event().wait()  # until the board stops
        batch = self.batches.popleft()
        if isinstance(batch, Exception):
            raise batch
        return {TopicPartition(TOPIC, 0): batch}

    async def stop(self) -> None:
        self.stops += 1


def report(provider: str, at: float) -> LineReport:
    return LineReport(provider, 0, free_slots=2, waiting=1, start_rate=None, at=at)


async def test_a_report_after_records_that_are_not_reports_is_still_kept(caplog: pytest.LogCaptureFixture) -> None:
    bad = [b"null", b"5", b'"x"', b"[1]", b"{not json"]
    records = [Record(n, raw) for n, raw in enumerate(bad)]
    consumer = Consumer([*records, Record(5, None), Record(6, report("wan", 1.0).encode())],
                        [Record(7, b"null"), Record(8, report("kling", 2.0).encode())])
    connects = []

    def connect() -> Consumer:
        connects.append(consumer)
        return consumer

    board = LineBoard("unused:9092", TOPIC, connect=connect)
    with caplog.at_level(logging.WARNING, logger="streams.lines"):
        board.start()
        try:
            await asyncio.wait_for(consumer.drained.wait(), DEADLINE)
            assert board.reports == {("wan", 0): report("wan", 1.0), ("kling", 0): report("kling", 2.0)}
            assert len(connects) == 1 and consumer.stops == 0, "read on, not started over"
            assert board.skipped == 6, "a tombstone is not a bad record"
            assert len([r for r in caplog.records if "not a report" in r.getMessage()]) == 6
        finally:
            await board.stop()
    assert consumer.stops == 1


async def test_a_reader_that_fails_reads_again() -> None:
    first = Consumer(RuntimeError("not a KafkaError"))
    second = Consumer([Record(0, report("wan", 1.0).encode())])
    consumers = deque([first, second])
    board = LineBoard("unused:9092", TOPIC, connect=consumers.popleft, retry_after=0.0)
    board.start()
    try:
        await asyncio.wait_for(second.drained.wait(), DEADLINE)
        assert board.reports == {("wan", 0): report("wan", 1.0)}
        assert first.stops == 1
    finally:
        await board.stop()


async def test_a_reader_that_ended_is_started_again_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer([Record(0, report("wan", 1.0).encode())])
    outcomes: deque[Consumer | Exception] = deque([RuntimeError("no consumer"), consumer])

    def connect() -> Consumer:
        outcome = outcomes.popleft()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    board = LineBoard("unused:9092", TOPIC, connect=connect)
    with caplog.at_level(logging.ERROR, logger="streams.lines"):
        board.start()
        ended = board._task
        assert ended is not None
        await asyncio.wait({ended}, timeout=DEADLINE)
        assert ended.done()
        board.start()  # the dispatcher's next tick
        try:
            await asyncio.wait_for(consumer.drained.wait(), DEADLINE)
            assert board.reports == {("wan", 0): report("wan", 1.0)}
            assert any("starting it again" in r.getMessage() and "no consumer" in r.getMessage()
                       for r in caplog.records)
        finally:
            await board.stop()
