"""Ending a service's background task: cancelled, awaited to its end, the cancellation swallowed."""
from __future__ import annotations

import asyncio

from floodgate.tasks import cancel_and_wait


async def test_a_task_is_cancelled_and_has_ended_when_the_call_returns() -> None:
    ended: list[str] = []
    running = asyncio.Event()

    async def forever() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("cleaned up")

    task = asyncio.create_task(forever())
    await running.wait()  # a task cancelled before it runs has nothing to clean up
    await cancel_and_wait(task)
    assert task.cancelled() and ended == ["cleaned up"]


async def test_none_and_a_finished_task_are_nothing_to_do() -> None:
    await cancel_and_wait(None)
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert task.done() and not task.cancelled()
