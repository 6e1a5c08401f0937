"""Stream partitions resumed during a rebalance wait for the seek to committed offsets
(``streams.faust_fixes``: Faust resumes them first, and records in between are lost)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.faust_fixes import StallWatch, check_stalls, hold_streams_until_seek

STREAM_0, STREAM_1, CHANGELOG = TP("dispatch", 0), TP("dispatch", 1), TP("app-jobs-changelog", 0)


class FakeConsumer:
    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.calls: list[str] = []
        self.assigned = {STREAM_0, STREAM_1, CHANGELOG}

    def resume_partitions(self, tps: set[TP]) -> None:
        self.calls.append(f"resume {sorted(tp.topic + str(tp.partition) for tp in tps)}")
        self.active |= set(tps)

    async def perform_seek(self) -> None:
        self.calls.append(f"seek while active {sorted(tp.topic + str(tp.partition) for tp in self.active)}")

    def assignment(self) -> set[TP]:
        return self.assigned


def _patched(rebalancing: bool) -> tuple[FakeConsumer, SimpleNamespace]:
    app = SimpleNamespace(rebalancing=rebalancing, tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    consumer = FakeConsumer()
    # arg-type here and below: a SimpleNamespace stands in for faust.App
    hold_streams_until_seek(app, consumer)  # type: ignore[arg-type]
    return consumer, app


def test_during_a_rebalance_streams_resume_only_after_the_seek() -> None:
    consumer, _ = _patched(rebalancing=True)
    consumer.resume_partitions({STREAM_0, STREAM_1, CHANGELOG})
    assert consumer.active == {CHANGELOG}, "changelogs resume at once, streams wait"
    asyncio.run(consumer.perform_seek())
    assert consumer.active == {STREAM_0, STREAM_1, CHANGELOG}
    # The seek ran while no stream partition was active: nothing was handed out from before it.
    assert consumer.calls[1] == "seek while active ['app-jobs-changelog0']", consumer.calls


def test_a_partition_lost_before_the_seek_is_not_resumed() -> None:
    consumer, _ = _patched(rebalancing=True)
    consumer.resume_partitions({STREAM_0, STREAM_1})
    consumer.assigned = {STREAM_0}  # another rebalance took partition 1 away meanwhile
    asyncio.run(consumer.perform_seek())
    assert consumer.active == {STREAM_0}


class FailingSeekConsumer(FakeConsumer):
    async def perform_seek(self) -> None:
        raise TimeoutError("broker did not answer")


def test_a_failed_seek_still_resumes_what_it_held() -> None:
    failing = FailingSeekConsumer()
    app = SimpleNamespace(rebalancing=True, tables=SimpleNamespace(changelog_topics=set()))
    hold_streams_until_seek(app, failing)  # type: ignore[arg-type]
    failing.resume_partitions({STREAM_0})
    with pytest.raises(TimeoutError):
        asyncio.run(failing.perform_seek())
    assert failing.active == {STREAM_0}, "no worse than Faust's own order: never left paused"


def test_outside_a_rebalance_resume_is_untouched() -> None:
    consumer, _ = _patched(rebalancing=False)
    consumer.resume_partitions({STREAM_0})
    assert consumer.active == {STREAM_0}


# --- the stall watch ---------------------------------------------------------------------


def test_a_partition_with_records_and_no_progress_is_reported_once_per_period() -> None:
    watch = StallWatch(stall_after=30)
    assert not watch.observe(STREAM_0, read=21, end=60, now=0)
    assert not watch.observe(STREAM_0, read=21, end=60, now=29)
    assert watch.observe(STREAM_0, read=21, end=61, now=30)
    assert not watch.observe(STREAM_0, read=21, end=61, now=45), "the clock started again"
    assert watch.observe(STREAM_0, read=21, end=61, now=60)


def test_progress_or_an_empty_backlog_is_not_a_stall() -> None:
    watch = StallWatch(stall_after=30)
    for now, read in ((0, 10), (20, 11), (40, 12), (60, 13)):  # slow but moving
        assert not watch.observe(STREAM_0, read=read, end=100, now=now)
    for now in (0, 40, 80):  # idle because everything was read
        assert not watch.observe(STREAM_1, read=99, end=100, now=now)
    assert not watch.observe(TP("x", 0), read=None, end=0, now=0)
    assert not watch.observe(TP("x", 0), read=None, end=0, now=100), "an empty partition"
    assert watch.observe(TP("y", 0), read=None, end=5, now=0) is False
    assert watch.observe(TP("y", 0), read=None, end=5, now=31), "records never handed out at all"


class StallConsumer(FakeConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.active = {STREAM_0, STREAM_1}
        self._read_offset = {STREAM_0: 21, STREAM_1: 40}
        self._committed_offset = {STREAM_0: 22, STREAM_1: 41}
        self.sought: list[tuple[TP, int]] = []

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {STREAM_0: 60, STREAM_1: 41, CHANGELOG: 99}

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


def test_a_stalled_partition_is_sought_back_to_its_committed_offset() -> None:
    consumer = StallConsumer()
    app = SimpleNamespace(consumer=consumer, tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    watch = StallWatch(stall_after=30)
    assert asyncio.run(check_stalls(app, watch, now=0)) == []  # type: ignore[arg-type]
    assert asyncio.run(check_stalls(app, watch, now=31)) == [STREAM_0]  # type: ignore[arg-type]
    assert consumer.sought == [(STREAM_0, 22)], "partition 1 is idle because it was read to its end"
    consumer.active = {STREAM_1}  # paused on purpose (a full buffer, a waiting line): never a stall
    assert asyncio.run(check_stalls(app, watch, now=100)) == []  # type: ignore[arg-type]
