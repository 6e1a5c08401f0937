"""The capacity calculation against cases worked by hand (fluid queue: exact, no randomness)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.capacity import (
    ModelLoad,
    RenderTime,
    Segment,
    Service,
    binned,
    plan,
    queue,
    scaled,
    spike,
    summed,
    tier_for,
)
from floodgate.errors import ConfigError

# 2 jobs/s for 100 s into 10 slots of 10 s: served at 1/s, so the line grows 1/s to 100 at
# t=100, drains at 1/s until t=200; the last job queued is done 10 s later. A job arriving at t
# waits Q(t)/mu = t seconds: waits are uniform on [0, 100].
SHAPE = [Segment(100, 2.0)]
SERVICE = Service(10, 10.0)


def test_a_spike_worked_by_hand() -> None:
    r = queue(SHAPE, SERVICE)
    assert r.arrivals == 200
    assert r.service_rate == 1.0
    assert r.in_flight_needed == 20.0  # Little: 2/s x 10 s
    assert r.utilisation == 2.0
    assert r.peak_queue == pytest.approx(100.0)
    assert r.drain_seconds == pytest.approx(210.0)
    assert r.wait_p50 == pytest.approx(50.0)
    assert r.wait_p95 == pytest.approx(95.0)
    assert r.wait_max == pytest.approx(100.0)
    assert r.curve[:3] == ((0.0, 0.0), (100.0, 100.0), (200.0, 0.0))


def test_the_tier_keeps_the_p95_wait_under_the_target() -> None:
    # No wait at all needs mu >= 2/s: 20 slots. A p95 of 47.5 s: 95(2 - mu)/mu <= 47.5, mu >= 4/3,
    # c >= 13.33: 14 slots.
    assert tier_for(SHAPE, 10.0, 0.0) == 20
    assert tier_for(SHAPE, 10.0, 47.5) == 14
    assert queue(SHAPE, Service(13, 10.0)).wait_p95 > 47.5


def test_traffic_below_capacity_never_queues() -> None:
    r = queue([Segment(600, 0.5)], SERVICE)
    assert (r.peak_queue, r.drain_seconds, r.wait_p95) == (0.0, 0.0, 0.0)


def test_a_baseline_after_the_peak_slows_the_drain() -> None:
    # After the peak 0.5/s keep arriving: the line of 100 shrinks at 0.5/s, empty 200 s later.
    r = queue(spike(2.0, 100, baseline_per_second=0.5, after_seconds=1000), SERVICE)
    assert r.drain_seconds == pytest.approx(100 + 200 + 10)


def test_models_sharing_a_provider_share_its_line_and_cost() -> None:
    a = ModelLoad("a", "p", tuple(scaled(SHAPE, 0.5)), RenderTime("fixed", seconds=8.0), queue_delay=2.0,
                  price_per_second=0.1)
    b = ModelLoad("b", "p", tuple(scaled(SHAPE, 0.5)), RenderTime("uniform", min=5.0, max=15.0), price_per_job=3.0)
    [p] = plan([a, b], {"p": 10}, target_wait=0.0)
    assert p.mean_seconds == pytest.approx(10.0)
    assert p.result.drain_seconds == pytest.approx(210.0)
    assert p.tier == 20
    assert a.cost == pytest.approx(100 * 8.0 * 0.1) and b.cost == pytest.approx(300.0)
    assert p.cost == pytest.approx(380.0)


def test_arrival_files_become_rate_steps() -> None:
    assert binned([0.1, 0.5, 2.2], 1.0) == [Segment(1.0, 2.0), Segment(1.0, 0.0), Segment(1.0, 1.0)]
    assert summed([[Segment(10, 1.0)], [Segment(5, 2.0)]]) == [Segment(5, 3.0), Segment(5, 1.0)]


@pytest.mark.parametrize(("raw", "mean", "slowest"), [
    (30, 30.0, 30.0),
    ({"kind": "uniform", "min": 30, "max": 180}, 105.0, 180.0),
    ({"kind": "lognormal", "median": 60, "sigma": 0.5}, 60 * math.exp(0.125), 60 * math.exp(3.09 * 0.5)),
])
def test_render_times(raw: object, mean: float, slowest: float) -> None:
    r = RenderTime.parse(raw)
    assert r.mean == pytest.approx(mean) and r.slowest == pytest.approx(slowest)


@pytest.mark.parametrize("raw", [{"kind": "gamma"}, {"kind": "uniform", "min": 5, "max": 1},
                                 {"kind": "fixed", "secs": 3}, "30s", {"kind": "fixed", "seconds": -1}])
def test_bad_render_times_name_the_fault(raw: object) -> None:
    with pytest.raises(ConfigError, match="render_time"):
        RenderTime.parse(raw)


@given(st.lists(st.tuples(st.floats(1, 500), st.floats(0, 5)), min_size=1, max_size=6),
       st.integers(1, 50), st.floats(1, 200))
def test_the_line_is_conserved_and_drains(pieces: list[tuple[float, float]], c: int, s: float) -> None:
    segments = [Segment(d, r) for d, r in pieces]
    r = queue(segments, Service(c, s))
    assert r.curve[-1][1] == pytest.approx(0.0, abs=1e-6)
    assert all(q >= -1e-6 for _, q in r.curve)
    assert r.wait_p50 <= r.wait_p95 + 1e-9 <= r.wait_max + 1e-6
    # The peak line never exceeds what arrived faster than service could take.
    assert r.peak_queue <= sum(max(0.0, rate - c / s) * d for d, rate in pieces) + 1e-6
    more = queue(segments, Service(c + 1, s))
    assert more.wait_p95 <= r.wait_p95 + 1e-6


def test_with_two_overloads_the_drain_is_the_longest() -> None:
    # 50 s at 2/s (line of 50, empty at t=100), a quiet 100 s, then 100 s at 2/s (line of 100,
    # empty 100 s later): the second overload lasts 200 s.
    r = queue([Segment(50, 2.0), Segment(100, 0.0), Segment(100, 2.0)], SERVICE)
    assert r.drain_seconds == pytest.approx(200 + 10)
    assert r.peak_queue == pytest.approx(100.0)
