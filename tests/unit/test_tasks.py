"""Ending a service's background task: cancelled, awaited to its end, the cancellation swallowed;
and a polling thread, told to stop and joined without blocking the loop."""
from __future__ import annotations

import asyncio
import threading

from floodgate.tasks import PollThread, cancel_and_wait


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


async def test_a_poll_thread_gets_the_loop_runs_until_told_and_has_ended_when_stop_returns() -> None:
    poller = PollThread("test-poller")
    handed: list[str] = []
    polled = threading.Event()

    def run(loop: asyncio.AbstractEventLoop) -> None:
        while not poller.stopping.is_set():
            loop.call_soon_threadsafe(handed.append, threading.current_thread().name)
            polled.set()
            poller.stopping.wait(0.01)  # a poll's wait

    poller.start(run)
    assert await asyncio.to_thread(polled.wait, 10)
    threads = [t for t in threading.enumerate() if t.name == "test-poller"]
    assert len(threads) == 1 and threads[0].daemon
    await poller.stop()
    assert not threads[0].is_alive()
    assert handed and set(handed) == {"test-poller"}  # handed over before polled was set
    await poller.stop()  # a second stop has nothing to do
