"""The job view shows a job ``submitted`` from its slot's record (no event, no jobs-table write):
``Submission.from_slot`` and ``JobView.submitted`` in any arrival order; no Kafka."""
from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from floodgate.api.view import JobView, Submission
from floodgate.dispatch import Order, Parked, Slot, slot_key
from floodgate.queueboard import QueueBoard


def snap(version: int, status: str = "queued", attempt: int = 0, job_id: str = "j") -> dict[str, Any]:
    return {"job_id": job_id, "version": version, "status": status, "attempt": attempt, "provider": "kling",
            "tenant": "t", "created_at": 1_000, "updated_at": 1_000 + version, "provider_job_id": None}


def sub(attempt: int = 0, job_id: str = "j", provider: str = "kling") -> Submission:
    return Submission(job_id=job_id, provider=provider, attempt=attempt, provider_job_id=f"pj-{attempt}",
                      at_ms=5_000)


def order(attempt: int = 0, provider: str = "kling") -> Order:
    return Order(job_id="j", tenant="t", model="kling-2.1", provider=provider, provider_model="m", prompt="p",
                 attempt=attempt, queued_at=1)


def test_a_slot_record_with_a_provider_job_id_is_a_submission() -> None:
    taken = Slot(attempt=1, taken_at=2.0, order=order(1, "wan"))
    assert Submission.from_slot(slot_key(0, "j"), Parked(order(1, "wan"), 4).encode(), 7) is None  # waiting
    assert Submission.from_slot(slot_key(0, "j"), taken.encode(), 7) is None  # taken, not yet accepted
    assert Submission.from_slot(slot_key(0, "j"), None, 7) is None  # freed (a tombstone)
    got = Submission.from_slot(slot_key(0, "j"), taken.submitted("pj-9").encode(), 7)
    assert got == Submission(job_id="j", provider="wan", attempt=1, provider_job_id="pj-9", at_ms=7)


def test_a_queued_job_reads_as_submitted_once_its_slot_says_so() -> None:
    view = JobView()
    view.apply(snap(1))
    queue = view.subscribe("j")
    assert view.submitted(sub())
    got = view.get("j")
    assert got is not None
    assert (got["status"], got["provider_job_id"], got["version"], got["updated_at"]) == ("submitted", "pj-0", 1, 5_000)
    told = queue.get_nowait()
    assert told["status"] == "submitted"
    assert not view.submitted(sub())  # the same record again (a log read from its start) tells nobody
    assert queue.empty()


def test_a_submission_read_before_the_queued_snapshot_waits_for_it() -> None:
    view = JobView()
    assert not view.submitted(sub())
    assert view.get("j") is None
    view.apply(snap(1))
    got = view.get("j")
    assert got is not None and got["status"] == "submitted"


def test_the_next_snapshot_supersedes_the_submission() -> None:
    view = JobView()
    view.apply(snap(1))
    view.submitted(sub())
    view.apply({**snap(2, "running"), "provider_job_id": "pj-0"})
    got = view.get("j")
    assert got is not None and got["status"] == "running"
    # A running job's slot record read late (another partition's fetch) does not take it back.
    assert not view.submitted(sub())
    got = view.get("j")
    assert got is not None and got["status"] == "running"


def test_a_submission_of_another_attempt_does_not_apply() -> None:
    view = JobView()
    view.apply(snap(1, attempt=1))  # rerouted: attempt 1 waits at its next provider
    assert not view.submitted(sub(0))  # the old attempt's slot
    got = view.get("j")
    assert got is not None and got["status"] == "queued"
    view2 = JobView()
    view2.apply(snap(1))  # still attempt 0 here: the reroute's snapshot is on its way
    assert not view2.submitted(sub(1, provider="wan"))
    assert view2.get("j")["status"] == "queued"  # type: ignore[index]
    view2.apply(snap(2, attempt=1))
    got = view2.get("j")
    assert got is not None and (got["status"], got["provider"]) == ("submitted", "wan")


def test_a_submitted_job_leaves_the_line_and_the_waiting_count() -> None:
    board = QueueBoard({"kling": 2})
    view = JobView(board=board, clock=lambda: 10.0)
    view.apply(snap(1, job_id="a"))
    view.apply(snap(1, job_id="b"))
    assert board.position("b") == 1 and view.open_jobs.waiting == 2
    view.submitted(sub(job_id="a"))
    assert board.position("a") is None and board.position("b") == 0
    assert view.open_jobs.waiting == 1 and view.open_jobs.open_for("t") == 2


def test_a_spilled_queued_job_reads_as_submitted(tmp_path: Any) -> None:
    from floodgate.api.spill import SpillStore

    async def run() -> None:
        view = JobView(max_jobs=1, spill=SpillStore.private(tmp_path / "spill"))
        await view.apply_batch([snap(1, job_id="old"), snap(1, job_id="new")])  # "old" goes to disk
        assert view.get("old") is None
        view.submitted(sub(job_id="old"))
        got = await view.lookup("old")
        assert got is not None and got["status"] == "submitted"

    asyncio.run(run())


STEPS = st.lists(st.sampled_from(["queued", "submission", "running", "completed"]), min_size=1, max_size=6)


@given(STEPS)
def test_any_arrival_order_ends_where_the_newest_snapshot_says(steps: list[str]) -> None:
    view = JobView()
    versions = {"queued": 1, "running": 2, "completed": 3}
    for step in steps:
        if step == "submission":
            view.submitted(sub())
        else:
            view.apply(snap(versions[step], step))
    got = view.get("j")
    snapshots = [s for s in steps if s != "submission"]
    if not snapshots:
        assert got is None
        return
    newest = max(snapshots, key=versions.__getitem__)
    expected = "submitted" if newest == "queued" and "submission" in steps else newest
    assert got is not None and got["status"] == expected
