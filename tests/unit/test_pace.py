"""The pace of a waiting line (``floodgate.pace``): what the queue board's ETAs and a dispatcher's
spillover and backlog waits are made of. Pure: clocks are arguments."""
from __future__ import annotations

import heapq
import random
import statistics

import pytest

from floodgate.pace import MIN_STARTS, PRIOR_HOLDS, Pace, estimated_wait


def test_starts_into_free_slots_say_nothing_of_the_pace() -> None:
    pace = Pace()
    for i in range(8):  # a quiet hour: every job finds a free slot
        pace.started(f"q{i}", 600.0 * i, 600.0 * i, waiting=0, limit=5)
        pace.finished(f"q{i}", 600.0 * i + 100)
    assert not pace.saturated and not pace.starts
    assert pace.rate(5, 5000.0) == pytest.approx(5 / 100), "the capacity estimate: 5 slots ÷ 100 s holds"


def test_a_spell_starts_at_the_start_that_takes_the_last_free_slot_and_ends_when_nobody_waits() -> None:
    pace = Pace()
    for i in range(4):
        pace.started(f"b{i}", 0.0, 0.0, waiting=10, limit=5)
    assert not pace.saturated, "a free slot was left"
    pace.started("b4", 0.0, 0.0, waiting=9, limit=5)
    assert pace.saturated and pace.last_start is None
    for i, at in enumerate((40.0, 50.0, 70.0)):  # three ends, each slot taken again at once
        pace.finished(f"b{i}", at)
        pace.started(f"n{i}", at, at, waiting=8 - i, limit=5)
    assert [gap for _, gap in pace.starts] == [10.0, 20.0], "from the first start after the fill on"
    pace.emptied()
    assert not pace.saturated and pace.last_start is None


def test_a_dispatcher_says_when_its_slots_are_full_even_with_slots_it_recovered() -> None:
    pace = Pace()
    pace.started("only-one-seen", 0.0, 0.0, waiting=3, limit=5, full=True)
    assert pace.saturated and pace.running == 1


def test_the_first_short_ends_after_a_burst_do_not_make_the_pace_fast() -> None:
    """Five renders start together; the shortest ends first. Until a render has settled (its job
    started before every job still running), the figure is the configured one, else a floor."""
    configured, floor = Pace(configured_hold=100.0), Pace()
    for pace in (configured, floor):
        for i in range(5):
            pace.started(f"b{i}", 0.0, 0.0, waiting=20, limit=5)
        pace.finished("b0", 30.0)
        pace.started("n0", 30.0, 30.0, waiting=19, limit=5)
    assert configured.settled() is None
    assert configured.rate(5, 31.0) == pytest.approx(5 / 100.0)
    assert floor.hold_time(31.0) == pytest.approx((30.0 + 4 * 31.0 + 1.0) / 6), "the holds so far, a floor"
    # Once n0's elders have all ended, b0..b4 are settled: their mean is the pace.
    for i, at in enumerate((60.0, 90.0, 120.0, 180.0), start=1):
        configured.finished(f"b{i}", at)
        floor.finished(f"b{i}", at)
    assert configured.settled() == (90.0, pytest.approx(96.0))
    # Five settled holds against the configured 100 s, which weighs as PRIOR_HOLDS of them.
    weight = PRIOR_HOLDS + 5
    assert configured.hold_time(181.0, mean=False) == pytest.approx((PRIOR_HOLDS * 100.0 + 5 * 90.0) / weight)
    assert configured.hold_time(181.0) == pytest.approx((PRIOR_HOLDS * 100.0 + 5 * 96.0) / weight)
    assert floor.hold_time(181.0) == pytest.approx(96.0), "nothing configured: the holds seen alone"


def test_jobs_whose_slots_went_elsewhere_stop_holding_the_settled_cut() -> None:
    pace = Pace()
    pace.started("gone", 0.0, 0.0, waiting=0, limit=5)
    pace.started("kept", 10.0, 10.0, waiting=0, limit=5)
    pace.finished("kept", 70.0)
    assert pace.settled() is None, "'gone' started first and still counts as running"
    pace.keep_only(set())
    assert pace.settled() == (60.0, 60.0) and pace.running == 0


