"""The jobs table's value (``floodgate.jobs.record.JobRecord``): what the change that wrote it sent
besides it, so that the same event read again sends that again, and records that say nothing of it
(every record of a job that has not ended, and those written before) read as they always did."""
from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from floodgate.jobs.record import JobRecord, Sent, sent_of
from floodgate.jobs.state import JobEvent, JobState, JobStatus, SameJob, apply, exact_job, hold

RUNNING = JobState(job_id="j1", tenant="t", provider="wan", status=JobStatus.RUNNING, attempt=1, version=4)
DONE = JobState(job_id="j1", tenant="t", provider="wan", status=JobStatus.COMPLETED, video_url="https://cdn/v.mp4",
                attempt=1, version=5)


@pytest.mark.parametrize("state", [RUNNING, DONE], ids=["live", "ended"])
def test_a_record_that_sent_what_an_end_always_sent_is_written_as_before(state: JobState) -> None:
    """The layout the previous version wrote, byte for byte: ``sent`` is written only when it is
    not what a record that says nothing of it means."""
    before = orjson.dumps({"v": 1, "s": state.to_dict(), "e": "e1", "src": [0, 7]})
    assert JobRecord(state, "e1", (0, 7)).encode() == before
    assert JobRecord(state, "e1", (0, 7), Sent.RESULT_AND_RELEASE).encode() == before
    assert JobRecord.decode(before) == JobRecord(state, "e1", (0, 7))
    assert JobRecord.decode(before).sent is Sent.RESULT_AND_RELEASE


@pytest.mark.parametrize("sent", list(Sent))
def test_what_was_sent_round_trips(sent: Sent) -> None:
    record = JobRecord(DONE, "wh:wan:w-end", (0, 7), sent)
    assert JobRecord.decode(record.encode()) == record


@pytest.mark.parametrize("odd", ["resend", 3, None, ["result"]])
def test_what_this_version_does_not_know_was_sent_reads_as_a_record_that_says_nothing(odd: object) -> None:
    raw = orjson.dumps({"v": 1, "s": DONE.to_dict(), "e": "e1", "sent": odd})
    assert JobRecord.decode(raw).sent is Sent.RESULT_AND_RELEASE


def _event(event_id: str, kind: str, **kw: Any) -> JobEvent:
    if kind == "completed":
        kw.setdefault("video_url", "https://cdn/v.mp4")
    return JobEvent(event_id=event_id, job_id="j1", kind=kind, at=2.0, **kw)


QUEUED = JobState(job_id="j1", provider="wan", created_at=1.0, updated_at=1.0)
AT_WAN = JobState(job_id="j1", provider="wan", provider_job_id="workflows/acme/video/req-1",
                  status=JobStatus.RUNNING, created_at=1.0, updated_at=1.0)


def by_request_id(provider: str, a: str, b: str) -> bool:
    """As fal's connector compares provider job ids: by the request id after the app path."""
    return a.rpartition("/")[2] == b.rpartition("/")[2]


@pytest.mark.parametrize(("before", "event", "same", "sent"), [
    # wan's webhook ended the job: the bridge released it, if it names the job's provider job.
    (AT_WAN, _event("wh:wan:1", "completed", provider="wan", provider_job_id="workflows/acme/video/req-1"),
     exact_job, Sent.RESULT),
    (AT_WAN, _event("wh:wan:1", "failed", provider="wan", provider_job_id="workflows/acme/req-1"),
     by_request_id, Sent.RESULT),  # one job, spelt two ways (fal)
    (AT_WAN, _event("wh:wan:1", "failed", provider="wan", provider_job_id="workflows/acme/req-1"),
     exact_job, Sent.RESULT_AND_RELEASE),  # another job: the job's slot is the agent's to free
    (QUEUED, _event("wh:wan:1", "cancelled", provider="wan"), exact_job, Sent.RESULT_AND_RELEASE),  # names none
    # Anything else that ends the job is the agent's to release: a poll, a user's cancel.
    (AT_WAN, _event("j1:completed:wan:0:poll", "completed", provider="wan",
                    provider_job_id="workflows/acme/video/req-1"), exact_job, Sent.RESULT_AND_RELEASE),
    (AT_WAN, _event("cancel-1", "cancelled"), exact_job, Sent.RESULT_AND_RELEASE),
    # A word on a job that had ended, which filled in a late fact: a release, no result.
    (dataclasses.replace(AT_WAN, provider_job_id=None, status=JobStatus.COMPLETED, video_url="https://cdn/v.mp4"),
     _event("wh:wan:2", "completed", provider="wan", provider_job_id="pw"), exact_job, Sent.RELEASE),
    # A job that has not ended: nothing to say.
    (AT_WAN, _event("wh:wan:3", "progress", provider="wan", progress=0.5), exact_job, Sent.RESULT_AND_RELEASE),
])
def test_what_a_change_sends_besides_the_record(before: JobState, event: JobEvent, same: SameJob,
                                                sent: Sent) -> None:
    step = apply(before, event, same)
    assert step.changed, step.reason
    assert sent_of(before, step, event, same) is sent


def test_a_reroute_that_took_in_a_kept_webhook_end_sends_what_that_end_would_have_sent() -> None:
    """The end is gone from the state once taken in: only the change that took it in can say."""
    done = _event("wh:kling:1", "cancelled", provider="kling", provider_job_id="pk")
    kept = hold(QUEUED, done)
    assert kept is not None and kept.state is not None
    rerouted = _event("j1:rerouted:wan:1", "rerouted", provider="kling", attempt=1)
    step = apply(kept.state, rerouted)
    assert step.became_terminal and step.ended_by == done
    assert sent_of(kept.state, step, rerouted) is Sent.RESULT
