from __future__ import annotations

import pytest

from floodgate.jobs.state import JobState, JobStatus
from floodgate.jobs.timing import Milestones, milestones

Q, S, R, C, F = (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED)


def st(status: JobStatus, at: float, provider: str | None = "kling") -> JobState:
    return JobState("j", model="kling-2.1", provider=provider, status=status, created_at=100.0, updated_at=at)


@pytest.mark.parametrize(("before", "after", "expected"), [
    (st(S, 101), st(R, 125), Milestones("kling", "kling-2.1", first_progress=25.0)),
    (st(Q, 100), st(R, 103), Milestones("kling", "kling-2.1", first_progress=3.0)),
    (st(R, 125), st(R, 130), None),  # more progress: not the first
    (st(R, 125), st(C, 190), Milestones("kling", "kling-2.1", completion=90.0)),
    # the running webhook was lost: completion is the first progress too
    (st(S, 101), st(C, 190), Milestones("kling", "kling-2.1", first_progress=90.0, completion=90.0)),
    (st(R, 125), st(F, 190), None),
    (st(C, 190), st(C, 191), None),
    (None, st(Q, 100), None),
    (st(Q, 100, provider=None), st(R, 110, provider=None), None),
])
def test_milestones(before: JobState | None, after: JobState, expected: Milestones | None) -> None:
    # Measured when the change is applied: here, at the change's own time.
    assert milestones(before, after, now=after.updated_at) == expected


def test_measured_up_to_now_not_to_the_providers_timestamp() -> None:
    # The provider stamps its event in whole seconds (100); the change is applied at 100.7.
    reached = milestones(st(S, 100.2), st(R, 100.0), now=100.7)
    assert reached is not None and reached.first_progress == pytest.approx(0.7)


def test_a_clock_that_went_back_never_gives_a_negative_time() -> None:
    reached = milestones(st(S, 101), st(R, 99), now=99.0)
    assert reached is not None and reached.first_progress == 0.0