def test_starts_seen_out_of_their_order_count_the_time_they_span_once() -> None:
    """The API's board sees starts in the snapshots of several partitions of the jobs topic, one
    partition's batch after another's, so their stamps go back and forth. 100 starts, one every
    0.2 s (5 a second), the even jobs' snapshots on one partition and the odd ones' on another,
    delivered a second's batch of each in turn: the rate is 5 a second. Summing only the forward
    steps counted much of each second's span twice and told the line 1.6× slower than it moved."""
    pace = Pace()
    for i in range(10):
        pace.started(f"fill{i}", 0.0, 0.0, waiting=500, limit=10)
    stamps = [round(0.2 * n, 1) for n in range(1, 101)]
    delivered = []
    for second in range(20):
        batch = [n for n in range(len(stamps)) if second <= stamps[n] - 0.2 < second + 1]
        delivered += [n for n in batch if n % 2 == 0] + [n for n in batch if n % 2 == 1]
    assert sorted(delivered) == list(range(100)) and delivered != sorted(delivered)
    for taken, n in enumerate(delivered):
        pace.started(f"j{n}", stamps[n], stamps[-1], waiting=400 - taken, limit=10)
    assert pace.rate(10, stamps[-1]) == pytest.approx(5.0, rel=0.03)


def test_estimated_wait_is_places_over_the_rate() -> None:
    assert estimated_wait(4, 0.5) == 10.0 and estimated_wait(4, None) is None and estimated_wait(4, 0.0) is None


def drain(seed: int, *, slots: int, orders: int, handover: float = 0.5) -> list[tuple[float, float, str]]:
    """(start, end, job) of ``orders`` orders waiting at once for ``slots`` slots, renders of 30 s to
    3 min (as video models take), each slot taken again ``handover`` after its job ends."""
    rng = random.Random(seed)
    free = [0.0] * slots
    out = []
    for i in range(orders):
        start = heapq.heappop(free)
        end = start + rng.uniform(30.0, 180.0)
        heapq.heappush(free, end + handover)
        out.append((start, end, f"j{i}"))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_dispatch_partitions_wait_is_known_and_near_right_at_real_render_times(seed: int) -> None:
    """One dispatch partition with 5 slots and 3-minute renders makes about three starts a minute:
    too few for a rate over a minute of starts to be known at all, so its line's waits stayed
    unknown and nothing spilled. The pace is known from the first ends on (a floor until renders
    settle), and from the second round the wait it gives is close to the one the orders had."""
    slots, lives = 5, drain(seed, slots=5, orders=120)
    pace = Pace()
    events = sorted([(start, 1, job) for start, _, job in lives] + [(end, 0, job) for _, end, job in lives])
    started_at = {job: start for start, _, job in lives}
    order_of = [job for _, _, job in lives]
    reads = iter((190.0, 400.0, 700.0, 1000.0, 1300.0))  # (every render of the first round ended by 180 s)
    read: float | None = next(reads)
    errors: list[float] = []
    taken = 0
    for at, kind, job in events:
        while read is not None and read < at:
            rate = pace.rate(slots, read)
            assert rate is not None, f"unknown at {read:.0f} s"
            if read >= 400.0:  # from the second round on: each waiting order's predicted wait
                waiting = [j for j in order_of[taken:] if started_at[j] > read]
                for place, j in enumerate(waiting[:60]):
                    actual = started_at[j] - read
                    if actual >= 60.0:
                        predicted = estimated_wait(place, rate)
                        assert predicted is not None
                        errors.append(abs(predicted - actual) / actual)
            read = next(reads, None)
        if kind == 0:
            pace.finished(job, at)
        else:
            taken += 1
            pace.started(job, at, at, waiting=len(lives) - taken, limit=slots)
    assert len(errors) > 100
    assert statistics.median(errors) <= 0.15, f"median error {statistics.median(errors):.0%}"
    assert len(pace.starts) >= MIN_STARTS
