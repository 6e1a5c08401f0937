"""JobView: version ordering, eviction order, spilling to disk, subscriptions and waiting; no Kafka."""
from __future__ import annotations

import asyncio
import gc
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.api.resources import job_resource
from floodgate.api.spill import SpillStore
from floodgate.api.view import SUBSCRIBER_QUEUE, YIELD_EVERY, JobView
from floodgate.queueboard import QueueBoard


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
    assert queue.empty()


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


# --- Spilling evicted snapshots to disk ------------------------------------------------------


@pytest.fixture
def spill(tmp_path: Path) -> Iterator[SpillStore]:
    store = SpillStore(tmp_path / "view.sqlite")
    yield store
    store.close()


class ThreadNotingStore(SpillStore):
    """Records which thread each disk read ran on."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read_threads: list[threading.Thread] = []

    def get(self, job_id: str) -> dict[str, Any] | None:
        self.read_threads.append(threading.current_thread())
        return super().get(job_id)

    def versions(self, job_ids: Iterable[str]) -> dict[str, int]:
        self.read_threads.append(threading.current_thread())
        return super().versions(job_ids)


def done(job_id: str, version: int) -> dict[str, Any]:
    return {**snap(job_id, version, "completed"), "video_url": f"https://cdn.example/{job_id}.mp4"}


async def evicted_view(spill: SpillStore) -> JobView:
    """A view of one slot that has spilled the completed job "a" (version 3) to disk."""
    view = JobView(max_jobs=1, spill=spill)
    await view.apply_batch([snap("a", 1), done("a", 3), snap("b", 1)])
    assert len(view) == 1 and view.get("a") is None  # out of memory ...
    assert spill.versions(["a"]) == {"a": 3}  # ... and on disk
    return view


async def test_an_evicted_completed_job_reads_back_completed(spill: SpillStore) -> None:
    view = await evicted_view(spill)
    found = await view.lookup("a")
    assert found is not None and found["status"] == "completed"
    assert found["video_url"] == "https://cdn.example/a.mp4" and found["version"] == 3
    assert await view.wait_for("a", timeout=0) == found
    assert await view.lookup("never-seen") is None


async def test_without_a_spill_an_evicted_job_is_gone() -> None:
    view = JobView(max_jobs=1)
    await view.apply_batch([done("a", 3), snap("b", 1)])
    assert await view.lookup("a") is None


async def test_an_evicted_job_stays_visible_until_it_is_written(spill: SpillStore) -> None:
    view = JobView(max_jobs=1, spill=spill)
    view.apply(done("a", 3))
    view.apply(snap("b", 1))  # evicts a; nothing written yet
    assert spill.get("a") is None
    assert held(view, "a")["status"] == "completed"
    await view.flush()
    assert spill.get("a") is not None and view.get("a") is None


@pytest.mark.parametrize("batched", [True, False], ids=["feed-batch", "single-apply"])
@pytest.mark.parametrize(("version", "wins"), [(4, True), (3, False), (2, False)])
async def test_arrivals_after_eviction_keep_version_order(spill: SpillStore, batched: bool, version: int,
                                                          wins: bool) -> None:
    view = await evicted_view(spill)
    late = snap("a", version, "running")
    kept = (await view.apply_batch([late])) == 1 if batched else view.apply(late)
    assert kept is wins
    found = await view.lookup("a")
    assert found is not None
    assert (found["version"], found["status"]) == ((version, "running") if wins else (3, "completed"))


async def test_a_newer_arrival_is_pushed_to_subscribers_an_older_one_is_not(spill: SpillStore) -> None:
    view = await evicted_view(spill)
    queue = view.subscribe("a")
    await view.apply_batch([snap("a", 2), snap("a", 5)])
    assert queue.get_nowait()["version"] == 5 and queue.empty()


async def test_put_local_never_hides_a_spilled_state(spill: SpillStore) -> None:
    view = await evicted_view(spill)
    assert not view.put_local({**snap("a", 0, "queued")})
    found = await view.lookup("a")
    assert found is not None and found["status"] == "completed"


async def test_put_local_of_a_minted_id_reads_no_disk(tmp_path: Path) -> None:
    """A job id the ingress just minted has no snapshot anywhere: its 202 costs no query on the
    event loop, however much the view has spilled. An id from an Idempotency-Key still looks."""
    store = ThreadNotingStore(tmp_path / "view.sqlite")
    try:
        view = await evicted_view(store)
        store.read_threads.clear()
        assert view.put_local({**snap("fresh", 0, "queued")}, new_id=True)
        assert store.read_threads == []
        assert not view.put_local({**snap("a", 0, "queued")})  # keyed: the spilled state wins
        assert store.read_threads == [threading.main_thread()]
    finally:
        store.close()


async def test_the_feed_path_reads_the_disk_off_the_event_loop(tmp_path: Path) -> None:
    store = ThreadNotingStore(tmp_path / "view.sqlite")
    try:
        view = await evicted_view(store)
        store.read_threads.clear()
        await view.apply_batch([snap("a", 2), snap("c", 1), snap("d", 1), done("a", 4)])
        assert await view.lookup("b") is not None  # spilled by the batch above
        assert store.read_threads and threading.main_thread() not in store.read_threads
        assert len(store.read_threads) == 2  # one query for the whole batch, one for the lookup
    finally:
        store.close()


async def test_a_failing_disk_loses_evictions_but_not_the_feed(spill: SpillStore,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    view = JobView(max_jobs=1, spill=spill)
    spill.close()
    assert await view.apply_batch([done("a", 1), snap("b", 1)]) == 2
    assert "could not spill 1 evicted snapshots" in caplog.text
    assert held(view, "b")["version"] == 1 and view.get("a") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 9), st.booleans()), min_size=1, max_size=40),
       st.integers(1, 3))
def test_any_arrivals_and_flushes_read_back_the_highest_version(
        arrivals: list[tuple[str, int, bool]], bound: int) -> None:
    async def scenario(store: SpillStore) -> dict[str, int | None]:
        view = JobView(max_jobs=bound, spill=store)
        batch: list[dict[str, Any]] = []
        for job_id, version, flush_after in arrivals:
            batch.append(snap(job_id, version, "completed" if version % 3 == 0 else "running"))
            if flush_after:
                await view.apply_batch(batch)
                batch = []
        await view.apply_batch(batch)
        assert len(view) <= bound
        return {j: (s["version"] if (s := await view.lookup(j)) else None) for j in "abcde"}

    with tempfile.TemporaryDirectory() as tmp:
        store = SpillStore(Path(tmp) / "view.sqlite")
        try:
            seen = asyncio.run(scenario(store))
        finally:
            store.close()
    expected: dict[str, int | None] = {j: None for j in "abcde"}
    for job_id, version, _ in arrivals:
        expected[job_id] = max(version, expected[job_id] or 0)
    assert seen == expected


def test_subscribers_of_queued_jobs_hear_when_they_move_up_and_not_otherwise() -> None:
    from floodgate.api.view import STANDING
    from floodgate.queueboard import QueueBoard

    clock = [1000.0]
    view = JobView(board=QueueBoard({"kling": 10}), clock=lambda: clock[0])

    def queued(job_id: str, created: int) -> dict[str, Any]:
        return {"job_id": job_id, "version": 1, "status": "queued", "provider": "kling", "tenant": "t",
                "created_at": created, "updated_at": created}

    for i in range(40):
        view.apply(queued(f"j{i}", i))
    queue = view.subscribe("j39")
    assert view.nudge() == 0, "the first look only notes the place the subscriber saw"
    clock[0] += 1
    for i in range(3):  # 39 → 36: more than 5% of its place
        view.apply({**queued(f"j{i}", i), "version": 2, "status": "submitted", "updated_at": 999_000})
    assert view.nudge() == 1
    pushed = queue.get_nowait()
    assert view.board is not None
    assert pushed[STANDING] and pushed["version"] == 1 and view.board.position("j39") == 36
    view.apply({**queued("j3", 3), "version": 2, "status": "submitted", "updated_at": 999_000})  # 36 → 35
    clock[0] += 1
    assert view.nudge() == 0 and queue.empty(), "one step of 36 waits for the 5 s mark"
    clock[0] += 5
    assert view.nudge() == 1 and queue.get_nowait()[STANDING]
    clock[0] += 10
    assert view.nudge() == 0, "nothing moved: nothing to say"
    view.unsubscribe("j39", queue)
    clock[0] += 1
    assert view.nudge() == 0 and not view._told


def test_a_place_update_is_not_told_once_the_job_has_left_the_line() -> None:
    """A place update queued for a subscriber carries the snapshot it was made of (still queued);
    if the job starts before the subscriber's stream sends it, it would say queued with no place.
    Skipped instead: the job's new snapshot follows."""
    from types import SimpleNamespace

    from floodgate.api.heard import Told
    from floodgate.api.read import Reader
    from floodgate.api.view import STANDING

    clock = [1000.0]
    view = JobView(board=QueueBoard({"kling": 1}), clock=lambda: clock[0])
    reader = Reader(SimpleNamespace(view=view, settings=SimpleNamespace(origin_policy=None)))  # type: ignore[arg-type]
    waiting = {"job_id": "j", "version": 1, "status": "queued", "provider": "kling", "tenant": "t",
               "created_at": 1, "updated_at": 1}
    view.apply(waiting)
    update = {**waiting, STANDING: True}
    told = Told()
    told.sent(waiting)
    assert reader.worth_telling(update, told), "the same version, told again with its place"
    assert not reader.worth_telling(waiting, told), "the same version, not a place update"
    view.apply({**waiting, "version": 2, "status": "submitted", "updated_at": 2})
    assert not reader.worth_telling(update, told), "left the line: the update is stale"
    assert reader.worth_telling({**waiting, "version": 2, "status": "submitted"}, told)


