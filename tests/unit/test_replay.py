"""The replay's rules: what is sent again (byte for byte, or with a job id derived from the bytes),
what is skipped and why, and the summary. No Kafka: files are read from tmp_path."""
from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import orjson
import pytest

from floodgate import codec
from floodgate.dead_letter import dead_letter_record
from floodgate.errors import ConfigError
from floodgate.ids import is_job_id, job_id_for_key, new_job_id
from floodgate.jobs.record import JobRecord
from floodgate.jobs.state import JobState
from floodgate.ops.replay_cli import read_file
from floodgate.replay import (
    DERIVED_KEY_PREFIX,
    AdmittedJobs,
    Candidate,
    DeadLetterFilter,
    Ledger,
    Outgoing,
    Skip,
    Skipped,
    Summary,
    container_candidate,
    dead_letter_candidate,
    derived_job_id,
    parse_instant,
    prepare,
)
from floodgate.validation import REQUEST_HASH_HEADER, request_hash, validate_job_request
from schemas import SCHEMA_DIR

SECRET = b"s" * 32
NOW = 1_800_000_000_000
REQUESTS = "fg.requests"


def avro_request(job_id: str, **changes: Any) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    record = {"job_id": job_id, "tenant": "default", "user_id": "u", "model": "kling-2.1",
              "input": {"prompt": "dunes", "image_url": None, "params": {}}, "webhook_url": None, "metadata": {},
              "idempotency_key": None, "request_hash": "a" * 64, "accepted_at": NOW, "source": "http",
              "notify": None, **changes}
    value, headers = codec.encode("JobRequest", record)
    return value, tuple(headers)


LINE = b'{"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "dunes at dawn"}}'


# --- prepare -----------------------------------------------------------------------------------

def test_an_avro_request_is_sent_byte_for_byte_with_its_job_id() -> None:
    job_id = new_job_id()
    value, headers = avro_request(job_id)
    out = prepare(Candidate("dlq[0]@1", value, headers), secret=SECRET, now_ms=NOW)
    assert isinstance(out, Outgoing)
    assert (out.job_id, out.value, out.headers, out.derived_id, out.model) == (job_id, value, headers, False,
                                                                               "kling-2.1")


def test_a_json_line_with_a_job_id_is_sent_as_it_is() -> None:
    line = b'{"job_id": "job_x1", "model": "kling-2.1", "user_id": "u1", "input": {"prompt": "p"}}'
    out = prepare(Candidate("f:1", line), secret=SECRET, now_ms=NOW)
    assert isinstance(out, Outgoing) and out.job_id == "job_x1" and out.value == line and not out.derived_id


def test_a_json_line_without_a_job_id_gets_the_keyed_id_of_its_bytes() -> None:
    first = prepare(Candidate("dlq[0]@1", LINE), secret=SECRET, now_ms=NOW)
    again = prepare(Candidate("dlq[0]@9", LINE), secret=SECRET, now_ms=NOW + 5000)
    assert isinstance(first, Outgoing) and isinstance(again, Outgoing)
    assert first.derived_id and first.job_id == again.job_id and first.value == again.value
    assert is_job_id(first.job_id)
    # The rule of keyed ids (an Idempotency-Key's), with the key naming the bytes' digest.
    expected, key = derived_job_id(SECRET, "default", LINE)
    assert first.job_id == expected == job_id_for_key(SECRET, "default", key)
    assert key.startswith(DERIVED_KEY_PREFIX)
    sent = codec.decode_request(first.value, now_ms=NOW)
    assert sent["job_id"] == first.job_id and sent["idempotency_key"] == key
    assert sent["input"]["prompt"] == "dunes at dawn" and sent["source"] == "replay"


def test_other_bytes_or_another_secret_or_tenant_derive_another_id() -> None:
    ids = {
        prepare(Candidate("a", LINE), secret=SECRET, now_ms=NOW),
        prepare(Candidate("b", LINE.replace(b"dawn", b"dusk")), secret=SECRET, now_ms=NOW),
        prepare(Candidate("c", LINE), secret=b"t" * 32, now_ms=NOW),
        prepare(Candidate("d", LINE[:-1] + b', "tenant": "acme"}'), secret=SECRET, now_ms=NOW),
    }
    assert len({o.job_id for o in ids if isinstance(o, Outgoing)}) == 4


