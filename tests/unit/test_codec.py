from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate import codec
from floodgate.codec import SCHEMA_HEADER, Codec
from floodgate.errors import SchemaError, ValidationError
from floodgate.validation import NormalizedRequest, request_hash
from schemas import SCHEMA_DIR

T0 = 1_700_000_000_000

# One full record per contract (every field set), so a round trip exercises every type.
SAMPLES: dict[str, dict[str, Any]] = {
    "JobRequest": {
        "job_id": "job_01hzz",
        "tenant": "acme",
        "user_id": "user@acme",
        "model": "gen-3",
        "input": {"prompt": "a cat surfing", "image_url": "https://img.example/cat.png", "params": {"seconds": "5"}},
        "webhook_url": "https://hooks.example/fg",
        "metadata": {"order": "42"},
        "idempotency_key": "key-1",
        "request_hash": "ab" * 32,
        "accepted_at": T0,
        "source": "http",
        "notify": {"push": {"platform": "fcm", "token": "fcm-token:abc"}},
        "priority": "high",
        "deadline_s": 600,
    },
    "DispatchOrder": {
        "job_id": "job_01hzz",
        "tenant": "acme",
        "model": "gen-3",
        "provider": "sim",
        "provider_model": "sim-video-1",
        "prompt": "a cat surfing",
        "image_url": None,
        "params": {"seconds": "5"},
        "attempt": 2,
        "tried": ["other"],
        "queued_at": T0,
        "webhook_url": None,
        "metadata": {},
        "priority": "low",
        "deadline_at": T0 + 60_000,
        "spilled_from": "kling-2.1",
        "lined_at": T0 + 30_000,
    },
    "SlotRelease": {"job_id": "job_01hzz", "provider": "sim", "attempt": 1, "status": "completed", "at": T0,
                    "provider_job_id": "pj_1"},
    "WebhookEnvelope": {
        "webhook_id": "wh_1",
        "provider": "sim",
        "received_at": T0,
        "headers": {"webhook-signature": "v1,abc"},
        "body": b'{"id": "p1", "\xff": 1}',
    },
    "JobEvent": {
        "event_id": "evt_1",
        "job_id": "job_01hzz",
        "kind": "queued",
        "at": T0,
        "provider": "sim",
        "provider_job_id": "p1",
        "attempt": 1,
        "progress": 0.25,
        "video_url": "https://cdn.example/v.mp4",
        "error": "none",
        "tenant": "acme",
        "user_id": "u1",
        "model": "gen-3",
        "webhook_url": "https://hooks.example/fg",
        "metadata": {"k": "v"},
        "queue_position": 2,
    },
    "JobSnapshot": {
        "job_id": "job_01hzz",
        "tenant": "acme",
        "user_id": "u1",
        "model": "gen-3",
        "provider": "sim",
        "provider_job_id": "p1",
        "status": "running",
        "progress": 0.5,
        "video_url": None,
        "error": None,
        "attempt": 1,
        "created_at": T0,
        "updated_at": T0 + 1,
        "webhook_url": None,
        "metadata": {},
        "version": 7,
        "push": {"platform": "apns", "token": "ab" * 32},
        "priority": "high",
        "request_hash": "cd" * 32,
        "serving_model": "gen-4",
        "route_note": "spilled from gen-3",
        "provider_queue_position": 4,
        "lined_at": T0 + 30_000,
    },
    "DeadLetter": {
        "reason": "bad bytes",
        "error_type": "SchemaError",
        "source_topic": "requests",
        "partition": 3,
        "offset": 2**40,
        "key": b"\x00\x01",
        "original": b"\xde\xad",
        "headers": {"fg-schema": "JobRequest/1"},
        "at": T0,
    },
}


def test_every_contract_has_a_sample() -> None:
    assert sorted(SAMPLES) == codec.default_codec().names()


