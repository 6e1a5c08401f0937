"""The event that ended a job, read again after a later word changed the job's record: it still
sends what its first reading sent (``JobRecord.ended_by``).

The window: a late word on an ended job (a webhook that fills in the provider job id, a request read
after the cancel that ended its job) writes the record, naming itself as its last event. A worker
that dies once that write has landed but before the end's sends did reads the end again on
restart; the record must still say that the end's result (and release) are owed, or the job's
result never reaches ``results``. Records that need no ``end`` keep the bytes they always had.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from floodgate.api.cancel import cancel_event
from floodgate.jobs.record import JobRecord, Sent
from floodgate.jobs.state import JobState, JobStatus
from streams.jobs import JobDesk, SeenIds
from tests.unit.test_jobs_agent import (
    JOB,
    NOW,
    Connector,
    event,
    open_desk,
    record_of,
    request,
    sends,
    sent_reading,
    told,
    webhook,
)


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[JobDesk]:
    async with open_desk(tmp_path, wan=Connector(), kling=Connector()) as jobs:
        yield jobs


def restarted(desk: JobDesk) -> None:
    """The worker after a crash: only the table remembers what was read (and the sends of the
    records read again may never have landed)."""
    desk.seen_webhooks = SeenIds()


# -- the end read again after a late word ---------------------------------------------------------

Case = tuple[Callable[[], SimpleNamespace], Callable[[], SimpleNamespace], list[str]]

ENDS: dict[str, Case] = {
    # wan's poll ends the job (its release is the agent's); wan's webhook, read later, fills in
    # the provider job id.
    "poll": (lambda: told("completed", "wan", 0, suffix=":poll:1", video_url="https://cdn/w.mp4"),
             lambda: webhook("wan", id="w-done", state="completed", provider_job_id="pw",
                             video_url="https://cdn/w.mp4"),
             ["results", "release"]),
    # The owner cancels before wan's submission answered; wan's webhook of the cancel names its job.
    "cancel": (lambda: event(cancel_event(JOB, NOW + 500)),
               lambda: webhook("wan", id="w-cancelled", state="cancelled", provider_job_id="pw"),
               ["results", "release"]),
    # wan's webhook ends the job (the bridge released it: a result only); a poll answered before
    # it and read after it tells progress the record had not heard of.
    "webhook": (lambda: webhook("wan", id="w-failed", state="failed", provider_job_id="pw"),
                lambda: told("progress", "wan", 0, suffix=":poll:1", provider_job_id="pw", progress=0.4),
                ["results"]),
}


@pytest.mark.parametrize("end", sorted(ENDS))
async def test_the_end_read_again_after_a_late_word_sends_the_result_and_release_it_first_sent(
        desk: JobDesk, end: str) -> None:
    names = desk.pipe.names
    topics = {"results": names.results, "release": names.release("wan")}
    ending_of, late_word, owed = ENDS[end]
    ending = ending_of()  # once: a user's cancel has an id of its own
    await desk.on_record(request(offset=7))
    first = await sent_reading(desk, ending)
    assert [topic for topic, _ in first] == [topics[t] for t in owed]
    ended = record_of(desk)
    assert ended.state.terminal and b'"end"' not in desk.table[JOB.encode()], "the end's own record: no `end`"
    late = await sent_reading(desk, late_word())
    changed = record_of(desk)
    assert changed.state != ended.state and changed.last_event != ended.last_event, "a late fact: a new record"
    assert (changed.state.status, changed.sent) == (ended.state.status, Sent.RELEASE)
    assert not [topic for topic, _ in late if topic == names.results], "the late word sends no result"
    restarted(desk)
    again = await sent_reading(desk, ending)
    assert [topic for topic, _ in again] == [topic for topic, _ in first], "the end's sends, no more, no fewer"
    (_, result), = [(t, what) for t, what in again if t == names.results]
    (_, was), = [(t, what) for t, what in first if t == names.results]
    assert result[:2] == was[:2], "the same attempt and status"
    assert result[2] == was[2] < changed.state.version, (
        "at the version the end sent, not the record's newer one: the owner's webhook is named by it, "
        "and a newer one would reach the owner as a second webhook of the same end")
    assert [what for t, what in again if t != names.results] == [what for t, what in first if t != names.results]
    assert record_of(desk) == changed, "reading the end again writes nothing"


async def test_only_the_end_owes_the_result_again(desk: JobDesk) -> None:
    """wan → kling, ended by kling's poll, then kling's webhook fills in the provider job id. Read
    again: a word of the attempt the job left at wan sends nothing, the late word its release (as
    it first did), and only the end the result."""
    names = desk.pipe.names
    await desk.on_record(request(offset=7))
    left = told("running", "wan", 0, suffix=":poll:1", provider_job_id="pj-wan")
    await desk.on_record(left)
    await desk.on_record(told("rerouted", "wan", 1, provider="kling", error="wan unavailable"))
    ending = told("completed", "kling", 1, suffix=":poll:1", video_url="https://cdn/k.mp4")
    first = await sent_reading(desk, ending)
    late = webhook("kling", id="k-done", state="completed", provider_job_id="pk", video_url="https://cdn/k.mp4")
    late_first = await sent_reading(desk, late)
    assert [topic for topic, _ in late_first] == [names.release("kling")]
    restarted(desk)
    assert await sent_reading(desk, left) == [], "old news of an attempt the job left"
    restarted(desk)
    assert await sent_reading(desk, late) == late_first, "the late word: its release again, no result"
    restarted(desk)
    again = await sent_reading(desk, ending)
    assert [topic for topic, _ in again] == [topic for topic, _ in first] == [names.results, names.release("kling")]
    assert again[0][1][2] == first[0][1][2] < record_of(desk).state.version, "at the end's version"


async def test_a_cancel_read_again_after_its_request_filled_the_job_in_sends_its_result_and_no_release(
        desk: JobDesk) -> None:
    """A cancel read before its request ended a job at no provider: its first reading sent the
    result and released nothing (a release needs a provider). The request fills the provider in
    and writes the record, sending the result again: the first its owner's webhook carries (the
    cancel's had no target). The cancel read again sends the result at that version (the owner's
    webhook is named by it: a duplicate it drops) and still no release: a ``cancelled`` one would
    have wan cancel a job never dispatched."""
    names, out = desk.pipe.names, sends(desk)
    cancel = event(cancel_event(JOB, NOW + 500))
    first = await sent_reading(desk, cancel)
    assert [topic for topic, _ in first] == [names.results]
    refinished = await sent_reading(desk, request(offset=7))
    admitted = record_of(desk)
    assert admitted.state.provider == "wan" and admitted.last_event == f"{JOB}:queued", "the request wrote last"
    assert [(topic, what[2]) for topic, what in refinished] == [(names.results, admitted.state.version)]
    restarted(desk)
    again = await sent_reading(desk, cancel)
    assert [topic for topic, _ in again] == [names.results]
    # The request's result, again: with its fields, at its version (not the cancel's, which no
    # webhook of the owner's carried: at it, this one would be the owner's second).
    assert (out.to(names.results)[-1]["tenant"], again[0][1][2]) == ("acme", admitted.state.version)
    assert first[0][1][2] < admitted.state.version
    assert not out.to(names.release("wan"))


async def test_the_end_is_kept_through_every_later_write(desk: JobDesk) -> None:
    """Two late words: the second write keeps the end the first one kept, not the first word."""
    names = desk.pipe.names
    await desk.on_record(request(offset=7))
    ending = event(cancel_event(JOB, NOW + 500))
    await desk.on_record(ending)
    cancel_id = record_of(desk).last_event
    await desk.on_record(webhook("wan", id="w-cancelled", state="cancelled", provider_job_id="pw"))
    await desk.on_record(told("progress", "wan", 0, suffix=":poll:1", progress=0.5))
    kept = record_of(desk)
    assert kept.last_event == f"{JOB}:progress:wan:0:poll:1", "a second late fact wrote the record"
    restarted(desk)
    again = await sent_reading(desk, ending)
    assert [(topic, what[1]) for topic, what in again] == [(names.results, "cancelled"),
                                                            (names.release("wan"), "cancelled")]
    assert kept.ended_by is not None and (kept.ended_by.event_id, kept.ended_by.sent) == (
        cancel_id, Sent.RESULT_AND_RELEASE), "the cancel, not the first late word"


# -- the record: `end` is written only when a later change wrote an ended job's record -------------

LIVE = JobState(job_id="j1", tenant="t", provider="wan", status=JobStatus.RUNNING, attempt=1, version=4)
DONE = JobState(job_id="j1", tenant="t", provider="wan", provider_job_id="pw", status=JobStatus.COMPLETED,
                video_url="https://cdn/v.mp4", attempt=1, version=6)
UNDISPATCHED = JobState(job_id="j1", status=JobStatus.CANCELLED, version=1)


@pytest.mark.parametrize("sent", list(Sent))
@pytest.mark.parametrize("state", [LIVE, DONE], ids=["live", "ended"])
def test_a_record_with_no_end_to_keep_is_written_as_before(state: JobState, sent: Sent) -> None:
    """The layout the previous version wrote, byte for byte; and what it wrote reads as no end."""
    doc: dict[str, Any] = {"v": 1, "s": state.to_dict(), "e": "e1", "src": [0, 7]}
    if sent is not Sent.RESULT_AND_RELEASE:
        doc["sent"] = sent.value
    before = orjson.dumps(doc)
    assert JobRecord(state, "e1", (0, 7), sent, ended_by=None).encode() == before
    assert JobRecord.decode(before) == JobRecord(state, "e1", (0, 7), sent)
    assert JobRecord.decode(before).ended_by is None


@pytest.mark.parametrize(("end_sent", "written"), [(Sent.RESULT_AND_RELEASE, {"e": "end-1", "v": DONE.version}),
                                                   (Sent.RESULT, {"e": "end-1", "sent": "result", "v": DONE.version})])
def test_the_end_kept_by_a_later_write_round_trips(end_sent: Sent, written: dict[str, object]) -> None:
    """``end`` as ``e`` and ``sent`` are at the top: what it says by default goes unwritten; ``v``
    is the job's version the end's record had."""
    end = JobRecord(DONE, "end-1", (0, 7), end_sent).ending
    assert end is not None and (end.event_id, end.sent, end.version) == ("end-1", end_sent, DONE.version)
    later = JobRecord(DONE, "wh:wan:late", (0, 7), Sent.RELEASE, ended_by=end)
    raw = later.encode()
    assert raw == orjson.dumps({"v": 1, "s": DONE.to_dict(), "e": "wh:wan:late", "src": [0, 7],
                                "sent": "release", "end": written})
    assert JobRecord.decode(raw) == later
    assert later.ending == end, "a write after this one keeps the same end"


@pytest.mark.parametrize("odd", ["end-1", 3, None, {"sent": "result"}, {"e": 7}, ["end-1", "result"]])
def test_an_end_this_version_cannot_read_reads_as_none(odd: object) -> None:
    raw = orjson.dumps({"v": 1, "s": DONE.to_dict(), "e": "late", "sent": "release", "end": odd})
    assert JobRecord.decode(raw).ended_by is None


@pytest.mark.parametrize("odd", ["3", 3.0, None, [3]])
def test_an_end_whose_version_this_version_cannot_read_keeps_the_records_own(odd: object) -> None:
    raw = orjson.dumps({"v": 1, "s": DONE.to_dict(), "e": "late", "end": {"e": "end-1", "v": odd}})
    end = JobRecord.decode(raw).ended_by
    assert end is not None and (end.event_id, end.version) == ("end-1", None)


def test_an_end_sent_in_a_way_this_version_does_not_know_reads_as_result_and_release() -> None:
    raw = orjson.dumps({"v": 1, "s": DONE.to_dict(), "e": "late", "end": {"e": "end-1", "sent": "resend"}})
    end = JobRecord.decode(raw).ended_by
    assert end is not None and (end.event_id, end.sent) == ("end-1", Sent.RESULT_AND_RELEASE)


@pytest.mark.parametrize(("record", "owed"), [
    (JobRecord(LIVE, "e1"), None),  # not ended: nothing to keep
    (JobRecord(DONE, None), None),  # names no event: none to read again
    (JobRecord(DONE, "e1", sent=Sent.RESULT), ("e1", Sent.RESULT)),
    (JobRecord(DONE, "e1"), ("e1", Sent.RESULT_AND_RELEASE)),
    # An end at no provider released nothing: a request filling the provider in does not make it owe one.
    (JobRecord(UNDISPATCHED, "cancel-1"), ("cancel-1", Sent.RESULT)),
])
def test_the_end_a_later_write_keeps(record: JobRecord, owed: tuple[str, Sent] | None) -> None:
    end = record.ending
    assert (None if end is None else (end.event_id, end.sent)) == owed
