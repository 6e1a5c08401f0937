"""The fair line: priority classes, weighted fair share between tenants, high and low marks; and
the position estimate the job view gives from outside."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.errors import ConfigError
from floodgate.fairqueue import ClassLoad, FairLine, position_estimate


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


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=80), weights=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_the_line_serves_what_in_order_says_and_each_tenant_by_acceptance(
        ops: list[tuple[object, ...]], weights: tuple[int, int, int]) -> None:
    weight = dict(zip("abc", weights, strict=True))
    line: FairLine[Job] = FairLine(1000, lambda tenant: weight[tenant], order_key=by_acceptance)
    waiting: dict[str, Job] = {}
    for op in ops:
        if op[0] == "push":
            _, n, tenant, priority, accepted = op
            job = Job(f"j{n}", str(tenant), str(priority), int(str(accepted)))
            line.push(job)
            waiting[job.job_id] = job
        elif op[0] == "take":
            taken = line.take(f"j{op[1]}")
            assert taken == waiting.pop(f"j{op[1]}", None)
        else:
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
