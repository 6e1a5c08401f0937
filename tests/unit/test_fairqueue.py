"""The fair line: priority classes, weighted fair share between tenants, high and low marks; and
the position estimate the job view gives from outside."""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.errors import ConfigError
from floodgate.fairqueue import ClassLoad, FairLine, position_estimate, whole_shares


@dataclass(frozen=True)
class Job:
    job_id: str
    tenant: str = "a"
    priority: str = "standard"
    accepted: int = 0


def by_acceptance(job: Job) -> float:
    return job.accepted


def drain(line: FairLine[Job]) -> list[str]:
    out = []
    while (job := line.pop()) is not None:
        out.append(job.job_id)
    return out


def test_one_tenant_is_served_in_arrival_order() -> None:
    line: FairLine[Job] = FairLine(100)
    for i in range(5):
        line.push(Job(f"j{i}"))
    assert drain(line) == ["j0", "j1", "j2", "j3", "j4"]


def test_a_tenant_arriving_behind_a_burst_is_interleaved_not_queued_behind_it() -> None:
    line: FairLine[Job] = FairLine(100_000)
    for i in range(10_000):
        line.push(Job(f"a{i}", "a"))
    served = [line.pop() for _ in range(50)]  # the burst has begun to be served
    assert all(job is not None and job.tenant == "a" for job in served)
    for i in range(100):
        line.push(Job(f"b{i}", "b"))
    order = drain(line)
    b_turns = [n for n, job_id in enumerate(order) if job_id.startswith("b")]
    a_turns = [n + 50 for n, job_id in enumerate(order) if job_id.startswith("a")]
    assert b_turns == list(range(0, 200, 2)) or b_turns == list(range(1, 201, 2))  # every other turn
    assert statistics.median(b_turns) < 0.1 * statistics.median(a_turns)
    assert [job_id for job_id in order if job_id.startswith("b")] == [f"b{i}" for i in range(100)]


def test_weights_share_the_turns() -> None:
    weights = {"gold": 3.0, "basic": 1.0}
    line: FairLine[Job] = FairLine(1000, lambda tenant: weights[tenant])
    for i in range(40):
        line.push(Job(f"g{i}", "gold"))
        line.push(Job(f"b{i}", "basic"))
    first = drain(line)[:40]
    assert sum(job_id.startswith("g") for job_id in first) == 30  # 3 of every 4 turns


def test_no_order_is_passed_by_one_of_a_lower_class() -> None:
    line: FairLine[Job] = FairLine(100)
    line.push(Job("low", priority="low"))
    for i in range(3):
        line.push(Job(f"std{i}", tenant=f"t{i}"))
    line.push(Job("high", tenant="late", priority="high"))
    assert drain(line) == ["high", "std0", "std1", "std2", "low"]


def test_a_tenant_idle_for_a_while_is_not_owed_past_turns() -> None:
    line: FairLine[Job] = FairLine(100)
    line.push(Job("b0", "b"))
    assert line.pop() == Job("b0", "b")
    for i in range(10):
        line.push(Job(f"a{i}", "a"))
    for _ in range(5):
        line.pop()
    line.push(Job("b1", "b"))  # b starts at the current virtual time: after a5 at the earliest in tie order
    assert drain(line)[:2] in (["a5", "b1"], ["b1", "a5"])


def test_push_replaces_the_waiting_order_of_the_same_job() -> None:
    line: FairLine[Job] = FairLine(100)
    line.push(Job("x", "a"))
    line.push(Job("y", "a"))
    line.push(Job("x", "a", priority="high"))  # a newer attempt of x
    assert len(line) == 2 and drain(line) == ["x", "y"]


def test_a_tenants_orders_go_by_acceptance_whatever_order_they_arrive_in() -> None:
    # Admission interleaves the request partitions by fetch: a job accepted first may reach the
    # line after later ones. Its tenant's turns stay where they were; its jobs fill them in order.
    line: FairLine[Job] = FairLine(100, order_key=by_acceptance)
    for job_id, tenant, accepted in [("a3", "a", 3), ("b1", "b", 1), ("a4", "a", 4), ("a1", "a", 1),
                                     ("b2", "b", 2), ("a2", "a", 2)]:
        line.push(Job(job_id, tenant, accepted=accepted))
    expected = ["a1", "b1", "a2", "b2", "a3", "a4"]
    assert [job.job_id for job in line.in_order()] == expected
    assert drain(line) == expected


