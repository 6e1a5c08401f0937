"""How late a process's event loop runs what is due: a task sleeps a fixed interval, again and
again, and each time notes how much later than asked it woke.

Every 202 of the API waits on its one event loop. When a piece of work holds the loop (a large
batch of changes applied at once, a garbage collection over a large heap, a thread holding the
GIL), every request in flight waits it out, and the accept latency's tail shows it without
saying why. The probe's lag is that wait, measured directly: with it, a stall of the 202s that
the loop's lag matches is the loop's, and one it does not match lies elsewhere (the broker, the
network, the load generator). ``GcPauses`` times the garbage collector's own stalls, which hold
the loop like any other work.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from floodgate.tasks import cancel_and_wait

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
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            asked = self.clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, self.clock() - asked))


class GcPauses:
    """Reports each garbage collection's duration to ``observe[generation]`` while installed
    (``gc.callbacks``): the one stall of the loop that no task can be blamed for, since the
    collector runs inside whichever allocation crossed its threshold. One observer per
    generation, looked up once: the youngest is collected hundreds of times a second."""

    def __init__(self, observe: Sequence[Callable[[float], None]], *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.observe = tuple(observe)
        self.clock = clock
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self.clock()
        else:
            self.observe[info["generation"]](self.clock() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)


class LoopWatch:
    """A process's probe and collection timer, started and stopped together, feeding its
    ``floodgate_<process>_event_loop_lag_seconds`` and ``floodgate_<process>_gc_pause_seconds``."""

    def __init__(self, lag: Any, gc_pause: Any) -> None:
        """``lag``: a histogram; ``gc_pause``: one labelled by generation (prometheus_client's)."""
        self.probe = LoopLagProbe(lag.observe)
        self.pauses = GcPauses([gc_pause.labels(str(generation)).observe for generation in range(3)])

    def start(self) -> None:
        """On the running loop."""
        self.probe.start()
        self.pauses.install()

    async def stop(self) -> None:
        self.pauses.uninstall()
        await self.probe.stop()


__all__ = ["INTERVAL", "GcPauses", "LoopLagProbe", "LoopWatch"]
