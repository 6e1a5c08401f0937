"""The reader of ``requests`` for an API without a job view: each keyed request's hash, read
from its header (the value is never decoded), goes into the process's Idempotency-Key cache,
the first record of a job id winning; records without the header are skipped."""
from __future__ import annotations

from confluent_kafka import KafkaError, Message

from floodgate.api.idempotency import IdempotencyCache, Outcome
from floodgate.api.keyed import KeyedRequests, keyed_pairs, start_offsets
from floodgate.codec import SCHEMA_HEADER
from floodgate.validation import REQUEST_HASH_HEADER


def request(key: bytes | None, digest: str | None, error: KafkaError | None = None) -> Message:
    headers: list[tuple[str, str | bytes | None]] = [(SCHEMA_HEADER, b"JobRequest/v9")]
    if digest is not None:
        headers.append((REQUEST_HASH_HEADER, digest.encode()))
    return Message(topic="requests", partition=0, key=key, value=b"\xff not a request", headers=headers,
                   error=error)


def test_only_keyed_requests_are_picked_in_order() -> None:
    failed = request(b"j9", "h9", error=KafkaError(KafkaError._PARTITION_EOF))
    messages = [request(b"j1", "hA"), request(b"unkeyed", None), request(None, "hX"), failed,
                request(b"j1", "hB"), request(b"j2", "hC"),
                Message(topic="requests", key=b"bare", value=b"")]  # no headers at all
    assert keyed_pairs(messages) == [("j1", "hA"), ("j1", "hB"), ("j2", "hC")]


async def test_the_first_record_of_a_job_id_wins() -> None:
    cache = IdempotencyCache()
    reader = KeyedRequests("127.0.0.1:1", "requests", 2, cache)  # not started: no broker needed
    reader.take([("j1", "hA"), ("j1", "hB"), ("j2", "hC")])
    assert reader.learned == 3
    assert cache.check("j1", "hA")[0] is Outcome.REPLAY
    assert cache.check("j1", "hB")[0] is Outcome.CONFLICT  # the later record of j1 lost
    assert cache.check("j2", "hC")[0] is Outcome.REPLAY
    assert len(cache) == 2


def test_reading_starts_a_cache_worth_back_or_at_the_beginning() -> None:
    assert start_offsets({("requests", 0): (0, 100), ("requests", 1): (40, 50)}, back=30) == {0: 70, 1: 40}
    assert start_offsets({("requests", 0): (0, 0)}, back=30) == {0: 0}


def test_the_window_divides_the_cache_over_the_partitions() -> None:
    reader = KeyedRequests("127.0.0.1:1", "requests", 3, IdempotencyCache(max_entries=10))
    assert reader.window == 4