def test_a_job_taken_out_leaves_its_tenants_turns_to_the_jobs_behind_it() -> None:
    line: FairLine[Job] = FairLine(100)
    for i in range(3):
        line.push(Job(f"a{i}", "a"))
        line.push(Job(f"b{i}", "b"))
    assert line.take("a0") == Job("a0", "a")
    assert drain(line) == ["a1", "b0", "a2", "b1", "b2"]


def test_a_tenant_whose_waiting_orders_were_all_taken_out_is_served_like_a_newcomer() -> None:
    """A's 50 waiting orders are cancelled (or spilled, or expired) while B's 50 and four single
    orders wait. A's next order is served where a tenant never seen would be, after the first
    turn of each tenant waiting before it, not behind B's whole backlog (its 50 turns given back)."""

    def line_with(first: str) -> FairLine[Job]:
        line: FairLine[Job] = FairLine(10_000, held_of=lambda tenant: 0, slots=5)
        for i in range(50):
            line.push(Job(f"{first}{i}", first))
        for i in range(50):
            line.push(Job(f"b{i}", "b"))
        for tenant in "cdef":  # 6 tenants, 5 slots: whole shares of 0, the turns decide
            line.push(Job(f"{tenant}0", tenant))
        return line

    line = line_with("a")
    assert len(line.remove(lambda job: job.tenant == "a")) == 50
    line.push(Job("a-new", "a"))
    fresh = line_with("g")  # as above, but the tenant that goes is one that never comes back
    fresh.remove(lambda job: job.tenant == "g")
    fresh.push(Job("a-new", "a"))
    order = drain(line)
    assert order.index("a-new") == drain(fresh).index("a-new") == 5
    assert order[:6] == ["b0", "c0", "d0", "e0", "f0", "a-new"]


def test_a_take_from_the_middle_gives_back_one_turn_and_no_more() -> None:
    """A job of A's taken from the middle of its orders: the ones behind move up one turn each,
    and A's next order takes the turn given back, as if the job had never come: neither behind
    an extra turn of B's, nor ahead of A's share."""
    line: FairLine[Job] = FairLine(100)
    for i in range(10):
        if i < 5:
            line.push(Job(f"a{i}", "a"))
        line.push(Job(f"b{i}", "b"))
    assert line.take("a2") == Job("a2", "a")
    line.push(Job("a5", "a"))
    assert drain(line) == ["a0", "b0", "a1", "b1", "a3", "b2", "a4", "b3", "b4", "a5",
                           "b5", "b6", "b7", "b8", "b9"]


def test_put_back_goes_first_in_its_class() -> None:
    line: FairLine[Job] = FairLine(100)
    for name in ("a", "b", "c"):
        line.push(Job(name, name))
    first = line.pop()
    assert first is not None
    line.push_front(first)
    assert drain(line) == ["a", "b", "c"]


def test_pauses_at_high_and_resumes_once_near_it() -> None:
    line: FairLine[Job] = FairLine(40)  # low mark: 38
    assert [line.push(Job(f"j{i}")) for i in range(41)][-3:] == [False, True, True]
    assert line.paused
    assert line.pop() and line.pop() and not line.resume_due()  # 39 left
    assert line.pop() and line.resume_due() and not line.paused
    assert not line.resume_due(), "a resume is due once per pause"


def test_take_and_remove_leave_the_rest_in_order() -> None:
    line: FairLine[Job] = FairLine(100)
    for i in range(6):
        line.push(Job(f"j{i}"))
    assert line.take("j1") == Job("j1") and line.take("nope") is None
    assert [job.job_id for job in line.remove(lambda job: job.job_id == "j3")] == ["j3"]
    assert [job.job_id for job in line.remove(lambda job: job.job_id in ("j0", "j5"))] == ["j0", "j5"]
    assert "j2" in line and "j1" not in line
    assert drain(line) == ["j2", "j4"]


def test_the_heap_does_not_grow_with_taken_orders() -> None:
    line: FairLine[Job] = FairLine(100)
    line.push(Job("keep"))
    for i in range(10_000):
        line.push(Job(f"j{i}"))
        line.take(f"j{i}")
    assert len(line._heap) < 200
    assert drain(line) == ["keep"]


def test_clear_returns_orders_in_served_order_and_lifts_the_pause() -> None:
    line: FairLine[Job] = FairLine(2)
    line.push(Job("b", priority="low")), line.push(Job("a"))
    assert line.paused
    assert [job.job_id for job in line.clear()] == ["a", "b"]
    assert len(line) == 0 and not line.paused and not line.resume_due()