def test_a_keyed_request_carries_the_hash_the_ingress_gives_its_body() -> None:
    """An ingress-only API learns a key's body from this header only (floodgate.api.keyed): the
    hash must be the one the HTTP ingress computes for the same body and tenant."""
    body = {"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "dunes", "params": {"seconds": "5"}}}
    line = orjson.dumps({**body, "job_id": "job_k1", "tenant": "acme", "idempotency_key": "tap-7"})
    out = prepare(Candidate("f:1", line), secret=SECRET, now_ms=NOW)
    assert isinstance(out, Outgoing) and out.value == line
    ingress_hash = request_hash(validate_job_request(body, known_models={"kling-2.1"}), "acme")
    assert out.headers == ((REQUEST_HASH_HEADER, ingress_hash.encode("ascii")),)
    other = prepare(Candidate("f:2", line.replace(b"dunes", b"dusk")), secret=SECRET, now_ms=NOW)
    assert isinstance(other, Outgoing) and other.headers != out.headers


def test_a_keyed_record_keeps_the_hash_header_it_came_with_and_an_unkeyed_one_gets_none() -> None:
    job_id = new_job_id()
    value, headers = avro_request(job_id, idempotency_key="tap-8")
    parked = (*headers, (REQUEST_HASH_HEADER, b"a" * 64))
    kept = prepare(Candidate("dlq[0]@2", value, parked), secret=SECRET, now_ms=NOW)
    assert isinstance(kept, Outgoing) and kept.headers == parked
    bare = prepare(Candidate("dlq[0]@3", value, headers), secret=SECRET, now_ms=NOW)
    assert isinstance(bare, Outgoing) and bare.headers == (*headers, (REQUEST_HASH_HEADER, b"a" * 64))
    unkeyed = prepare(Candidate("f:4", b'{"job_id": "job_x2", "model": "kling-2.1", "user_id": "u", '
                                       b'"input": {"prompt": "p"}}'), secret=SECRET, now_ms=NOW)
    assert isinstance(unkeyed, Outgoing) and unkeyed.headers == ()


@pytest.mark.parametrize(("digest", "header"), [("", None), ("é" * 4, "é" * 4)], ids=["empty", "not-ascii"])
def test_a_keyed_record_from_another_writer_never_stops_the_replay(digest: str, header: str | None) -> None:
    """An empty hash teaches nothing (it would make every true retry a 422); any other string
    travels as it is."""
    value, headers = avro_request(new_job_id(), idempotency_key="tap-9", request_hash=digest)
    out = prepare(Candidate("dlq[0]@4", value, headers), secret=SECRET, now_ms=NOW)
    assert isinstance(out, Outgoing)
    learned = [v.decode("utf-8") for n, v in out.headers if n == REQUEST_HASH_HEADER]
    assert learned == ([header] if header is not None else [])


@pytest.mark.parametrize(("value", "headers", "field"), [
    (b"not json at all", (), "cannot decode JobRequest"),
    (b'{"model": "kling-2.1", "input": {"prompt": "p"}}', (), "user_id"),  # no job id and more missing
    (b'{"job_id": "j", "model": "m", "user_id": "u", "input": {"prompt": 3}}', (), "input.prompt"),
    (b"\x00\x01", (("fg-schema", b"JobRequest/2"),), "cannot decode JobRequest"),
    (b"[1, 2]", (), "cannot decode"),
], ids=["garbage", "missing-fields", "wrong-type", "bad-avro", "json-array"])
def test_what_is_not_a_job_request_is_skipped_as_invalid_naming_why(value: bytes, headers: Any, field: str) -> None:
    out = prepare(Candidate("f:3", value, headers), secret=SECRET, now_ms=NOW)
    assert isinstance(out, Skipped) and out.kind is Skip.INVALID and out.origin == "f:3"
    assert field in out.reason


# --- dead letters ------------------------------------------------------------------------------

def letter(reason: str = "invalid request: job_id: required", topic: str = REQUESTS, at: int = NOW) -> dict[str, Any]:
    source = SimpleNamespace(topic=topic, partition=1, offset=7, key=b"k", value=LINE, headers=[("h", b"v")])
    return dead_letter_record(source, reason, ValueError("x"), at_ms=at)


def test_a_dead_letter_gives_back_its_original_bytes_key_and_headers() -> None:
    decoded = codec.decode("DeadLetter", *codec.encode("DeadLetter", letter()))
    candidate = dead_letter_candidate(decoded, "dlq[0]@3")
    assert candidate == Candidate("dlq[0]@3", LINE, (("h", b"v"),), b"k")


@pytest.mark.parametrize(("flt", "dl", "why"), [
    (DeadLetterFilter(REQUESTS), letter(), None),
    (DeadLetterFilter(REQUESTS), letter(topic="fg.webhooks"), "came from fg.webhooks"),
    (DeadLetterFilter(REQUESTS, reason="JOB_ID"), letter(), None),
    (DeadLetterFilter(REQUESTS, reason="unknown model"), letter(), "reason does not match"),
    (DeadLetterFilter(REQUESTS, since_ms=NOW), letter(at=NOW), None),
    (DeadLetterFilter(REQUESTS, since_ms=NOW + 1), letter(at=NOW), "before --since"),
    (DeadLetterFilter(REQUESTS, until_ms=NOW + 1), letter(at=NOW), None),
    (DeadLetterFilter(REQUESTS, until_ms=NOW), letter(at=NOW), "at or after --until"),
])
def test_dead_letter_filters(flt: DeadLetterFilter, dl: dict[str, Any], why: str | None) -> None:
    got = flt.why_not(dl)
    assert got is None if why is None else why in (got or "")


# --- duplicates --------------------------------------------------------------------------------

def outgoing(job_id: str, origin: str = "o") -> Outgoing:
    return Outgoing(origin=origin, job_id=job_id, model="m", value=b"{}", headers=())


def test_the_ledger_skips_admitted_jobs_and_second_copies_in_one_run() -> None:
    ledger = Ledger({"job_a"})
    first = ledger.check(outgoing("job_a"))
    assert first is not None and first.kind is Skip.DUPLICATE and "already a job" in first.reason
    assert ledger.check(outgoing("job_b")) is None
    twice = ledger.check(outgoing("job_b", "f:9"))
    assert twice is not None and twice.kind is Skip.DUPLICATE and twice.origin == "f:9"


def test_admitted_jobs_come_from_the_jobs_table_changelog() -> None:
    fold = AdmittedJobs({"job_a", "job_b", "job_c", "job_d"})
    fold.add(b"job_a", JobRecord(JobState("job_a"), "e", (0, 5)).encode())
    fold.add(b"job_b", JobRecord(JobState("job_b"), "cancel").encode())  # a cancel that overtook the request
    fold.add(b"job_c", JobRecord(JobState("job_c"), "e", (1, 2)).encode())
    fold.add(b"job_c", None)  # then deleted from the table
    fold.add(b"job_d", b"snapshot", [("fg-schema", b"JobSnapshot/1")])  # an Avro snapshot of old
    fold.add(b"job_z", JobRecord(JobState("job_z"), "e", (0, 1)).encode())  # not asked about
    fold.add(None, b"x")
    fold.add(b"job_b", b"not a record")  # unreadable: leaves what was known
    assert fold.admitted == {"job_a", "job_d"}


# --- summary, instants -------------------------------------------------------------------------

def test_the_summary_counts_and_groups_reasons() -> None:
    summary = Summary(read=6, sent=2)
    summary.skip(Skipped("a", Skip.DUPLICATE, "job_1 is already a job"))
    summary.skip(Skipped("b", Skip.DUPLICATE, "job_2 is already a job"))
    summary.skip(Skipped("c", Skip.INVALID, "not a job request: user_id: required"))
    summary.skip(Skipped("d", Skip.FILTERED, "came from fg.webhooks, not fg.requests"))
    summary.fail("not acknowledged: timeout")
    text = summary.render(dry_run=False)
    assert "read                  6" in text and "sent                  2" in text
    assert "skipped as duplicate  2" in text and "     2  already a job" in text
    assert "skipped invalid       1" in text and "user_id: required" in text
    assert "skipped by filters    1" in text and "failed to send        1" in text
    assert "would send            2" in Summary(read=2, sent=2).render(dry_run=True)


@pytest.mark.parametrize(("text", "ms"), [
    ("2027-01-01T00:00:00Z", int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)),
    ("2027-01-01T01:00:00+01:00", int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)),
    ("2027-01-01T00:00:00", int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)),
    ("1800000000000", 1_800_000_000_000),
])
def test_instants(text: str, ms: int) -> None:
    assert parse_instant(text) == ms


