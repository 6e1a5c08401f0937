"""The SDK's pure parts: producer option spelling and request preparation (no broker)."""
from __future__ import annotations

from typing import Any

import pytest

from floodgate import codec
from floodgate.errors import ConfigError
from floodgate.sdk import DEFAULT_LIMITS, JobSpec, PushTarget, ValidationError, _librdkafka_config, _Preparer
from floodgate.validation import REQUEST_HASH_HEADER


def preparer(**changes: object) -> _Preparer:
    options: dict[str, Any] = dict(tenant="acme", topic_prefix="fg.", known_models=None, id_secret=b"k" * 16,
                                      limits=DEFAULT_LIMITS, allow_private_webhooks=False)
    options.update(changes)
    return _Preparer(**options)


def test_keyword_options_become_librdkafka_names_but_callbacks_stay() -> None:
    def cb(*args: object) -> None: ...

    assert _librdkafka_config({"linger_ms": 20, "message.timeout.ms": 5, "error_cb": cb, "compression_type": "lz4"}) \
        == {"linger.ms": 20, "message.timeout.ms": 5, "error_cb": cb, "compression.type": "lz4"}


def test_default_models_are_the_dev_table() -> None:
    assert preparer().known_models == {"wan-2.6", "kling-2.1", "sora-2"}


def test_topic_follows_the_prefix() -> None:
    assert preparer().topic == "fg.requests"
    with pytest.raises(ConfigError):
        preparer(topic_prefix="bad prefix/")


@pytest.mark.parametrize("secret", [b"short", "not-bytes"])
def test_bad_id_secret_fails_at_construction(secret: object) -> None:
    with pytest.raises(ConfigError):
        preparer(id_secret=secret)


def test_empty_tenant_is_refused() -> None:
    with pytest.raises(ValidationError, match="tenant"):
        preparer(tenant="")


def test_prepared_record_decodes_as_a_job_request() -> None:
    item = preparer().prepare(JobSpec("sora-2", "a whale", "u-1", params={"fps": "24"}, idempotency_key="k1"), 1234)
    record = codec.decode_request(item.value, item.headers)
    assert record["job_id"] == item.job_id and item.key == item.job_id.encode()
    assert (record["tenant"], record["source"], record["accepted_at"]) == ("acme", "sdk", 1234)
    assert record["input"] == {"prompt": "a whale", "image_url": None, "params": {"fps": "24"}}
    assert preparer().prepare(JobSpec("sora-2", "a whale", "u-1", idempotency_key="k1"), 9).job_id == item.job_id


def test_a_keyed_record_carries_its_request_hash_in_a_header_and_an_unkeyed_one_does_not() -> None:
    keyed = preparer().prepare(JobSpec("sora-2", "a whale", "u-1", idempotency_key="k1"), 1234)
    digest = codec.decode_request(keyed.value, keyed.headers)["request_hash"]
    assert dict(keyed.headers)[REQUEST_HASH_HEADER] == digest.encode()
    unkeyed = preparer().prepare(JobSpec("sora-2", "a whale", "u-1"), 1234)
    assert REQUEST_HASH_HEADER not in dict(unkeyed.headers)


def test_a_prepared_record_carries_the_phone_to_tell_and_a_bad_token_is_refused() -> None:
    target = PushTarget("apns", "ab" * 32)
    item = preparer().prepare(JobSpec("sora-2", "a whale", "u-1", push=target), 1234)
    record = codec.decode_request(item.value, item.headers)
    assert record["notify"] == {"push": {"platform": "apns", "token": "ab" * 32}}
    with pytest.raises(ValidationError) as info:
        preparer().prepare(JobSpec("sora-2", "a whale", "u-1", push=PushTarget("apns", "not/hex")), 1234)
    assert [p.field for p in info.value.problems] == ["notify.push.token"]


@pytest.mark.parametrize(("key", "message"), [("", "non-empty"), ("x" * 256, "at most 255"),
                                               ("naïve", "printable ASCII"), ("tab\there", "printable ASCII")])
def test_idempotency_key_rules_match_the_http_api(key: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        preparer().prepare(JobSpec("sora-2", "x", "u", idempotency_key=key), 0)
    assert [p.field for p in info.value.problems] == ["idempotency_key"]
