"""Sending records from agents: encode with our Avro codec, send straight away.

``force=True`` matters: by default a send inside an agent is *attached* to the source event and
published only at the next offset commit (up to ``broker_commit_interval`` later), which would
add seconds per hop. Faust flushes the producer before it commits offsets, so sending now keeps
at-least-once delivery.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import faust

from floodgate import codec
from floodgate.dead_letter import dead_letter_record


class Emitter:
    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._topics: dict[str, faust.TopicT] = {}

    def topic(self, name: str, partitions: int | None = None) -> faust.TopicT:
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = self.app.topic(name, partitions=partitions, key_type=bytes, value_type=bytes)
        return t

    async def send(self, topic: str, schema: str, key: str | None, record: dict[str, Any]) -> None:
        await self._send(topic, schema, key, record)

    async def _send(self, topic: str, schema: str, key: str | None, record: dict[str, Any]) -> Awaitable[Any]:
        """Hand the record to the producer; returns the future of its acknowledgement."""
        value, headers = codec.encode(schema, record)
        return await self.topic(topic).send(key=key.encode() if key is not None else None, value=value,
                                            headers=headers, force=True)

    async def send_durably(self, topic: str, schema: str, key: str | None, record: dict[str, Any]) -> None:
        """``send``, returning once Kafka acknowledged the record."""
        await (await self._send(topic, schema, key, record))

    async def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        """A record that is not one of our Avro contracts (e.g. a line report, JSON)."""
        await self.topic(topic).send(key=key, value=value, force=True)

    async def dead_letter(self, topic: str, message: Any, reason: str, exc: BaseException | None) -> None:
        """Park a record we cannot process, with the reason and the original bytes; never raises."""
        record = dead_letter_record(message, reason, exc, at_ms=int(time.time() * 1000))
        await self.send(topic, "DeadLetter", None, record)