@pytest.mark.parametrize("high", [0, -1, 1.5, True])
def test_a_bad_high_mark_is_refused(high: object) -> None:
    with pytest.raises(ConfigError):
        FairLine(high)  # type: ignore[arg-type]


# --- the estimate from outside -----------------------------------------------------------------


def test_estimate_matches_the_line_for_backlogged_tenants() -> None:
    weights = {"a": 1.0, "b": 2.0, "c": 1.0}
    line: FairLine[Job] = FairLine(10_000, lambda tenant: weights[tenant])
    for i in range(300):
        line.push(Job(f"a{i}", "a"))
    for i in range(100):
        line.push(Job(f"b{i}", "b"))
    for i in range(30):
        line.push(Job(f"h{i}", "c", priority="high"))
    order = [job.job_id for job in line.in_order()]
    loads = [ClassLoad("standard", "a", 300), ClassLoad("standard", "b", 100), ClassLoad("high", "c", 30)]
    for job_id, tenant, priority, index in (("a0", "a", "standard", 0), ("a150", "a", "standard", 150),
                                            ("b40", "b", "standard", 40), ("b99", "b", "standard", 99),
                                            ("a299", "a", "standard", 299), ("h7", "c", "high", 7)):
        estimate = position_estimate(priority, tenant, index, loads, lambda tenant: weights[tenant])
        assert abs(estimate - order.index(job_id)) <= 1, job_id


def test_estimate_counts_every_higher_class_and_none_lower() -> None:
    loads = [ClassLoad("high", "x", 7), ClassLoad("low", "y", 1000), ClassLoad("standard", "me", 3)]
    assert position_estimate("standard", "me", 2, loads) == 9
    assert position_estimate("high", "x", 0, loads) == 0
    assert position_estimate("low", "y", 10, loads) == 7 + 3 + 10


_op = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 30), st.sampled_from(["a", "b", "c"]),
              st.sampled_from(["high", "standard", "low"]), st.integers(0, 20)),
    st.tuples(st.just("pop")), st.tuples(st.just("pop_and_put_back")), st.tuples(st.just("take"), st.integers(0, 30)))


def push_or_take(line: FairLine[Job], waiting: dict[str, Job], op: tuple[object, ...]) -> bool:
    """Apply a "push" or "take" of ``_op`` to the line and to ``waiting``; False for the others."""
    if op[0] == "push":
        _, n, tenant, priority, accepted = op
        job = Job(f"j{n}", str(tenant), str(priority), int(str(accepted)))
        line.push(job)
        waiting[job.job_id] = job
        return True
    if op[0] == "take":
        assert line.take(f"j{op[1]}") == waiting.pop(f"j{op[1]}", None)
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=80), weights=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_the_line_serves_what_in_order_says_and_each_tenant_by_acceptance(
        ops: list[tuple[object, ...]], weights: tuple[int, int, int]) -> None:
    weight = dict(zip("abc", weights, strict=True))
    line: FairLine[Job] = FairLine(1000, lambda tenant: weight[tenant], order_key=by_acceptance)
    waiting: dict[str, Job] = {}
    for op in ops:
        if not push_or_take(line, waiting, op):
            expected = line.in_order()
            popped = line.pop()
            assert popped == (expected[0] if expected else None)
            if popped is not None:
                del waiting[popped.job_id]
                if op[0] == "pop_and_put_back":
                    line.push_front(popped)
                    waiting[popped.job_id] = popped
                    assert line.peek() is not None
        assert len(line) == len(waiting) and all(job_id in line for job_id in waiting)
    served = line.in_order()
    assert drain(line) == [job.job_id for job in served]
    assert sorted(served, key=lambda job: job.job_id) == sorted(waiting.values(), key=lambda job: job.job_id)
    for tenant in "abc":
        for priority in ("high", "standard", "low"):
            mine = [job.accepted for job in served if job.tenant == tenant and job.priority == priority]
            assert mine == sorted(mine), "one tenant's jobs of one class go by acceptance"
    ranks = [("high", "standard", "low").index(job.priority) for job in served]
    assert ranks == sorted(ranks), "never passed by a lower class"


# --- slots held: the tenant holding the fewest for its weight goes first ------------------------


