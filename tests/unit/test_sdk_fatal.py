"""The sync SDK client when its real librdkafka producer suffers a fatal idempotence error.

No broker: each producer runs against librdkafka's own mock cluster (``test.mock.num.brokers``).
The fatal error is librdkafka's own, raised on demand (``tests/librdkafka_faults.py``). What this shows about
confluent-kafka 2.16.1 / librdkafka 2.16.0: ``flush()`` raises the fatal error (as a
``SystemError`` when a delivery report is served in the same call), queued records come back
``_PURGE_QUEUE``, and ``produce()`` answers ``_FATAL`` from then on."""
from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

import floodgate.sdk.sync_client as sync_sdk
from floodgate.ids import job_id_for_key
from floodgate.sdk import BatchDeliveryError, DeliveryError, FloodgateClient, JobSpec
from tests.librdkafka_faults import inject_fatal_error

SECRET = b"k" * 16


class FatalOnFlush(Producer):
    """A real librdkafka producer that suffers a fatal error at the start of its next ``flush()``
    once ``armed``, and remembers the keys it was given."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.keys: list[bytes] = []
        self.armed = False

    def produce(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> None:  # type: ignore[override]
        super().produce(topic, value, key, **kwargs)
        self.keys.append(key)

    def flush(self, *args: Any) -> int:
        if self.armed:
            self.armed = False
            inject_fatal_error(self)
        return super().flush(*args)


def mock_client(monkeypatch: pytest.MonkeyPatch, **options: Any) -> tuple[FloodgateClient, list[FatalOnFlush]]:
    made: list[FatalOnFlush] = []

    def factory(config: dict[str, Any]) -> FatalOnFlush:
        made.append(FatalOnFlush(config))
        return made[-1]

    monkeypatch.setattr(sync_sdk, "Producer", factory)
    # bootstrap.servers is replaced by the mock cluster's (one per producer instance).
    return FloodgateClient("unused:9092", tenant="acme", id_secret=SECRET, test_mock_num_brokers=1, **options), made


def test_a_fatal_error_fails_the_call_with_its_job_ids_and_the_next_call_uses_a_new_producer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A linger keeps the batch's records queued until the fatal error hits: librdkafka purges them.
    client, made = mock_client(monkeypatch, linger_ms=200)
    try:
        before = client.submit("sora-2", "before", user_id="u", idempotency_key="before")
        made[0].armed = True
        keys = ["a", "b", "c"]
        with pytest.raises(BatchDeliveryError) as info:
            client.submit_many([JobSpec("sora-2", "a whale", "u", idempotency_key=k) for k in keys])
        ids = [job_id_for_key(SECRET, "acme", k) for k in keys]
        assert info.value.job_ids == ids and sorted(info.value.failures) == [0, 1, 2]
        for index, error in info.value.failures.items():
            assert getattr(error, "job_id", None) == ids[index] and error.retriable
            # Purged from the queue: never in a request, so a retry cannot make a second copy.
            assert "not sent: its producer failed for good" in str(error), error
        after = client.submit("sora-2", "after", user_id="u", idempotency_key="after")
        assert client.renewals == 1 and len(made) == 2
        # The new producer got the new record only: nothing from before, acknowledged or purged.
        assert made[1].keys == [after.encode()]
        assert made[0].keys == [before.encode(), *(i.encode() for i in ids)]
    finally:
        client.close(timeout=5.0)


def test_a_call_after_an_unnoticed_fatal_error_fails_as_not_sent_and_the_one_after_it_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, made = mock_client(monkeypatch)
    try:
        client.submit("sora-2", "before", user_id="u")
        inject_fatal_error(made[0])  # between calls: nothing of ours is in flight
        with pytest.raises(DeliveryError, match="failed for good") as info:
            client.submit("sora-2", "during", user_id="u", idempotency_key="during")
        assert info.value.retriable
        assert getattr(info.value, "job_id", None) == job_id_for_key(SECRET, "acme", "during")
        client.submit("sora-2", "after", user_id="u")
        client.submit("sora-2", "and after", user_id="u")
        assert client.renewals == 1 and len(made) == 2 and len(made[1].keys) == 2
    finally:
        client.close(timeout=5.0)
