"""Stream partitions resumed during a rebalance wait for the seek to committed offsets
(``streams.faust_fixes``: Faust resumes them first, and records in between are lost)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams.faust_fixes import hold_streams_until_seek

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


def test_a_failed_seek_still_resumes_what_it_held() -> None:
    failing = FakeConsumer()

    async def broken_seek() -> None:
        raise TimeoutError("broker did not answer")

    failing.perform_seek = broken_seek  # type: ignore[method-assign]
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