def run_provider(line: FairLine[Job], held: dict[str, int], in_flight: list[Job], starts: int) -> list[str]:
    """``starts`` times: the oldest job in flight ends, and the line's next order takes its slot."""
    started = []
    for _ in range(starts):
        ended = in_flight.pop(0)
        held[ended.tenant] -= 1
        job = line.pop()
        assert job is not None
        held[job.tenant] = held.get(job.tenant, 0) + 1
        in_flight.append(job)
        started.append(job.job_id)
    return started


def test_a_tenant_holding_no_slot_takes_each_freed_one_until_it_holds_its_share() -> None:
    held: dict[str, int] = {}
    line: FairLine[Job] = FairLine(10_000, held_of=lambda tenant: held.get(tenant, 0), slots=10)
    for i in range(300):
        line.push(Job(f"a{i}", "a"))
    in_flight = [line.pop() for _ in range(10)]  # A's burst holds all 10 slots
    held["a"] = 10
    for i in range(10):
        line.push(Job(f"b{i}", "b"))
    started = run_provider(line, held, in_flight, 10)  # type: ignore[arg-type]
    assert started[:5] == ["b0", "b1", "b2", "b3", "b4"]  # every slot that frees, until 5 each
    assert held == {"a": 5, "b": 5}
    started += run_provider(line, held, in_flight, 5)  # type: ignore[arg-type]
    assert held == {"a": 5, "b": 5}  # each keeps its half while both wait
    started += run_provider(line, held, in_flight, 15)  # type: ignore[arg-type]
    assert [job_id for job_id in started if job_id.startswith("b")] == [f"b{i}" for i in range(10)]


def test_weights_share_the_slots() -> None:
    weights = {"gold": 2.0, "basic": 1.0}
    held: dict[str, int] = {"gold": 0, "basic": 0}
    line: FairLine[Job] = FairLine(10_000, lambda tenant: weights[tenant], held_of=lambda tenant: held[tenant],
                                   slots=9)
    for i in range(200):
        line.push(Job(f"g{i}", "gold"))
        line.push(Job(f"s{i}", "basic"))
    in_flight = []
    for _ in range(9):  # 9 free slots, taken by the rule as well
        job = line.pop()
        assert job is not None
        held[job.tenant] += 1
        in_flight.append(job)
    assert held == {"gold": 6, "basic": 3}
    run_provider(line, held, in_flight, 90)
    assert held == {"gold": 6, "basic": 3}


@pytest.mark.parametrize(("slots", "weights"), [
    (6, {"heavy": 3.0, "light": 1.0}),  # shares of 4.5 and 1.5 slots
    (2, {"heavy": 5.0, "light": 1.0}),  # less than one slot for the light one
    (10, {"gold": 3.0, "silver": 2.0, "basic": 1.0}),
    (5, {"a": 1.0, "b": 1.0}),
])
def test_starts_follow_the_weights_when_shares_are_not_whole_slots(slots: int, weights: dict[str, float]) -> None:
    """Every tenant keeps jobs waiting; jobs end in a random order. Each tenant's starts are its
    weight's share of all, within 10%, and nobody is starved: with the slots held alone deciding,
    3:1 of 6 slots stayed at 4 and 2 slots held, two starts to one."""
    rng = random.Random(7)
    held = dict.fromkeys(weights, 0)
    line: FairLine[Job] = FairLine(100_000, lambda tenant: weights[tenant], held_of=lambda tenant: held[tenant],
                                   slots=slots)
    for i in range(5000):
        for tenant in weights:
            line.push(Job(f"{tenant}-{i}", tenant))
    in_flight: list[Job] = []
    for _ in range(slots):
        job = line.pop()
        assert job is not None
        held[job.tenant] += 1
        in_flight.append(job)
    starts = dict.fromkeys(weights, 0)
    for _ in range(4000):
        ended = in_flight.pop(rng.randrange(len(in_flight)))
        held[ended.tenant] -= 1
        job = line.pop()
        assert job is not None
        held[job.tenant] += 1
        starts[job.tenant] += 1
        in_flight.append(job)
    total = sum(weights.values())
    for tenant, weight in weights.items():
        assert starts[tenant] / 4000 == pytest.approx(weight / total, rel=0.10), starts


def test_whole_shares() -> None:
    assert whole_shares(6, {"a": 3.0, "b": 1.0}) == {"a": 4, "b": 1}
    assert whole_shares(9, {"a": 2.0, "b": 1.0}) == {"a": 6, "b": 3}
    assert whole_shares(2, {"a": 5.0, "b": 1.0}) == {"a": 1, "b": 0}
    assert whole_shares(0, {"a": 1.0}) == {"a": 0}


