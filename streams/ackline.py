"""Acknowledging dispatch records in read order, each once the write it caused is on Kafka.

The dispatcher's order agent does not wait for an order's write (its slot, or its place in the
waiting table) before reading the next order: it hands the write and the record's acknowledgement
to an ``AckLine`` and reads on, so a burst of orders costs one round trip, not one per order. The
line acknowledges the records in the order they were read, each only once its own write has
landed: Faust commits past a lone unacknowledged offset at the head of a partition, so a gap in
the acknowledged offsets, or an acknowledgement before the write, could lose an order on a crash.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from floodgate.tasks import cancel_and_wait


class AckLine:
    """Acknowledges records in the order they were read, each once the write it caused is durable.

    ``add(message, durable, ack)``: ``durable`` is an awaitable that resolves once the record's
    write is on Kafka (``RecordTable.put_reliably_in`` sends it again until it is), or None when the
    record caused no write. Acknowledging past a write that has not landed would lose the record on
    a crash; acknowledging out of order would open a gap in the offsets Faust commits."""

    def __init__(self) -> None:
        self._items: deque[tuple[Awaitable[Any] | None, Callable[[], Awaitable[None]]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, durable: Awaitable[Any] | None, ack: Callable[[], Awaitable[None]]) -> None:
        self._items.append((durable, ack))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ack-line")

    async def _run(self) -> None:
        while True:
            while self._items:
                durable, ack = self._items[0]
                if durable is not None:
                    await durable
                self._items.popleft()
                await ack()
            self._wake.clear()
            await self._wake.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._items.clear()


__all__ = ["AckLine"]