# Schemas that gained fields; the rest are at 1.
CURRENT_VERSIONS = {"SlotRelease": 2, "JobRequest": 3, "JobSnapshot": 5, "DispatchOrder": 3, "JobEvent": 2}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    value, headers = codec.encode(name, SAMPLES[name])
    assert headers == [(SCHEMA_HEADER, f"{name}/{CURRENT_VERSIONS.get(name, 1)}".encode())]
    assert codec.decode(name, value, headers) == SAMPLES[name]


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return list(schema["fields"])


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_contract_conventions(path: Path) -> None:
    schema = json.loads(path.read_text())
    assert schema["namespace"] == "floodgate"
    assert isinstance(schema["fg_version"], int)
    for field in _fields(schema):
        kind = field["type"]
        optional = (isinstance(kind, list) and "null" in kind) or (
            isinstance(kind, dict) and kind["type"] in ("map", "array")
        )
        if optional:
            assert "default" in field, f"{path.name}: optional field {field['name']} needs a default"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_required_fields_only_get_defaults(name: str) -> None:
    schema = json.loads(next(p for p in SCHEMA_DIR.glob("*.avsc") if f'"{name}"' in p.read_text()).read_text())
    required = {f["name"] for f in _fields(schema) if "default" not in f}
    minimal = {k: v for k, v in SAMPLES[name].items() if k in required}
    decoded = codec.decode(name, *codec.encode(name, minimal))
    for field in _fields(schema):
        if "default" in field:
            assert decoded[field["name"]] == field["default"]


# Pinned wire bytes: if this fails, records already on topics would be misread.
# Do not update the bytes; add a new schema version (schemas/history/) instead.
# The value follows the Avro spec by hand (zig-zag varint lengths), not fastavro output.
GOLDEN_RECORD = {
    "webhook_id": "wh_1",
    "provider": "sim",
    "received_at": T0,
    "headers": {"x-sig": "abc"},
    "body": b"{}",
}
GOLDEN_BYTES = b"".join(
    [
        b"\x08wh_1",  # string: length 4 → zig-zag 8
        b"\x06sim",  # string: length 3
        bytes.fromhex("80a0abfef962"),  # long 1_700_000_000_000 → zig-zag 3_400_000_000_000, 7-bit groups
        b"\x02" + b"\x0ax-sig" + b"\x06abc" + b"\x00",  # map: one block of 1 entry, then the 0 terminator
        b"\x04{}",  # bytes: length 2
    ]
)


def test_golden_bytes() -> None:
    value, headers = codec.encode("WebhookEnvelope", GOLDEN_RECORD)
    assert value == GOLDEN_BYTES
    assert headers == [("fg-schema", b"WebhookEnvelope/1")]
    assert codec.decode("WebhookEnvelope", GOLDEN_BYTES, headers) == GOLDEN_RECORD


def test_timestamps_stay_integers() -> None:
    decoded = codec.decode("SlotRelease", *codec.encode("SlotRelease", SAMPLES["SlotRelease"]))
    assert type(decoded["at"]) is int


@pytest.mark.parametrize(
    "record",
    [
        {**SAMPLES["SlotRelease"], "extra": 1},  # a typo must not vanish silently
        {k: v for k, v in SAMPLES["SlotRelease"].items() if k != "status"},
        {**SAMPLES["SlotRelease"], "attempt": "one"},
        {**SAMPLES["SlotRelease"], "at": "yesterday"},
    ],
    ids=["unknown-field", "missing-required", "wrong-type", "timestamp-not-int"],
)
def test_encode_rejects_bad_records(record: dict[str, Any]) -> None:
    with pytest.raises(SchemaError, match="SlotRelease/2") as info:
        codec.encode("SlotRelease", record)
    assert info.value.__cause__ is not None


def test_encode_rejects_unknown_nested_field() -> None:
    record = {**SAMPLES["JobRequest"], "input": {**SAMPLES["JobRequest"]["input"], "promt": "x"}}
    with pytest.raises(SchemaError):
        codec.encode("JobRequest", record)


def test_unknown_schema_name() -> None:
    with pytest.raises(SchemaError, match="unknown schema 'Nope'"):
        codec.encode("Nope", {})


# --- headers -----------------------------------------------------------------

def test_missing_header_means_current_version() -> None:
    value, _ = codec.encode("SlotRelease", SAMPLES["SlotRelease"])
    assert codec.decode("SlotRelease", value, None) == SAMPLES["SlotRelease"]
    assert codec.decode("SlotRelease", value, [("other", b"x")]) == SAMPLES["SlotRelease"]


def test_header_as_mapping_or_str() -> None:
    value, _ = codec.encode("SlotRelease", SAMPLES["SlotRelease"])
    assert codec.decode("SlotRelease", value, {SCHEMA_HEADER: b"SlotRelease/2"}) == SAMPLES["SlotRelease"]
    assert codec.decode("SlotRelease", value, [(SCHEMA_HEADER, "SlotRelease/2")]) == SAMPLES["SlotRelease"]


