"""The jobs agent (``streams.jobs.JobDesk``) without a broker: records of the three input topics
are handed to ``on_record`` in the order the worker's read order could hand them out; the jobs
table is a dict (Faust's own table only writes from inside a stream), and sends are recorded."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from connectors.providers.base import ProviderEvent
from connectors.providers.fal import FalProvider
from floodgate import codec
from floodgate.api.cancel import cancel_event
from floodgate.dispatch import ENDED
from floodgate.jobs.record import JobRecord
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from streams.app import create_app
from streams.context import Pipeline
from streams.emit import Emitter
from streams.jobs import JobDesk, SeenIds, home_partition

NOW = 1_800_000_000_000
JOB = "job-1"
SETTINGS = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", table_store="memory",
                                                simulator_url="http://127.0.0.1:9")
TOPICS = TopicNames(SETTINGS)
HOME = home_partition(JOB.encode(), SETTINGS.partitions)


class Sends(Emitter):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def send(self, topic: str, schema: str, key: str | None, record: dict[str, Any]) -> None:
        codec.encode(schema, record)  # what would go on the wire must be a valid record
        self.sent.append((topic, schema, record))

    def to(self, topic: str) -> list[dict[str, Any]]:
        return [record for t, _, record in self.sent if t == topic]


def new_desk(tmp_path: Path) -> JobDesk:
    settings = SETTINGS.with_overrides(cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    setup = dev_setup(settings.simulator_url)
    pipe = Pipeline(app, settings, setup, {name: object() for name in setup.routing.providers})
    pipe.emit = Sends(app)
    return JobDesk(pipe)


@contextlib.asynccontextmanager
async def open_desk(tmp_path: Path, **providers: Any) -> AsyncIterator[JobDesk]:
    """``new_desk`` with a plain dict for its table and ``providers``' connectors added, closed after."""
    jobs = new_desk(tmp_path)
    jobs.table = {}  # type: ignore[assignment]
    jobs.pipe.providers.update(providers)
    try:
        yield jobs
    finally:
        await jobs.pipe.close()


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[JobDesk]:
    async with open_desk(tmp_path) as jobs:
        yield jobs


def sends(desk: JobDesk) -> Sends:
    assert isinstance(desk.pipe.emit, Sends)
    return desk.pipe.emit


def request(offset: int) -> SimpleNamespace:
    """A ``requests`` record of ``JOB`` on its home partition, as the API writes it."""
    value, headers = codec.encode("JobRequest", {
        "job_id": JOB, "tenant": "acme", "user_id": "u1", "model": "wan-2.6",
        "input": {"prompt": "dunes", "image_url": None, "params": {}},
        "webhook_url": "https://acme.example/hook", "metadata": {}, "idempotency_key": None,
        "request_hash": "a" * 64, "accepted_at": NOW, "source": "http", "priority": "standard",
        "deadline_s": None, "notify": {"push": {"platform": "fcm", "token": "device-1"}}})
    return SimpleNamespace(topic=TOPICS.requests, partition=HOME, offset=offset, value=value, headers=list(headers))


def event(record: dict[str, Any]) -> SimpleNamespace:
    """An ``events`` record."""
    value, headers = codec.encode("JobEvent", record)
    return SimpleNamespace(topic=TOPICS.events, partition=HOME, offset=0, value=value, headers=list(headers))


def told(kind: str, by: str, attempt: int, suffix: str = "", **fields: Any) -> SimpleNamespace:
    """An event as provider ``by``'s dispatcher writes it (its poll, its timeout, its fallback)."""
    return event({"event_id": f"{JOB}:{kind}:{by}:{attempt}{suffix}", "job_id": JOB, "kind": kind,
                  "at": NOW + 1000, "provider": by, "attempt": attempt, **fields})


def record_of(desk: JobDesk) -> JobRecord:
    record = desk.get(JOB.encode())
    assert record is not None
    return record


