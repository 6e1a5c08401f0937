"""Every worker's view of how every provider's line stands, for spillover (``floodgate.spillover``).

Dispatchers publish a ``LineReport`` per dispatch partition once a second to the compacted
``lines`` topic and keep it here at once (a provider held by this worker is known without a round
trip). A plain consumer (no group: every worker reads every report) brings in the others'. One
record per partition per second, whatever the traffic: no job pays for it.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from floodgate.spillover import LineReport, Room, room_by_provider
from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ReportConsumer(Protocol):
    """What the board uses of an ``AIOKafkaConsumer`` (tests pass one that yields records they made)."""

    async def start(self) -> None: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    async def getmany(self, *, timeout_ms: int) -> dict[TopicPartition, list[Any]]: ...

    async def stop(self) -> None: ...


class LineBoard:
    def __init__(self, bootstrap: str, topic: str, connect: Callable[[], ReportConsumer] | None = None,
                 retry_after: float = 1.0) -> None:
        """``connect``: a new consumer of ``topic`` (default: a group-less ``AIOKafkaConsumer`` of
        ``bootstrap``), made again after an error, ``retry_after`` seconds later."""
        self.bootstrap, self.topic = bootstrap, topic
        self.reports: dict[tuple[str, int], LineReport] = {}
        self.spilled: dict[str, int] = {}
        """Per provider, orders sent its way since its last report: they wait there too."""
        self.skipped = 0
        """Records on ``lines`` that were not a report (each logged once, then passed over)."""
        self._connect = connect or self._consumer
        self._retry_after = retry_after
        self._task: asyncio.Task[None] | None = None

    def put(self, report: LineReport) -> None:
        """Keep ``report`` if it is newer than the one held for its provider partition."""
        key = (report.provider, report.partition)
        held = self.reports.get(key)
        if held is None or report.at > held.at:
            self.reports[key] = report
            self.spilled.pop(report.provider, None)

    def room(self, now: float) -> dict[str, Room]:
        """How each provider stands: what its fresh reports show, with what was spilled to it since."""
        room = room_by_provider(self.reports.values(), now)
        return {provider: Room(held.free_slots, held.waiting + self.spilled.get(provider, 0), held.start_rate)
                for provider, held in room.items()}

    def took(self, provider: str) -> None:
        self.spilled[provider] = self.spilled.get(provider, 0) + 1

    def start(self) -> None:
        """Read the others' reports in the background. Called on every dispatcher tick: a reader
        that ended (it should not: it logs every error and reads again) is logged and started again,
        since spillover would otherwise go on with reports that only grow stale."""
        task = self._task
        if task is not None and not task.done():
            return
        if task is not None:
            error = None if task.cancelled() else task.exception()
            log.error("line reports: the reader ended (%r); starting it again", error)
        self._task = asyncio.create_task(self._watch(), name="line-reports")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def _consumer(self) -> ReportConsumer:
        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="latest", client_id="floodgate-line-reports")

    async def _watch(self) -> None:
        while True:
            consumer = self._connect()
            try:
                await self._read(consumer)
            except KafkaError as exc:
                log.warning("line reports: %s; reading again in %ss", exc, self._retry_after)
            except Exception:  # not one to end the reader on: spillover would silently go stale
                log.exception("line reports: reading failed; reading again in %ss", self._retry_after)
            finally:
                await consumer.stop()
            await asyncio.sleep(self._retry_after)

    async def _read(self, consumer: ReportConsumer) -> None:
        await consumer.start()
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, max(0, end - 1000))  # recent reports only: older ones are stale anyway
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for msg in records:
                    self._take_in(msg.offset, msg.value)

    def _take_in(self, offset: int, value: bytes | None) -> None:
        """Keep the report in one record; a record that is not one is logged and passed over, so
        that one bad record never stops the reports behind it."""
        if value is None:  # a tombstone: nothing to say
            return
        try:
            report = LineReport.decode(value)
        except ValueError as exc:
            self.skipped += 1
            log.warning("line reports: skipping a record that is not a report at offset %s: %s", offset, exc)
            return
        self.put(report)
