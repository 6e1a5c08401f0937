"""Faust tables holding JSON documents as raw bytes.

Faust rebuilds table values on recovery through ``value_type.from_data``, which plain ``dict``
lacks (recovery then fails, record by record); storing orjson bytes with ``value_type=bytes``
uses the raw codec both ways and is faster than Faust's json codec besides.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
import orjson
from faust.types.tuples import FutureMessage


class JsonTable:
    def __init__(self, app: faust.App, name: str, *, partitions: int, **options: Any) -> None:
        """``options``: more ``app.Table`` arguments (a ``store``: default the app's, memory). Only a
        memory-backed table may be written outside an agent's event (``put_in``/``remove_in``)."""
        self.table = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes, **options)

    def get(self, key: bytes) -> dict[str, Any] | None:
        raw = self.table.get(key)
        return None if raw is None else orjson.loads(raw)

    def __setitem__(self, key: bytes, value: dict[str, Any]) -> None:
        self.table[key] = orjson.dumps(value)

    def put_in(self, partition: int, key: bytes, value: dict[str, Any]) -> FutureMessage:
        """Set ``key`` from outside an agent's event (a background task), naming the changelog
        partition that Faust would otherwise take from the event being processed."""
        raw = orjson.dumps(value)
        self.table.data[key] = raw
        return self.table.send_changelog(partition, key, raw)

    async def put_durably_in(self, partition: int, key: bytes, value: dict[str, Any]) -> None:
        """``put_in``, returning once the changelog record is acknowledged by Kafka."""
        await self.put_in(partition, key, value)

    def remove_in(self, partition: int, key: bytes) -> None:
        """Delete ``key`` from outside an agent's event (see ``put_in``)."""
        if key in self.table.data:
            del self.table.data[key]
            self.table.send_changelog(partition, key, None, value_serializer="raw")

    def __delitem__(self, key: bytes) -> None:
        del self.table[key]

    def __contains__(self, key: bytes) -> bool:
        return key in self.table

    def items(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        for key, raw in list(self.table.items()):
            yield key, orjson.loads(raw)

    def values(self) -> Iterator[dict[str, Any]]:
        for _, value in self.items():
            yield value
