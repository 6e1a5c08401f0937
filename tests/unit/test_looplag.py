"""The event loop lag probe (floodgate/looplag.py): no real waiting, a clock the test moves."""
from __future__ import annotations

import asyncio

from floodgate.looplag import LoopLagProbe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_probe_reports_how_late_the_loop_woke_it() -> None:
    clock, lags = Clock(), list[float]()
    probe = LoopLagProbe(lags.append, interval=0.0, clock=clock)
    probe.start()
    await asyncio.sleep(0)  # the probe notes when it is due, then sleeps
    clock.now += 0.75  # something held the loop for 0.75 s meanwhile
    while not lags:
        await asyncio.sleep(0)
    await probe.stop()
    assert lags[0] == 0.75
    assert all(lag == 0.0 for lag in lags[1:])  # the clock stood still after that


async def test_an_early_wake_is_no_lag_and_stop_ends_the_task() -> None:
    clock, lags = Clock(), list[float]()
    probe = LoopLagProbe(lags.append, interval=0.0, clock=clock)
    probe.start()
    probe.start()  # once only
    await asyncio.sleep(0)
    clock.now -= 1.0  # a clock that went back reads as no lag, never a negative one
    while not lags:
        await asyncio.sleep(0)
    await probe.stop()
    await probe.stop()
    assert lags[0] == 0.0
    assert [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag-probe"] == []