def test_a_bad_instant_says_what_is_expected() -> None:
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_instant("yesterday")


# --- files -------------------------------------------------------------------------------------

def test_a_json_lines_file_gives_one_candidate_per_non_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(LINE + b"\n\n  \n" + LINE.replace(b"dawn", b"dusk") + b"\r\n")
    got = list(read_file(path))
    assert [c.origin for c in got] == ["jobs.jsonl:1", "jobs.jsonl:4"]
    assert all(isinstance(c, Candidate) and c.value.endswith(b"}") for c in got)


def test_an_avro_container_file_of_requests_is_read_through_the_current_contract(tmp_path: Path) -> None:
    schema = fastavro.schema.load_schema(str(SCHEMA_DIR / "job_request.avsc"))
    job_id = new_job_id()
    record = orjson.loads(orjson.dumps({
        "job_id": job_id, "tenant": "default", "user_id": "u", "model": "kling-2.1",
        "input": {"prompt": "p", "image_url": None, "params": {"seed": "1"}}, "webhook_url": None, "metadata": {},
        "idempotency_key": None, "request_hash": "b" * 64, "accepted_at": NOW, "source": "sdk", "notify": None}))
    out = io.BytesIO()
    fastavro.writer(out, schema, [record])
    path = tmp_path / "jobs.avro"
    path.write_bytes(out.getvalue())
    [candidate] = list(read_file(path))
    assert isinstance(candidate, Candidate) and candidate.origin == "jobs.avro#1"
    sent = prepare(candidate, secret=SECRET, now_ms=NOW)
    assert isinstance(sent, Outgoing) and sent.job_id == job_id
    decoded = codec.decode_request(sent.value)
    assert decoded["input"]["params"] == {"seed": "1"} and decoded["accepted_at"] == NOW