def test_a_release_written_before_provider_job_ids_still_decodes() -> None:
    old = {k: v for k, v in SAMPLES["SlotRelease"].items() if k != "provider_job_id"}
    value = b"".join([b"\x12job_01hzz", b"\x06sim", b"\x02", b"\x12completed", bytes.fromhex("80a0abfef962")])
    assert codec.decode("SlotRelease", value, [(SCHEMA_HEADER, b"SlotRelease/1")]) == {**old, "provider_job_id": None}


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"SlotRelease/9", "unknown version"),
        (b"SlotRelease/x", "unknown version"),
        (b"SlotRelease", "unknown version"),
        (b"JobEvent/1", "does not name schema SlotRelease"),
        (b"\xff/1", "does not name schema"),
        (None, "does not name schema"),
    ],
)
def test_bad_header_is_schema_error(header: bytes | None, match: str) -> None:
    value, _ = codec.encode("SlotRelease", SAMPLES["SlotRelease"])
    with pytest.raises(SchemaError, match=match):
        codec.decode("SlotRelease", value, [(SCHEMA_HEADER, header)])


# --- corrupt bytes -------------------------------------------------------------

@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: b"",
        lambda v: v[:-3],  # truncated
        lambda v: v + b"\x00",  # trailing garbage: the record is not what the writer wrote
        lambda v: b"\xff" * 12,  # varint that never ends
        lambda v: b"\x01" + v[1:],  # negative string length
    ],
    ids=["empty", "truncated", "trailing", "endless-varint", "negative-length"],
)
def test_corrupt_bytes_are_schema_errors(mangle: Any) -> None:
    value, headers = codec.encode("SlotRelease", SAMPLES["SlotRelease"])
    with pytest.raises(SchemaError, match="cannot decode SlotRelease/2"):
        codec.decode("SlotRelease", mangle(value), headers)


def test_invalid_utf8_is_schema_error() -> None:
    value, headers = codec.encode("SlotRelease", {**SAMPLES["SlotRelease"], "job_id": "ab"})
    with pytest.raises(SchemaError):
        codec.decode("SlotRelease", value.replace(b"ab", b"\xff\xfe"), headers)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_decode_or_raise_schema_error(data: bytes) -> None:
    for name in ("JobEvent", "JobRequest", "DeadLetter"):
        with contextlib.suppress(SchemaError):
            codec.decode(name, data)


# --- schema evolution ------------------------------------------------------------

