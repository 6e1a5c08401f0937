"""``notify.push`` in a job request: shape, sizes, and what it does to the request hash."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from floodgate import codec
from floodgate.errors import ValidationError
from floodgate.jobs.events import queued_event
from floodgate.jobs.record import JobRecord, snapshot
from floodgate.jobs.state import apply
from floodgate.push import MAX_APNS_TOKEN_CHARS, MAX_FCM_TOKEN_CHARS, PushTarget, notify_record, token_problem
from floodgate.validation import request_hash, validate_job_request

APNS_TOKEN = "0f" * 32
FCM_TOKEN = "dGhpcyBpcyBub3QgcmVhbA:APA91bH-aZ_09.x"
BASE = {"model": "m", "user_id": "u1", "input": {"prompt": "p"}}


def validate(notify: Any) -> PushTarget | None:
    return validate_job_request({**BASE, "notify": notify}, known_models={"m"}).push


def fields(notify: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        validate(notify)
    return {p.field: p.message for p in info.value.problems}


@pytest.mark.parametrize(("platform", "token"), [("apns", APNS_TOKEN), ("apns", "AB" * 100), ("fcm", FCM_TOKEN),
                                                 ("fcm", "x" * MAX_FCM_TOKEN_CHARS)])
def test_a_valid_target_is_kept(platform: str, token: str) -> None:
    assert validate({"push": {"platform": platform, "token": token}}) == PushTarget(platform, token)


@pytest.mark.parametrize("notify", [None, {}, {"push": None}])
def test_no_target(notify: Any) -> None:
    assert validate(notify) is None


@pytest.mark.parametrize(("notify", "expected"), [
    ("fcm", {"notify": "must be an object"}),
    ({"email": "a@b"}, {"notify.email": "unknown field"}),
    ({"push": "token"}, {"notify.push": "must be an object"}),
    ({"push": {"token": FCM_TOKEN}}, {"notify.push.platform": "required"}),
    ({"push": {"platform": "fcm"}}, {"notify.push.token": "required"}),
    ({"push": {"platform": "webpush", "token": "t"}}, {"notify.push.platform": "must be one of: fcm, apns"}),
    ({"push": {"platform": "fcm", "token": 5}}, {"notify.push.token": "must be a string"}),
    ({"push": {"platform": "fcm", "token": FCM_TOKEN, "sound": "x"}}, {"notify.push.sound": "unknown field"}),
])
def test_bad_targets_name_the_field(notify: Any, expected: dict[str, str]) -> None:
    assert fields(notify) == expected


@pytest.mark.parametrize("token", [
    "0f" * 31,  # too short
    "0f" * (MAX_APNS_TOKEN_CHARS // 2 + 1),  # too long
    "0f" * 32 + "a",  # odd
    "0g" * 32,  # not hex
    "0f" * 31 + "/x",  # a path in disguise
    "../" + "0f" * 31,
])
def test_apns_tokens_are_hex_only(token: str) -> None:
    assert "notify.push.token" in fields({"push": {"platform": "apns", "token": token}})


@pytest.mark.parametrize("token", ["", "x" * (MAX_FCM_TOKEN_CHARS + 1), "has space", "slash/y", "new\nline"])
def test_fcm_tokens_are_bounded_and_plain(token: str) -> None:
    assert token_problem("fcm", token) is not None


def test_every_problem_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        validate_job_request({"model": "m", "user_id": "", "input": {"prompt": "p"},
                              "notify": {"push": {"platform": "apns", "token": "zz"}}}, known_models={"m"})
    assert {p.field for p in info.value.problems} == {"user_id", "notify.push.token"}


def test_the_token_stays_out_of_reprs() -> None:
    assert APNS_TOKEN not in repr(PushTarget("apns", APNS_TOKEN))


def test_request_hash_unchanged_without_a_target_and_changed_with_one() -> None:
    plain = validate_job_request(BASE, known_models={"m"})
    assert request_hash(plain, "t") == request_hash(dataclasses.replace(plain, push=None), "t")
    with_push = dataclasses.replace(plain, push=PushTarget("fcm", FCM_TOKEN))
    other_device = dataclasses.replace(plain, push=PushTarget("fcm", FCM_TOKEN + "x"))
    assert len({request_hash(plain, "t"), request_hash(with_push, "t"), request_hash(other_device, "t")}) == 3


def test_the_target_travels_from_request_to_snapshot() -> None:
    request: dict[str, Any] = {"job_id": "job_1", "tenant": "t", "user_id": "u", "model": "m",
               "input": {"prompt": "p", "image_url": None, "params": {}}, "webhook_url": None, "metadata": {},
               "idempotency_key": None, "request_hash": "0" * 64, "accepted_at": 1_700_000_000_000,
               "source": "http", "notify": notify_record(PushTarget("apns", APNS_TOKEN))}
    decoded = codec.decode("JobRequest", *codec.encode("JobRequest", request))
    state = apply(None, queued_event(decoded, "sim")).state
    assert state is not None
    state = JobRecord.decode(JobRecord(state).encode()).state  # through the jobs table's changelog form
    snap = codec.decode("JobSnapshot", *codec.encode("JobSnapshot", snapshot(state)))
    assert snap["push"] == {"platform": "apns", "token": APNS_TOKEN}
    assert APNS_TOKEN not in repr(state)


def test_a_json_replay_line_may_carry_a_target_and_is_checked_again() -> None:
    line = (b'{"job_id": "job_r", "user_id": "u", "model": "m", "input": {"prompt": "p"},'
            b' "notify": {"push": {"platform": "fcm", "token": "' + FCM_TOKEN.encode() + b'"}}}')
    record = codec.decode_request(line, now_ms=1)
    assert record["notify"] == {"push": {"platform": "fcm", "token": FCM_TOKEN}}
    bad = line.replace(FCM_TOKEN.encode(), b"no spaces allowed")
    with pytest.raises(ValidationError):
        validate_job_request({**BASE, "notify": codec.decode_request(bad, now_ms=1)["notify"]}, known_models={"m"})


def test_a_job_without_a_phone_writes_no_push_fields_to_the_table() -> None:
    from floodgate.jobs.state import JobState

    plain = JobState(job_id="job_1", tenant="t")
    assert "push_token" not in plain.to_dict() and JobState.from_dict(plain.to_dict()) == plain
    told = JobState(job_id="job_1", push_platform="fcm", push_token=FCM_TOKEN)
    assert JobState.from_dict(told.to_dict()) == told