def container_of(job_ids: list[str]) -> tuple[bytes, list[int]]:
    """An Avro container of JobRequests, one record a block, and where each block's sync marker starts."""
    schema = fastavro.schema.load_schema(str(SCHEMA_DIR / "job_request.avsc"))
    records = [orjson.loads(orjson.dumps({
        "job_id": job_id, "tenant": "default", "user_id": "u", "model": "kling-2.1",
        "input": {"prompt": "p", "image_url": None, "params": {}}, "webhook_url": None, "metadata": {},
        "idempotency_key": None, "request_hash": "b" * 64, "accepted_at": NOW, "source": "sdk", "notify": None}))
        for job_id in job_ids]
    out = io.BytesIO()
    fastavro.writer(out, schema, records, sync_interval=1)
    data = out.getvalue()
    sync = data[-16:]  # every block ends with the file's 16-byte sync marker
    markers = [i for i in range(len(data)) if data.startswith(sync, i)]
    return data, markers[1:]  # the first one closes the header


def truncated_in_block(data: bytes, markers: list[int], block: int) -> bytes:
    return data[:markers[block] - 8]  # cut inside block `block`: the ones before it are whole


def sync_flipped_after(data: bytes, markers: list[int], block: int) -> bytes:
    damaged = bytearray(data)
    damaged[markers[block] + 3] ^= 0xFF
    return bytes(damaged)


def header_damaged(data: bytes, _markers: list[int], _block: int) -> bytes:
    at = data.index(b"avro.schema")
    return data[:at] + b"avro.schemX" + data[at + len(b"avro.schema"):]


@pytest.mark.parametrize(("damage", "readable"), [
    (truncated_in_block, 3),   # blocks 0-2 whole, block 3 cut short: EOFError
    (sync_flipped_after, 4),   # block 3 decodes, its sync marker does not match: ValueError
    (header_damaged, 0),       # no schema in the header: KeyError('avro.schema')
], ids=["truncated", "byte-flipped-sync", "byte-flipped-header"])
def test_a_damaged_container_gives_its_records_up_to_the_damage_then_says_it_is_unreadable(
        tmp_path: Path, damage: Any, readable: int) -> None:
    from floodgate.ops.replay_cli import Unreadable

    job_ids = [new_job_id() for _ in range(6)]
    data, markers = container_of(job_ids)
    path = tmp_path / "jobs.avro"
    path.write_bytes(damage(data, markers, 3))
    *records, last = list(read_file(path))
    assert [c.origin for c in records] == [f"jobs.avro#{n}" for n in range(1, readable + 1)]
    assert [orjson.loads(c.value)["job_id"] for c in records if isinstance(c, Candidate)] == job_ids[:readable]
    assert isinstance(last, Unreadable) and last.origin == "jobs.avro" and last.records_read == readable


