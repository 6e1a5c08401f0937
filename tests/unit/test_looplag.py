"""The event loop lag probe (floodgate/looplag.py): no real waiting, a clock the test moves."""
from __future__ import annotations

import asyncio
import functools
import gc

import pytest
from prometheus_client import CollectorRegistry

from floodgate.looplag import GcPauses, LoopLagProbe, LoopWatch
from floodgate.metrics import ApiMetrics


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


def test_each_collection_is_reported_with_its_generation_and_duration() -> None:
    clock, seen = Clock(), list[tuple[int, float]]()
    pauses = GcPauses([functools.partial(lambda g, seconds: seen.append((g, seconds)), g) for g in range(3)],
                      clock=clock)
    pauses("start", {"generation": 2})
    clock.now += 0.4
    pauses("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert seen == [(2, pytest.approx(0.4))]


def test_installed_it_hears_real_collections_and_uninstalled_nothing() -> None:
    seen = list[tuple[int, float]]()
    pauses = GcPauses([functools.partial(lambda g, seconds: seen.append((g, seconds)), g) for g in range(3)])
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    assert [generation for generation, _ in seen] == [2] and seen[0][1] >= 0.0
    gc.collect()
    pauses.uninstall()  # twice is harmless
    assert len(seen) == 1


async def test_a_watch_feeds_its_processs_histograms_and_stops_whole() -> None:
    group = ApiMetrics(CollectorRegistry())
    watch = LoopWatch(group.loop_lag, group.gc_pause)
    watch.start()
    gc.collect()
    await watch.stop()
    gc.collect()  # after stop: not counted
    full = group.registry.get_sample_value("floodgate_api_gc_pause_seconds_count", {"generation": "2"})
    assert full == 1.0
    assert [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag-probe"] == []
