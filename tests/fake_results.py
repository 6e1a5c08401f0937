"""``results`` as a service that reads it with its own aiokafka consumer sees it (the outgoing
webhooks, the pushes, the video copier): records per partition (more may be added), pausing,
``max_records``, and commits, each checked as it happens against what the test says is done."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener


class FakeResults:
    """``done(record)``: whether the service may commit past ``record`` (delivered, copied,
    recorded). A commit past a record not done is a violation, kept in ``violations``;
    ``changed`` (if given) is set at every commit."""

    def __init__(self, topic: str, log: dict[int, list[ConsumerRecord[Any, Any]]],
                 done: Callable[[ConsumerRecord[Any, Any]], bool], changed: asyncio.Event | None = None) -> None:
        self.topic = topic
        self.log = log
        self.position = dict.fromkeys(log, 0)
        self.paused_now: set[TopicPartition] = set()
        self.committed: dict[int, int] = {}
        self.commits = 0
        self.violations: list[str] = []
        self._done = done
        self._changed = changed
        self._listener: ConsumerRebalanceListener | None = None

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self._listener = listener

    async def start(self) -> None:
        assert self._listener is not None
        await self._listener.on_partitions_assigned(self.assignment())

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(self.topic, p) for p in self.log}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_now.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_now.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[
            TopicPartition, list[ConsumerRecord[Any, Any]]]:
        left = max_records or 1_000_000
        batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for partition in sorted(self.log):
            tp = TopicPartition(self.topic, partition)
            if tp in self.paused_now or left <= 0:
                continue
            records = self.log[partition][self.position[partition]:self.position[partition] + left]
            if records:
                batch[tp] = records
                self.position[partition] += len(records)
                left -= len(records)
        # A broker's idle fetch, shortened; not a sync point. (aiokafka yields to the loop either way.)
        await asyncio.sleep(0 if batch else min(timeout_ms, 5) / 1000)
        return batch

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        for tp, offset in offsets.items():
            undone = [r.offset for r in self.log[tp.partition][:offset] if not self._done(r)]
            if undone:
                self.violations.append(f"committed {offset} of partition {tp.partition} before {undone[:3]}")
            self.committed[tp.partition] = offset
        if self._changed is not None:
            self._changed.set()
