"""Every worker's view of how every provider's line stands, for spillover (``floodgate.spillover``).

Dispatchers publish a ``LineReport`` per dispatch partition once a second to the compacted
``lines`` topic and keep it here at once (a provider held by this worker is known without a round
trip). A plain consumer (no group: every worker reads every report) brings in the others'. One
record per partition per second, whatever the traffic: no job pays for it.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from floodgate.spillover import LineReport, Room, room_by_provider
from floodgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LineBoard:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.reports: dict[tuple[str, int], LineReport] = {}
        self.spilled: dict[str, int] = {}
        """Per provider, orders sent its way since its last report: they wait there too."""
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
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="line-reports")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _watch(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        auto_offset_reset="latest", client_id="floodgate-line-reports")
            try:
                await consumer.start()
                tp = TopicPartition(self.topic, 0)
                consumer.assign([tp])
                end = (await consumer.end_offsets([tp]))[tp]
                consumer.seek(tp, max(0, end - 1000))  # recent reports only: older ones are stale anyway
                while True:
                    batches = await consumer.getmany(timeout_ms=1000)
                    for records in batches.values():
                        for msg in records:
                            if msg.value is None:
                                continue
                            try:
                                self.put(LineReport.decode(msg.value))
                            except (ValueError, KeyError, TypeError) as exc:
                                log.warning("skipping a malformed line report at offset %s: %s", msg.offset, exc)
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                log.warning("line reports: %s; reading again in a second", exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
