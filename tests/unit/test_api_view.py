"""JobView: version ordering, eviction order, subscriptions and waiting; no Kafka."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.api.view import SUBSCRIBER_QUEUE, JobView


def snap(job_id: str, version: int, status: str = "running") -> dict[str, Any]:
    return {"job_id": job_id, "version": version, "status": status}


def held(view: JobView, job_id: str) -> dict[str, Any]:
    found = view.get(job_id)
    assert found is not None, job_id
    return found


@pytest.mark.parametrize(
    ("versions", "kept"),
    [
        ([1, 2, 3], 3),
        ([3, 2, 1], 3),
        ([0, 5, 4, 5], 5),
        ([2, 2], 2),
        ([0], 0),
    ],
)
def test_highest_version_wins(versions: list[int], kept: int) -> None:
    view = JobView()
    for v in versions:
        view.apply(snap("j", v))
    assert held(view, "j")["version"] == kept


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=30))
def test_any_arrival_order_converges_to_the_max(versions: list[int]) -> None:
    view = JobView()
    for v in versions:
        view.apply(snap("j", v))
    assert held(view, "j")["version"] == max(versions)


def test_equal_version_is_not_news() -> None:
    view = JobView()
    assert view.apply(snap("j", 1))
    assert not view.apply({**snap("j", 1), "status": "completed"})
    assert held(view, "j")["status"] == "running"


def test_eviction_takes_oldest_terminal_jobs_first() -> None:
    view = JobView(max_jobs=3)
    view.apply(snap("a", 1))
    view.apply(snap("b", 1, "completed"))
    view.apply(snap("c", 1, "failed"))
    view.apply(snap("d", 1))  # over the bound: b (the oldest finished job) goes
    assert [j for j in "abcd" if view.get(j)] == ["a", "c", "d"]
    view.apply(snap("e", 1))  # c goes; the live job a stays although it is older
    assert [j for j in "abcde" if view.get(j)] == ["a", "d", "e"]
    view.apply(snap("f", 1))  # no finished job left: the oldest live one goes
    assert [j for j in "abcdef" if view.get(j)] == ["d", "e", "f"]
    assert len(view) == 3


def test_a_job_moves_to_the_terminal_side_when_it_finishes() -> None:
    view = JobView(max_jobs=2)
    view.apply(snap("a", 1))
    view.apply(snap("b", 1))
    view.apply(snap("a", 2, "completed"))
    view.apply(snap("c", 1))
    assert view.get("a") is None and view.get("b") and view.get("c")


async def test_subscribers_get_newer_snapshots_only() -> None:
    view = JobView()
    view.apply(snap("j", 2))
    queue = view.subscribe("j")
    view.apply(snap("j", 1))
    view.apply(snap("j", 3))
    view.apply(snap("other", 9))
    assert queue.get_nowait()["version"] == 3
    assert queue.empty()
    view.unsubscribe("j", queue)
    view.apply(snap("j", 4))
    assert queue.empty() and view.subscriber_count("j") == 0


async def test_a_slow_subscriber_keeps_the_newest() -> None:
    view = JobView()
    queue = view.subscribe("j")
    for v in range(1, SUBSCRIBER_QUEUE + 5):
        view.apply(snap("j", v))
    seen = [queue.get_nowait()["version"] for _ in range(queue.qsize())]
    assert len(seen) == SUBSCRIBER_QUEUE and seen[-1] == SUBSCRIBER_QUEUE + 4 and seen == sorted(seen)


async def test_wait_for_returns_when_the_job_arrives() -> None:
    view = JobView()
    waiter = asyncio.create_task(view.wait_for("j", timeout=30))
    await asyncio.sleep(0)  # let the waiter register (a scheduling step, not a timing guess)
    view.apply(snap("j", 1))
    found = await asyncio.wait_for(waiter, 5)
    assert found is not None and found["version"] == 1


async def test_wait_for_gives_up_after_the_timeout_and_cleans_up() -> None:
    view = JobView()
    assert await view.wait_for("j", timeout=0.01) is None
    assert view._arrivals == {}


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        JobView(max_jobs=0)