async def test_a_cancel_read_before_its_request_gets_a_result_with_the_requests_fields_once(desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    await desk.on_record(event(cancel_event(JOB, NOW + 500)))  # the read order handed `events` out first
    first, = out.to(names.results)
    assert (first["status"], first["tenant"], first["webhook_url"], first["push"]) == ("cancelled", "default",
                                                                                       None, None)
    admitting = request(offset=7)
    await desk.on_record(admitting)
    assert len(out.to(names.results)) == 2, "the result is sent again, now that the request is known"
    result = out.to(names.results)[-1]
    assert (result["status"], result["tenant"], result["user_id"], result["model"]) == ("cancelled", "acme", "u1",
                                                                                        "wan-2.6")
    assert result["webhook_url"] == "https://acme.example/hook"
    assert result["push"] == {"platform": "fcm", "token": "device-1"}
    assert result["version"] > first["version"], "a newer version: outgoing webhooks and feeds take it"
    assert not out.to(names.dispatch("wan")), "a cancelled job is never dispatched"
    assert record_of(desk).admitted_by == (admitting.partition, admitting.offset)
    await desk.on_record(request(offset=9))  # the same job requested again: a duplicate
    await desk.on_record(event(cancel_event(JOB, NOW + 900)))  # and cancelled again: no news
    assert len(out.to(names.results)) == 2 and not out.to(names.dispatch("wan"))


async def test_a_request_read_after_its_cancel_ended_the_job_is_never_dispatched_even_when_replayed(
        desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    await desk.on_record(event(cancel_event(JOB, NOW + 500)))
    admitting = request(offset=7)
    await desk.on_record(admitting)
    await desk.on_record(admitting)  # the same record again (its offset was not committed)
    assert not out.to(names.dispatch("wan")) and record_of(desk).state.status.value == "cancelled"
    # (The replay sends the admission's outputs again, as any record seen again does.)
    assert [r["tenant"] for r in out.to(names.results)] == ["default", "acme", "acme"]


async def test_a_request_that_ends_nothing_sends_no_result(desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    await desk.on_record(request(offset=7))
    assert not out.to(names.results) and len(out.to(names.dispatch("wan"))) == 1


async def moved_to_kling(desk: JobDesk) -> JobRecord:
    """``JOB`` admitted at wan (attempt 0), then moved on to kling (attempt 1)."""
    await desk.on_record(request(offset=7))
    await desk.on_record(told("rerouted", "wan", 1, provider="kling", error="wan unavailable"))
    record = record_of(desk)
    assert (record.state.provider, record.state.attempt) == ("kling", 1)
    return record


async def test_an_end_told_by_a_provider_the_job_left_frees_that_providers_slot_and_changes_nothing(
        desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    before = await moved_to_kling(desk)
    # wan still held a slot for attempt 0 (its submission went on behind the fallback): past the
    # job timeout, wan's dispatcher asks, hears the job completed, and tells it.
    await desk.on_record(told("completed", "wan", 0, provider_job_id="pj-wan", video_url="https://cdn/v.mp4",
                              suffix=":poll:1"))
    release, = out.to(names.release("wan"))
    assert (release["job_id"], release["provider"], release["status"], release["provider_job_id"]) == (
        JOB, "wan", ENDED, "pj-wan")
    # The timeout that could not hear an end fails the job: no provider job in that event.
    await desk.on_record(told("failed", "wan", 0, error="no result from wan after 900s"))
    assert [(r["status"], r["attempt"]) for r in out.to(names.release("wan"))[1:]] == [("failed", 0)]
    assert record_of(desk) == before, "the job's own state is kling's"
    assert not out.to(names.results) and not out.to(names.release("kling"))


async def test_news_from_a_provider_the_job_left_that_is_not_an_end_frees_nothing(desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    before = await moved_to_kling(desk)
    await desk.on_record(told("running", "wan", 0, provider_job_id="pj-wan", suffix=":poll:1"))
    assert not out.to(names.release("wan")) and record_of(desk) == before


class Connector:
    """A provider's connector as the jobs agent uses it: it parses a webhook (here a JSON body of
    the event's fields) and, without ``same_job``, compares provider job ids exactly."""

    def parse_webhook(self, headers: dict[str, str], body: bytes) -> ProviderEvent:
        said = orjson.loads(body)
        return ProviderEvent(webhook_id=said["id"], provider_job_id=said["provider_job_id"], job_id=JOB,
                             state=said["state"], progress=None, video_url=said.get("video_url"), error=None,
                             occurred_at=(NOW + 2000) / 1000)


class FalNamedConnector(Connector):
    """Names one job ``{app}/{request_id}`` under two apps, as fal's first requests of a model are
    named: under fal's by their submission, under the app foreseen by their webhook."""

    same_job = FalProvider.same_job


def webhook(by: str, **said: Any) -> SimpleNamespace:
    """A ``webhooks`` record of ``JOB`` from provider ``by``, as the bridge writes it."""
    value, headers = codec.encode("WebhookEnvelope", {"webhook_id": said["id"], "provider": by,
                                                      "received_at": NOW + 2000, "headers": {},
                                                      "body": orjson.dumps(said)})
    return SimpleNamespace(topic=TOPICS.webhooks, partition=HOME, offset=0, value=value, headers=list(headers))


@pytest.mark.parametrize(("connector", "releases"), [(FalNamedConnector(), 0), (Connector(), 1)])
async def test_an_end_the_bridge_released_under_another_name_of_the_job_is_not_released_again(
        desk: JobDesk, connector: Connector, releases: int) -> None:
    """The job's provider job id came from a status call (the slot's); its webhook names the job
    otherwise. The bridge released the slot under the webhook's name: where the connector says both
    name one job, that release frees it and the jobs agent sends none; elsewhere ids that differ
    name different jobs, and the jobs agent frees the job's slot itself."""
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["wan"] = connector
    await desk.on_record(request(offset=7))
    await desk.on_record(told("running", "wan", 0, provider_job_id="workflows/acme/video/req-1", suffix=":poll:1"))
    await desk.on_record(webhook("wan", id="req-1:OK", state="completed", provider_job_id="workflows/acme/req-1",
                                 video_url="https://cdn/v.mp4"))
    assert record_of(desk).state.status.value == "completed" and len(out.to(names.results)) == 1
    assert len(out.to(names.release("wan"))) == releases


# -- news from the provider a job is moving to, read before the job's `rerouted` event ------------
#
# wan's dispatcher moves the job on by writing `rerouted` to `events` and the order straight to
# `dispatch.kling`: kling may run the job, and its word reach the jobs agent (through `webhooks`,
# or kling's own poll through `events`), before the agent reads `rerouted`. Each topic's partition
# has a lag of its own, so any order of the two is a read order the worker can hand out.

DONE_AT_KLING: dict[str, Any] = {"webhook": lambda: webhook("kling", id="k-done", state="completed",
                                                             provider_job_id="pj-kling",
                                                             video_url="https://cdn/k.mp4"),
                                 "poll": lambda: told("completed", "kling", 1, suffix=":poll:1",
                                                      provider_job_id="pj-kling", video_url="https://cdn/k.mp4")}


@pytest.mark.parametrize("said_by", sorted(DONE_AT_KLING))
async def test_a_completion_at_the_provider_a_job_is_moving_to_counts_once_the_reroute_is_read(
        desk: JobDesk, said_by: str) -> None:
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["kling"] = Connector()
    await desk.on_record(request(offset=7))
    await desk.on_record(webhook("kling", id="k-run", state="running", provider_job_id="pj-kling"))
    await desk.on_record(DONE_AT_KLING[said_by]())
    waiting = record_of(desk).state
    assert (waiting.provider, waiting.attempt, waiting.status.value) == ("wan", 0, "queued"), "not yet the job's"
    assert not out.to(names.results) and not out.to(names.release("kling")), "kling's news is kept, not dropped"
    await desk.on_record(told("rerouted", "wan", 1, provider="kling", error="wan unavailable"))
    done = record_of(desk).state
    assert (done.status.value, done.provider, done.attempt) == ("completed", "kling", 1)
    assert (done.provider_job_id, done.video_url, done.route_note) == ("pj-kling", "https://cdn/k.mp4",
                                                                       "wan unavailable")
    result, = out.to(names.results)
    assert (result["status"], result["provider"], result["attempt"]) == ("completed", "kling", 1)
    # The end frees kling's slot as it would coming after the reroute: a webhook's by the bridge's
    # release, a poll's by the jobs agent's (nobody else frees it).
    releases = [(r["attempt"], r["status"]) for r in out.to(names.release("kling"))]
    assert releases == ([] if said_by == "webhook" else [(1, "completed")])


async def test_news_kept_for_the_reroute_is_a_duplicate_when_it_comes_again(desk: JobDesk) -> None:
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["kling"] = Connector()
    await desk.on_record(request(offset=7))
    done = webhook("kling", id="k-done", state="completed", provider_job_id="pj-kling", video_url="https://cdn/k.mp4")
    await desk.on_record(done)
    kept = record_of(desk)
    desk.seen_webhooks = SeenIds()  # a restarted worker: only the table remembers the webhook
    await desk.on_record(done)
    assert record_of(desk) == kept, "the same webhook again changes nothing"
    rerouted = told("rerouted", "wan", 1, provider="kling", error="wan unavailable")
    await desk.on_record(rerouted)
    ended = record_of(desk)
    assert ended.state.status.value == "completed"
    await desk.on_record(done)
    assert record_of(desk) == ended and len(out.to(names.results)) == 1, "and after the reroute"
    await desk.on_record(rerouted)  # the same record again (its offset was not committed): its outputs again
    assert record_of(desk) == ended and len(out.to(names.results)) == 2
    assert out.to(names.results)[0] == out.to(names.results)[1]


def afresh(desk: JobDesk) -> None:
    """The agent as a new worker with an empty table finds it: nothing read, nothing sent."""
    desk.table = {}  # type: ignore[assignment]
    desk.seen_webhooks = SeenIds()
    sends(desk).sent.clear()


def end_at_kling(said_by: str, end: str) -> SimpleNamespace:
    """kling's word that the job ended there: its webhook, or its dispatcher's poll of attempt 1."""
    video = {"video_url": "https://cdn/k.mp4"} if end == "completed" else {}
    if said_by == "webhook":
        return webhook("kling", id=f"k-{end}", state=end, provider_job_id="pj-kling", **video)
    return told(end, "kling", 1, suffix=":poll:1", provider_job_id="pj-kling", **video)


ENDS_AS = {"completed": "completed", "failed": "failed", "cancelled": "failed"}
"""The job's status after its provider's word that it ended (a provider's cancel is no owner's)."""


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
@pytest.mark.parametrize("said_by", ["webhook", "poll"])
async def test_an_end_kept_for_the_reroute_is_released_as_it_is_when_it_comes_after_the_reroute(
        desk: JobDesk, said_by: str, end: str) -> None:
    """What ``release.kling`` gets for kling's end does not depend on which of the end and the
    reroute the worker reads first: a webhook's end was released by the bridge (so the agent sends
    nothing); a poll's end is the agent's to release. kling's cancel fails the job (a provider's
    word, not its owner's cancel), so neither is ever a ``cancelled`` release, which has the
    dispatcher cancel and mark a job kling already said was cancelled."""
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["kling"] = Connector()
    to_kling = told("rerouted", "wan", 1, provider="kling", error="wan unavailable")
    sent: dict[str, list[tuple[Any, ...]]] = {}
    for order, reads in {"in order": [to_kling, end_at_kling(said_by, end)],
                         "end first": [end_at_kling(said_by, end), to_kling]}.items():
        afresh(desk)
        await desk.on_record(request(offset=7))
        for record in reads:
            await desk.on_record(record)
        assert [r["status"] for r in out.to(names.results)] == [ENDS_AS[end]], order
        sent[order] = [(r["attempt"], r["status"], r["provider_job_id"]) for r in out.to(names.release("kling"))]
    assert sent["end first"] == sent["in order"]
    assert sent["in order"] == ([] if said_by == "webhook" else [(1, ENDS_AS[end], None)])


async def test_a_completion_at_the_provider_a_job_goes_back_to_counts_once_the_reroute_is_read(
        desk: JobDesk) -> None:
    """wan → kling → wan: wan-2.6 spills from wan's line to kling-2.1, kling's submission fails,
    and kling-2.1's fallback is wan. kling's dispatcher writes the reroute to `events` and the order
    straight to `dispatch.wan`: wan's webhooks of that attempt may be read while the table still
    has the job at kling, though wan is a provider the job has been at."""
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["wan"] = Connector()
    await desk.on_record(request(offset=7))
    await desk.on_record(told("rerouted", "wan", 1, provider="kling", model="kling-2.1",
                              error="spilled from wan-2.6"))
    await desk.on_record(webhook("wan", id="w-run", state="running", provider_job_id="pj-wan-2"))
    await desk.on_record(webhook("wan", id="w-done", state="completed", provider_job_id="pj-wan-2",
                                 video_url="https://cdn/w.mp4"))
    waiting = record_of(desk).state
    assert (waiting.provider, waiting.attempt, waiting.status.value) == ("kling", 1, "queued"), "not yet the job's"
    assert not out.to(names.results)
    await desk.on_record(told("rerouted", "kling", 2, provider="wan", error="kling unavailable"))
    done = record_of(desk).state
    assert (done.status.value, done.provider, done.attempt) == ("completed", "wan", 2)
    assert (done.provider_job_id, done.video_url, done.serving_model) == ("pj-wan-2", "https://cdn/w.mp4",
                                                                         "kling-2.1")
    result, = out.to(names.results)
    assert (result["status"], result["provider"], result["attempt"]) == ("completed", "wan", 2)
    assert not out.to(names.release("wan")), "the bridge released wan's slot when wan said the job ended"


# -- back at a provider the job left: the late word of the provider job it left there --------------


async def back_at_wan(desk: JobDesk) -> JobRecord:
    """``JOB`` admitted at wan, whose job ``pw-0`` runs (the table learns it); moved on to kling
    (attempt 1), then back to wan (attempt 2), whose job of that attempt the table has not heard of."""
    await desk.on_record(request(offset=7))
    await desk.on_record(webhook("wan", id="w0-run", state="running", provider_job_id="workflows/acme/video/req-0"))
    await desk.on_record(told("rerouted", "wan", 1, provider="kling", model="kling-2.1", error="spilled"))
    await desk.on_record(told("rerouted", "kling", 2, provider="wan", error="kling unavailable"))
    record = record_of(desk)
    assert (record.state.provider, record.state.attempt, record.state.provider_job_id) == ("wan", 2, None)
    return record


@pytest.mark.parametrize("end", ["failed", "completed", "cancelled"])
@pytest.mark.parametrize("named", ["workflows/acme/video/req-0", "workflows/acme/req-0"])
async def test_a_late_end_of_the_provider_job_a_job_left_does_not_end_its_attempt_back_at_that_provider(
        desk: JobDesk, end: str, named: str) -> None:
    """wan's webhook that its first job ended, read once the job is back at wan: it names no
    attempt, but that provider job (however fal spells it), so it is old news. Only the slot that
    holds that provider job is freed, if one still does: never the attempt now at wan."""
    names, out = desk.pipe.names, sends(desk)
    desk.pipe.providers["wan"] = FalNamedConnector()
    before = await back_at_wan(desk)
    video = {"video_url": "https://cdn/w0.mp4"} if end == "completed" else {}
    await desk.on_record(webhook("wan", id=f"w0-{end}", state=end, provider_job_id=named, **video))
    assert record_of(desk) == before, "the attempt at wan goes on"
    assert not out.to(names.results)
    release, = out.to(names.release("wan"))
    assert (release["status"], release["provider_job_id"]) == (ENDED, named)


# -- the same event read again: what its first reading sent, no more ---------------------------------


async def sent_reading(desk: JobDesk, record: SimpleNamespace) -> list[tuple[str, Any]]:
    """What ``desk`` sends when it reads ``record``: each send's topic and what tells it apart (a
    result's attempt, status, version and provider job; a release's, but the version)."""
    out = sends(desk)
    first = len(out.sent)
    await desk.on_record(record)
    return [(topic, (r.get("attempt"), r["status"], r.get("version"), r.get("provider_job_id")))
            for topic, _, r in out.sent[first:]]


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
async def test_a_webhook_end_read_again_sends_what_its_first_reading_sent(desk: JobDesk, end: str) -> None:
    """The bridge released the slot when wan said the job ended: neither reading sends a release
    (a ``cancelled`` one would have wan's dispatcher cancel a job wan said was cancelled)."""
    desk.pipe.providers["wan"] = Connector()
    await desk.on_record(request(offset=7))
    await desk.on_record(webhook("wan", id="w-run", state="running", provider_job_id="pw"))
    video = {"video_url": "https://cdn/w.mp4"} if end == "completed" else {}
    ended = webhook("wan", id="w-end", state=end, provider_job_id="pw", **video)
    first = await sent_reading(desk, ended)
    assert [topic for topic, _ in first] == [desk.pipe.names.results]
    desk.seen_webhooks = SeenIds()  # a restarted worker: its sends may not have landed
    again = await sent_reading(desk, ended)
    assert again == first


@pytest.mark.parametrize("said_by", ["webhook", "poll"])
async def test_a_reroute_that_took_in_a_kept_end_read_again_sends_what_its_first_reading_sent(
        desk: JobDesk, said_by: str) -> None:
    desk.pipe.providers["kling"] = Connector()
    await desk.on_record(request(offset=7))
    await desk.on_record(end_at_kling(said_by, "cancelled"))
    to_kling = told("rerouted", "wan", 1, provider="kling", error="wan unavailable")
    first = await sent_reading(desk, to_kling)
    assert record_of(desk).state.status.value == "failed"  # kling's cancel: a provider's, no owner's
    again = await sent_reading(desk, to_kling)
    assert again == first
    releases = [what for topic, what in again if topic == desk.pipe.names.release("kling")]
    assert releases == ([] if said_by == "webhook" else [(1, "failed", None, None)])


async def test_a_late_fact_on_an_ended_job_read_again_sends_no_result_its_first_reading_did_not(
        desk: JobDesk) -> None:
    """wan's poll ended the job (its release is the agent's); wan's webhook, read later, fills in
    the provider job id: a change of the record, whose first reading sent a release to make sure
    no slot stays alive, and no result (a result of a new version is a new webhook to the owner)."""
    names = desk.pipe.names
    desk.pipe.providers["wan"] = Connector()
    await desk.on_record(request(offset=7))
    await desk.on_record(told("completed", "wan", 0, suffix=":poll:1", video_url="https://cdn/w.mp4"))
    late = webhook("wan", id="w-done", state="completed", provider_job_id="pw", video_url="https://cdn/w.mp4")
    first = await sent_reading(desk, late)
    assert record_of(desk).state.provider_job_id == "pw", "a late fact: the record changed"
    assert [topic for topic, _ in first] == [names.release("wan")]
    desk.seen_webhooks = SeenIds()
    again = await sent_reading(desk, late)
    assert again == first


async def test_a_record_written_before_it_said_what_was_sent_is_read_again_as_before(desk: JobDesk) -> None:
    """A job a webhook ended, in a record the previous version wrote: the same webhook read again
    sends the result and the release with the job's status, as that version did."""
    desk.pipe.providers["wan"] = Connector()
    await desk.on_record(request(offset=7))
    ended = webhook("wan", id="w-end", state="completed", provider_job_id="pw", video_url="https://cdn/w.mp4")
    await desk.on_record(ended)
    doc = orjson.loads(desk.table[JOB.encode()])
    doc.pop("sent", None)
    desk.table[JOB.encode()] = orjson.dumps(doc)
    desk.seen_webhooks = SeenIds()
    again = await sent_reading(desk, ended)
    assert [(topic, what[:2]) for topic, what in again] == [(desk.pipe.names.results, (0, "completed")),
                                                            (desk.pipe.names.release("wan"), (0, "completed"))]


# -- back at a provider the job left: its dispatcher's word of the attempt it left there -------------


async def back_again(desk: JobDesk, hops: tuple[str, ...]) -> JobRecord:
    """``JOB`` admitted at ``hops[0]`` (wan), moved on along ``hops``, back at a provider it left."""
    await desk.on_record(request(offset=7))
    for attempt in range(1, len(hops)):
        await desk.on_record(told("rerouted", hops[attempt - 1], attempt, provider=hops[attempt],
                                  error=f"{hops[attempt - 1]} unavailable"))
    record = record_of(desk)
    assert (record.state.provider, record.state.attempt) == (hops[-1], len(hops) - 1)
    return record


def old_slots_end(said_by: str, by: str, attempt: int) -> SimpleNamespace:
    """``by``'s dispatcher's word that its slot of ``attempt`` ended: its timeout (after a cancel
    call; no provider job in the event), or a poll of the slot's provider job, which the table
    never learned."""
    if said_by == "timeout":
        return told("failed", by, attempt, error=f"no result from {by} after 900s")
    return told("completed", by, attempt, suffix=":poll:1", provider_job_id="pj-old",
                video_url="https://cdn/old.mp4")


OLD_SLOT_RELEASE = {"timeout": ("failed", None), "poll": (ENDED, "pj-old")}
"""What frees the old slot: that attempt's slot (or an earlier one's), or the one holding that job."""


@pytest.mark.parametrize("said_by", sorted(OLD_SLOT_RELEASE))
@pytest.mark.parametrize("hops", [("wan", "kling", "wan"), ("wan", "kling", "wan", "kling")],
                         ids=["wan-0-of-2", "kling-1-of-3"])
async def test_a_late_end_of_the_slot_of_an_attempt_the_job_left_does_not_end_its_attempt_back_there(
        desk: JobDesk, hops: tuple[str, ...], said_by: str) -> None:
    """wan → kling → wan (→ kling): the provider's dispatcher still held the slot of the job's
    attempt there before (a duplicate dispatch) and tells its end once the job is back. It names
    that attempt: the attempt now there goes on, and the release frees only the old slot (the
    dispatcher frees a slot of the release's attempt or an earlier one), never with ``cancelled``."""
    names, out = desk.pipe.names, sends(desk)
    before = await back_again(desk, hops)
    back, left, now = hops[-1], hops.index(hops[-1]), len(hops) - 1
    status, named = OLD_SLOT_RELEASE[said_by]
    await desk.on_record(old_slots_end(said_by, back, left))
    assert record_of(desk) == before, "the attempt back there goes on"
    assert not out.to(names.results)
    assert [(r["attempt"], r["status"], r["provider_job_id"]) for r in out.to(names.release(back))] == [
        (left, status, named)]
    await desk.on_record(told("completed", back, now, suffix=":poll:2", provider_job_id="pj-now",
                              video_url="https://cdn/now.mp4"))
    done = record_of(desk).state
    assert (done.status.value, done.attempt, done.provider_job_id, done.video_url) == (
        "completed", now, "pj-now", "https://cdn/now.mp4")
    result, = out.to(names.results)
    assert (result["status"], result["attempt"], result["provider"]) == ("completed", now, back)
    assert [(r["attempt"], r["status"]) for r in out.to(names.release(back))][1:] == [(now, "completed")]


async def test_a_late_end_of_the_slot_of_an_attempt_the_job_left_frees_it_and_never_cancels_after_a_cancel(
        desk: JobDesk) -> None:
    """The owner cancelled the job back at wan (its release there is ``cancelled``: the dispatcher
    cancels the job and marks it). The old slot's timeout, read then, frees that slot only: a
    ``cancelled`` release of its own would cancel and mark again, for a job whose end is told."""
    names, out = desk.pipe.names, sends(desk)
    await back_again(desk, ("wan", "kling", "wan"))
    await desk.on_record(event(cancel_event(JOB, NOW + 500)))
    assert [(r["attempt"], r["status"]) for r in out.to(names.release("wan"))] == [(2, "cancelled")]
    ended = record_of(desk)
    await desk.on_record(old_slots_end("timeout", "wan", 0))
    assert record_of(desk) == ended and len(out.to(names.results)) == 1
    assert [(r["attempt"], r["status"]) for r in out.to(names.release("wan"))][1:] == [(0, "failed")]
