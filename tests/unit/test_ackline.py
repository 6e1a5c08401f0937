"""The dispatcher's ack line (``streams.ackline``): records acknowledged in read order, each once its
write landed. No broker: the writes are futures the test resolves."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from streams.ackline import AckLine


async def turns(n: int = 20) -> None:
    """Let every task that can run do so (the line's own among them)."""
    for _ in range(n):
        await asyncio.sleep(0)


def recorder(acked: list[int], n: int) -> Callable[[], Awaitable[None]]:
    async def ack() -> None:
        acked.append(n)
    return ack


async def test_the_ack_line_acknowledges_in_read_order_once_each_write_landed() -> None:
    line = AckLine()
    acked: list[int] = []
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    line.add(first, recorder(acked, 1))
    line.add(None, recorder(acked, 2))  # caused no write, but comes after 1
    line.add(second, recorder(acked, 3))
    second.set_result(None)
    await turns()
    assert acked == [], "nothing is acknowledged past a write that has not landed"
    assert len(line) == 3
    first.set_result(None)
    await turns()
    assert acked == [1, 2, 3] and len(line) == 0
    await line.stop()


async def test_records_added_after_the_line_went_idle_are_acknowledged_too() -> None:
    line = AckLine()
    acked: list[int] = []
    line.add(None, recorder(acked, 1))
    await turns()
    assert acked == [1]
    landed = asyncio.get_running_loop().create_future()
    line.add(landed, recorder(acked, 2))
    landed.set_result(None)
    await turns()
    assert acked == [1, 2]
    await line.stop()
    assert len(line) == 0