async def test_a_long_batch_lets_the_loop_run_other_work_between_slices() -> None:
    """A feed catching up hands over thousands of snapshots back to back: the 202s waiting on the
    same loop must not wait for all of them."""
    view = JobView()
    batch = [snap(f"j{i}", 1) for i in range(3 * YIELD_EVERY + 5)]
    seen: list[int] = []  # how many snapshots the view held each time the other task got the loop

    async def requests_meanwhile() -> None:
        while not applying.done():
            seen.append(len(view))
            await asyncio.sleep(0)

    applying = asyncio.create_task(view.apply_batch(batch))
    other = asyncio.create_task(requests_meanwhile())
    assert await applying == len(batch)
    await other
    steps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert len(set(seen)) >= 3 and max(steps) <= YIELD_EVERY, seen


async def test_spilled_versions_hold_across_the_slices_of_a_batch(spill: SpillStore) -> None:
    view = await evicted_view(spill)  # "a" at version 3 on disk only
    filler = [snap(f"f{i}", 1) for i in range(YIELD_EVERY + 1)]
    interleaved: list[bool] = []

    async def a_keyed_retry() -> None:  # what the ingress may do while the batch is applied
        interleaved.append(view.put_local(snap("a", 0, "queued")))

    applying = asyncio.create_task(view.apply_batch([*filler, snap("a", 2, "running")]))
    await asyncio.sleep(0)
    other = asyncio.create_task(a_keyed_retry())
    assert await applying == len(filler)  # the older "a" is not kept, though it came after a yield
    await other
    assert interleaved == [False]
    found = await view.lookup("a")
    assert found is not None and (found["version"], found["status"]) == (3, "completed")


def test_held_snapshots_and_places_leave_the_garbage_collectors_lists() -> None:
    """A full collection walks every tracked object: 100,000 held snapshots and as many places on
    the queue board made each one a stall of the event loop (160 ms idle, up to 500 ms busy)."""
    board = QueueBoard({"kling": 10}, route=lambda model: "kling")
    view = JobView(board=board)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000):
        view.apply({**snap(f"j{i}", 1, "queued"), "model": "kling-2.1", "tenant": "t", "created_at": i,
                    "metadata": {"campaign": f"c{i}"}, "push": {"platform": "fcm", "token": f"d{i}"}})
    gc.collect()
    assert len(board) == 1000 and len(gc.get_objects()) - before < 500  # not one (let alone two) per job
    held = view.get("j7")
    assert held is not None and not gc.is_tracked(held)
    shown = job_resource(held)  # and readers see the maps as they were given
    assert shown["metadata"] == {"campaign": "c7"} and dict(held["push"]) == {"platform": "fcm", "token": "d7"}
    assert board.position("j7") == 7
