"""How late a process's event loop runs what is due: a task sleeps a fixed interval, again and
again, and each time notes how much later than asked it woke.

Every 202 of the API waits on its one event loop. When a piece of work holds the loop (a large
batch of changes applied at once, a garbage collection over a large heap, a thread holding the
GIL), every request in flight waits it out, and the accept latency's tail shows it without
saying why. The probe's lag is that wait, measured directly: with it, a stall of the 202s that
the loop's lag matches is the loop's, and one it does not match lies elsewhere (the broker, the
network, the load generator).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

INTERVAL = 0.05
"""Seconds between two probes: 20 wake-ups a second, a few microseconds each."""


class LoopLagProbe:
    """Reports each probe's lag (seconds later than asked, never negative) to ``observe``."""

    def __init__(self, observe: Callable[[float], None], *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.observe = observe
        self.interval = interval
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            asked = self.clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, self.clock() - asked))


__all__ = ["INTERVAL", "LoopLagProbe"]
