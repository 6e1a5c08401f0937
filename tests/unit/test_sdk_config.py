"""The SDK without a broker: producer options, request preparation, and what a sync call reports
when its producer (a fake here) refuses, fails or never acknowledges a record. The async client's
outcomes are in test_sdk_async.py, fatal errors of a real librdkafka producer in test_sdk_fatal.py."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError

import floodgate.sdk.sync_client as sync_sdk
from floodgate import codec
from floodgate.errors import ConfigError
from floodgate.ids import job_id_for_key
from floodgate.sdk import (
    DEFAULT_LIMITS,
    BatchDeliveryError,
    DeliveryError,
    FloodgateClient,
    JobSpec,
    PushTarget,
    ValidationError,
)
from floodgate.sdk.options import librdkafka_config
from floodgate.sdk.prepare import Preparer
from floodgate.validation import REQUEST_HASH_HEADER

SECRET = b"k" * 16


def preparer(**changes: object) -> Preparer:
    options: dict[str, Any] = dict(tenant="acme", topic_prefix="fg.", known_models=None, id_secret=b"k" * 16,
                                      limits=DEFAULT_LIMITS, allow_private_webhooks=False)
    options.update(changes)
    return Preparer(**options)


def test_keyword_options_become_librdkafka_names_but_callbacks_stay() -> None:
    def cb(*args: object) -> None: ...

    assert librdkafka_config({"linger_ms": 20, "message.timeout.ms": 5, "error_cb": cb, "compression_type": "lz4"}) \
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


# --- delivery outcomes, against fake producers ---------------------------------------------------

class FakeProducer:
    """confluent-kafka's Producer as the sync client uses it. ``verdict(n)`` is the delivery
    report flush() serves for the n-th record produced: None (acknowledged), a KafkaError, or
    ``"silent"`` (no report yet: librdkafka still holds the record)."""

    def __init__(self, config: dict[str, Any], verdict: Callable[[int], KafkaError | None | str]) -> None:
        self.config = config
        self.verdict = verdict
        self.pending: list[tuple[int, Any]] = []
        self.flush_timeouts: list[float] = []
        self.produced = 0

    def produce(self, topic: str, value: bytes, key: bytes, *, headers: Any, on_delivery: Any) -> None:
        self.pending.append((self.produced, on_delivery))
        self.produced += 1

    def flush(self, timeout: float) -> int:
        self.flush_timeouts.append(timeout)
        still = []
        for number, callback in self.pending:
            verdict = self.verdict(number)
            if isinstance(verdict, str):  # "silent": no report yet
                still.append((number, callback))
            else:
                callback(verdict, None)
        self.pending = still
        return len(still)

    def poll(self, timeout: float) -> int:
        return 0


def sync_client(monkeypatch: pytest.MonkeyPatch, verdict: Callable[[int], KafkaError | None | str] = lambda n: None,
                **options: Any) -> tuple[FloodgateClient, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config, verdict))
        return made[-1]

    monkeypatch.setattr(sync_sdk, "Producer", factory)
    return FloodgateClient("broker:9092", tenant="acme", id_secret=SECRET, **options), made


def test_librdkafka_gives_a_record_up_within_the_clients_send_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka's default is 300 s: a submit that gave up after 10 s could still make its job minutes later.
    assert sync_client(monkeypatch)[1][0].config["message.timeout.ms"] == 8000
    assert sync_client(monkeypatch, send_timeout=3.5)[1][0].config["message.timeout.ms"] == 3500
    # A shorter bound of the caller's own is kept (either spelling), a longer one refused.
    assert sync_client(monkeypatch, message_timeout_ms=1000)[1][0].config["message.timeout.ms"] == 1000
    assert sync_client(monkeypatch, delivery_timeout_ms=900)[1][0].config["message.timeout.ms"] == 900
    assert "delivery.timeout.ms" not in sync_client(monkeypatch, delivery_timeout_ms=900)[1][0].config


@pytest.mark.parametrize("options", [
    {"message_timeout_ms": 60_000}, {"delivery_timeout_ms": 300_000}, {"message_timeout_ms": 0},
    {"send_timeout": 0}, {"send_timeout": -1.0}, {"send_timeout": float("nan")},
])
def test_a_record_bound_past_the_send_timeout_or_none_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                  options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        sync_client(monkeypatch, **options)


def test_submit_waits_by_default_until_librdkafka_has_decided(monkeypatch: pytest.MonkeyPatch) -> None:
    client, [producer] = sync_client(monkeypatch, send_timeout=4.0)
    client.submit("sora-2", "a whale", user_id="u")
    # librdkafka reports a record it gave up up to a second past message.timeout.ms.
    assert producer.flush_timeouts[0] > producer.config["message.timeout.ms"] / 1000 + 1.0


def test_a_timed_out_submit_names_its_job_id(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = sync_client(monkeypatch, verdict=lambda n: "silent")
    with pytest.raises(DeliveryError, match="no acknowledgement within 0.5s; it may still be written up to 8s") \
            as info:
        client.submit("sora-2", "a whale", user_id="u", idempotency_key="order-7", timeout=0.5)
    assert info.value.retriable
    assert getattr(info.value, "job_id", None) == job_id_for_key(SECRET, "acme", "order-7")


def test_a_record_librdkafka_gave_up_names_its_job_id_and_in_a_batch_each_failure_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
    client, _ = sync_client(monkeypatch, verdict=lambda n: None if n == 2 else timed_out)  # n counts produce()s
    with pytest.raises(DeliveryError, match="broker did not accept") as single:
        client.submit("sora-2", "a whale", user_id="u", idempotency_key="a")
    assert single.value.retriable and getattr(single.value, "job_id", None) == job_id_for_key(SECRET, "acme", "a")
    specs = [JobSpec("sora-2", "a whale", "u", idempotency_key=k) for k in ("b", "c")]
    with pytest.raises(BatchDeliveryError) as batch:
        client.submit_many(specs)
    ids = [job_id_for_key(SECRET, "acme", k) for k in ("b", "c")]
    assert batch.value.job_ids == ids and sorted(batch.value.failures) == [0]  # the second (n=2) was acked
    assert getattr(batch.value.failures[0], "job_id", None) == ids[0]