def _old_job_event_schema() -> dict[str, Any]:
    """JobEvent as a release before ``progress`` and ``metadata`` existed would have written it."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / "job_event.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("progress", "metadata")]
    schema["fg_version"] = 0
    return schema


@pytest.fixture
def evolved_dir(tmp_path: Path) -> Path:
    shutil.copy(SCHEMA_DIR / "job_event.avsc", tmp_path / "job_event.avsc")
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "job_event.v0.avsc").write_text(json.dumps(_old_job_event_schema()))
    return tmp_path


def test_old_record_decodes_with_defaults(evolved_dir: Path) -> None:
    old_record = {k: v for k, v in SAMPLES["JobEvent"].items() if k not in ("progress", "metadata")}
    # Written exactly as the old producer did: its own schema, its own header.
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(_old_job_event_schema(), {}), old_record)

    decoded = Codec(evolved_dir).decode("JobEvent", out.getvalue(), [(SCHEMA_HEADER, b"JobEvent/0")])

    assert decoded == {**old_record, "progress": None, "metadata": {}}


def test_old_record_without_its_header_is_not_silently_misread(evolved_dir: Path) -> None:
    out = io.BytesIO()
    old_record = {k: v for k, v in SAMPLES["JobEvent"].items() if k not in ("progress", "metadata")}
    fastavro.schemaless_writer(out, fastavro.parse_schema(_old_job_event_schema(), {}), old_record)
    with pytest.raises(SchemaError):
        Codec(evolved_dir).decode("JobEvent", out.getvalue(), None)


def test_history_must_match_current_name(evolved_dir: Path) -> None:
    wrong = _old_job_event_schema() | {"name": "JobSnapshot"}
    (evolved_dir / "history" / "job_event.v0.avsc").write_text(json.dumps(wrong))
    with pytest.raises(SchemaError, match="expected JobEvent"):
        Codec(evolved_dir)


def test_history_must_be_older(evolved_dir: Path) -> None:
    (evolved_dir / "history" / "job_event.v0.avsc").rename(evolved_dir / "history" / "job_event.v1.avsc")
    with pytest.raises(SchemaError, match="older"):
        Codec(evolved_dir)


def test_current_schema_must_declare_version(tmp_path: Path) -> None:
    schema = json.loads((SCHEMA_DIR / "slot_release.avsc").read_text())
    del schema["fg_version"]
    (tmp_path / "slot_release.avsc").write_text(json.dumps(schema))
    with pytest.raises(SchemaError, match="fg_version"):
        Codec(tmp_path)


# --- requests topic: Avro or JSON lines -------------------------------------------

def test_decode_request_avro() -> None:
    value, headers = codec.encode("JobRequest", SAMPLES["JobRequest"])
    assert codec.decode_request(value, headers) == SAMPLES["JobRequest"]


def test_decode_request_json_line_fills_server_fields() -> None:
    line = b'  {"job_id": "job_replay1", "user_id": "u1", "model": "gen-3", "input": {"prompt": "hi"}}\n'

    record = codec.decode_request(line, [], now_ms=T0)

    expected_hash = request_hash(
        NormalizedRequest(
            model="gen-3", prompt="hi", image_url=None, params={}, user_id="u1", webhook_url=None, metadata={}
        ),
        "default",
    )
    assert record == {
        "job_id": "job_replay1",
        "tenant": "default",
        "user_id": "u1",
        "model": "gen-3",
        "input": {"prompt": "hi", "image_url": None, "params": {}},
        "webhook_url": None,
        "metadata": {},
        "idempotency_key": None,
        "request_hash": expected_hash,
        "accepted_at": T0,
        "source": "replay",
        "notify": None,
        "priority": "standard",
        "deadline_s": None,
    }
    codec.encode("JobRequest", record)  # what the JSON path returns is a valid record


def test_decode_request_json_keeps_given_server_fields() -> None:
    line = json.dumps({**SAMPLES["JobRequest"]}).encode()
    assert codec.decode_request(line) == SAMPLES["JobRequest"]


def test_decode_request_json_uses_wall_clock_by_default() -> None:
    record = codec.decode_request(b'{"job_id":"j","user_id":"u","model":"m","input":{"prompt":"p"}}')
    assert record["accepted_at"] > T0


def test_decode_request_json_without_job_id() -> None:
    with pytest.raises(ValidationError) as info:
        codec.decode_request(b'{"user_id": "u1", "model": "gen-3", "input": {"prompt": "hi"}}')
    assert [p.field for p in info.value.problems] == ["job_id"]


def test_decode_request_json_reports_every_problem() -> None:
    line = (
        b'{"job_id": "", "user_id": 7, "model": "m", "input": {"promt": "x", "params": {"a": 1}},'
        b' "accepted_at": 1e3, "colour": "red"}'
    )
    with pytest.raises(ValidationError) as info:
        codec.decode_request(line)
    assert {p.field for p in info.value.problems} == {
        "user_id",
        "input.prompt",
        "input.promt",
        "input.params.a",
        "accepted_at",
        "colour",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": ""}, "job_id"),
        ({"source": "ftp"}, "source"),
        ({"accepted_at": 2**70}, "accepted_at"),
        ({"accepted_at": True}, "accepted_at"),
        ({"input": "hi"}, "input"),
        ({"webhook_url": 5}, "webhook_url"),
    ],
)
def test_decode_request_json_field_rules(change: dict[str, Any], field: str) -> None:
    doc = {"job_id": "j", "user_id": "u", "model": "m", "input": {"prompt": "p"}, **change}
    with pytest.raises(ValidationError) as info:
        codec.decode_request(json.dumps(doc).encode())
    assert [p.field for p in info.value.problems] == [field]


def test_decode_request_json_must_be_object_and_valid_json() -> None:
    with pytest.raises(SchemaError):
        codec.decode_request(b'{"job_id": ')
    with pytest.raises(SchemaError):
        codec.decode_request(b"[1, 2]")  # not JSON-object-shaped, so read as Avro, which it is not


def test_header_forces_avro_even_if_value_looks_like_json() -> None:
    with pytest.raises(SchemaError):
        codec.decode_request(b'{"job_id": "j"}', [(SCHEMA_HEADER, b"JobRequest/1")])