@pytest.mark.parametrize(("damage", "readable", "error"), [
    (truncated_in_block, 2, "EOFError"),
    (header_damaged, 0, "KeyError"),
], ids=["truncated", "byte-flipped-header"])
def test_a_damaged_container_replays_what_came_before_and_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any, readable: int, error: str) -> None:
    import asyncio

    from floodgate.ops.replay_cli import Replay, plan_from
    from floodgate.settings import Settings

    job_ids = [new_job_id() for _ in range(6)]
    data, markers = container_of(job_ids)
    path = tmp_path / "jobs.avro"
    path.write_bytes(damage(data, markers, 2))
    sent: list[str] = []

    class Offline(Replay):
        def admitted(self, wanted: set[str]) -> set[str]:
            return set()

        async def send(self, records: list[Outgoing]) -> None:
            sent.extend(out.job_id for out in records)
            self.summary.sent += len(records)

    args = parse("--file", str(path), "--no-progress")
    code = asyncio.run(Offline(plan_from(args, Settings.from_env({}), SECRET), args).run())
    report = capsys.readouterr().out
    assert code == 1
    assert sent == job_ids[:readable]
    assert f"read                  {readable}\n" in report and f"sent                  {readable}\n" in report
    assert f"unreadable            jobs.avro after {readable} record(s): {error}" in report


def test_a_container_record_with_datetimes_becomes_epoch_milliseconds() -> None:
    stamp = datetime(2027, 1, 1, tzinfo=UTC)
    candidate = container_candidate({"accepted_at": stamp, "job_id": "j"}, "x#1")
    assert orjson.loads(candidate.value) == {"accepted_at": int(stamp.timestamp() * 1000), "job_id": "j"}


# --- the command's arguments -------------------------------------------------------------------

def parse(*argv: str) -> Any:
    import argparse

    from floodgate.ops.replay_cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_logical_topic_names_and_filters_make_the_plan() -> None:
    from floodgate.ops.replay_cli import plan_from
    from floodgate.settings import Settings

    settings = Settings.from_env({}).with_overrides(topic_prefix="fg.")
    dlq = plan_from(parse("--topic", "dlq", "--reason", "model", "--since", "1000"), settings, SECRET)
    assert dlq.topic == "fg.dlq" and dlq.dead_letters == DeadLetterFilter("fg.requests", "model", 1000, None)
    ranged = plan_from(parse("--topic", "requests", "--from", "1000", "--to", "2000"), settings, SECRET)
    assert (ranged.topic, ranged.start_ms, ranged.end_ms, ranged.dead_letters) == ("fg.requests", 1000, 2000, None)
    assert plan_from(parse("--topic", "other.requests"), settings, SECRET).topic == "other.requests"


@pytest.mark.parametrize("argv", [
    ("--topic", "requests", "--reason", "x"),  # dead-letter filters on a topic range
    ("--file", "f.jsonl", "--since", "1000"),
    ("--file", "f.jsonl", "--from", "1000"),
    ("--topic", "dlq", "--from", "1000"),  # a dlq's window is --since/--until
    ("--topic", "dlq", "--rate", "0"),
])
def test_arguments_that_do_not_go_together_are_refused(argv: tuple[str, ...]) -> None:
    from floodgate.ops.replay_cli import plan_from
    from floodgate.settings import Settings

    with pytest.raises(ConfigError):
        plan_from(parse(*argv), Settings.from_env({}), SECRET)


def test_without_a_configured_secret_no_job_id_is_derived() -> None:
    from floodgate.ops.replay_cli import Replay, plan_from
    from floodgate.settings import Settings

    args = parse("--file", "f.jsonl")
    keyed = Replay(plan_from(args, Settings.from_env({}), SECRET), args)
    unkeyed = Replay(plan_from(args, Settings.from_env({}), None), args)
    assert isinstance(keyed.prepare(Candidate("f:1", LINE), NOW), Outgoing)
    refused = unkeyed.prepare(Candidate("f:1", LINE), NOW)
    assert isinstance(refused, Skipped) and refused.kind is Skip.INVALID and "FLOODGATE_SECRET" in refused.reason
    with_id = b'{"job_id": "job_x1", "model": "kling-2.1", "user_id": "u1", "input": {"prompt": "p"}}'
    assert isinstance(unkeyed.prepare(Candidate("f:2", with_id), NOW), Outgoing)  # nothing to derive


def test_the_secret_counts_as_configured_only_when_every_load_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    from floodgate.ops.replay_cli import deployment_secret

    monkeypatch.delenv("FLOODGATE_SECRET", raising=False)
    assert deployment_secret()[1] is None
    monkeypatch.setenv("FLOODGATE_SECRET", "x" * 32)
    assert deployment_secret()[1] == b"x" * 32