def test_priority_comes_before_slots_held() -> None:
    held = {"busy": 10, "idle": 0}
    line: FairLine[Job] = FairLine(100, held_of=lambda tenant: held[tenant], slots=10)
    line.push(Job("idle-1", "idle"))
    line.push(Job("busy-vip", "busy", priority="high"))
    line.push(Job("idle-low", "idle", priority="low"))
    line.push(Job("busy-1", "busy"))
    assert drain(line) == ["busy-vip", "idle-1", "busy-1", "idle-low"]


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=80), held=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
def test_with_slots_held_pop_serves_what_peek_shows_a_tenant_short_of_its_share_first(
        ops: list[tuple[object, ...]], held: tuple[int, int, int]) -> None:
    holding = dict(zip("abc", held, strict=True))
    slots = 6
    line: FairLine[Job] = FairLine(1000, order_key=by_acceptance, held_of=lambda tenant: holding[tenant],
                                   slots=slots)
    waiting: dict[str, Job] = {}
    for op in ops:
        if not push_or_take(line, waiting, op):
            shown = line.peek()
            popped = line.pop()
            assert popped == shown
            if popped is None:
                continue
            del waiting[popped.job_id]
            rank = ("high", "standard", "low").index
            assert all(rank(job.priority) >= rank(popped.priority) for job in waiting.values())
            rivals = [job for job in waiting.values() if job.priority == popped.priority]
            tenants = {job.tenant for job in rivals} | {popped.tenant}
            owed = whole_shares(slots, dict.fromkeys(tenants, 1.0))
            short = [job for job in rivals if holding[job.tenant] < owed[job.tenant]]
            if short:  # a tenant short of its whole slots goes first, the fewest held first
                assert holding[popped.tenant] < owed[popped.tenant]
                assert all(holding[job.tenant] >= holding[popped.tenant] for job in short)
            holding[popped.tenant] += 1  # it took a slot
            if op[0] == "pop_and_put_back":
                holding[popped.tenant] -= 1
                line.push_front(popped)
                waiting[popped.job_id] = popped
        assert len(line) == len(waiting)
    assert sorted(drain(line)) == sorted(waiting)


def test_estimate_serves_a_tenant_short_of_its_slots_first() -> None:
    loads = [ClassLoad("standard", "a", 290), ClassLoad("standard", "b", 10)]

    def estimate(tenant: str, index: int, held: dict[str, int] | None) -> int:
        return position_estimate("standard", tenant, index, loads, held=held, limit=10)

    # A's burst holds all 10 slots: B's first five go first, each at the next slot that frees.
    assert [estimate("b", i, {"a": 10}) for i in range(5)] == [0, 1, 2, 3, 4]
    assert estimate("a", 0, {"a": 10}) == 5
    assert estimate("b", 7, {"a": 10}) == 7 + 2  # then turn about
    # Once each holds its half, turns alone decide, as without slots held.
    assert estimate("b", 3, {"a": 5, "b": 5}) == estimate("b", 3, None) == 3 + 3
    # The slots of a tenant that no longer waits come back to those that do.
    two = [ClassLoad("standard", "b", 3), ClassLoad("standard", "c", 3)]
    assert position_estimate("standard", "c", 0, two, held={"gone": 6, "c": 4}, limit=10) == 3


def test_estimate_matches_the_line_while_a_tenant_catches_up_on_slots() -> None:
    held: dict[str, int] = {}
    line: FairLine[Job] = FairLine(10_000, held_of=lambda tenant: held.get(tenant, 0), slots=10)
    for i in range(300):
        line.push(Job(f"a{i}", "a"))
    in_flight = [line.pop() for _ in range(10)]
    held["a"] = 10
    for i in range(10):
        line.push(Job(f"b{i}", "b"))
    loads = [ClassLoad("standard", "a", 290), ClassLoad("standard", "b", 10)]
    # Each waiting order's index among its tenant's (a0-a9 took the slots). Past B's catching up,
    # which tenant's job ends next decides the turns, and the estimate assumes they alternate.
    index = {"b0": 0, "b2": 2, "b4": 4, "a10": 0}
    expected = {job_id: position_estimate("standard", job_id[0], i, loads, held=dict(held), limit=10)
                for job_id, i in index.items()}
    started = run_provider(line, held, in_flight, 10)  # type: ignore[arg-type]
    for job_id, estimate in expected.items():
        assert abs(estimate - started.index(job_id)) <= 1, (job_id, estimate, started)
