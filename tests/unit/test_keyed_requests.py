"""The reader of ``requests`` for an API without a job view: each keyed request's hash, read
from its header (the value is never decoded), goes into the process's Idempotency-Key cache,
the first record of a job id winning; records without the header are skipped."""
from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from floodgate.api.idempotency import IdempotencyCache, Outcome
from floodgate.api.keyed import KeyedRequests, start_offsets
from floodgate.codec import SCHEMA_HEADER
from floodgate.validation import REQUEST_HASH_HEADER

TP0, TP1 = TopicPartition("requests", 0), TopicPartition("requests", 1)


def request(key: bytes | None, offset: int, digest: str | None) -> ConsumerRecord[bytes, bytes]:
    headers: list[tuple[str, bytes]] = [(SCHEMA_HEADER, b"JobRequest/v9")]
    if digest is not None:
        headers.append((REQUEST_HASH_HEADER, digest.encode()))
    return ConsumerRecord(topic="requests", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key,
                          value=b"\xff not a request", checksum=None, serialized_key_size=0,
                          serialized_value_size=0, headers=tuple(headers))


async def test_keyed_requests_are_learned_first_record_first() -> None:
    cache = IdempotencyCache()
    reader = KeyedRequests("127.0.0.1:1", "requests", 2, cache)  # not started: no broker needed
    reader.take({TP0: [request(b"j1", 0, "hA"), request(b"unkeyed", 1, None), request(None, 2, "hX"),
                       request(b"j1", 3, "hB")],
                 TP1: [request(b"j2", 0, "hC")]})
    assert reader.learned == 3
    assert cache.check("j1", "hA")[0] is Outcome.REPLAY
    assert cache.check("j1", "hB")[0] is Outcome.CONFLICT  # the later record of j1 lost
    assert cache.check("j2", "hC")[0] is Outcome.REPLAY
    assert cache.check("unkeyed", "hX")[0] is Outcome.NEW
    assert len(cache) == 2


def test_reading_starts_a_cache_worth_back_or_at_the_beginning() -> None:
    assert start_offsets({TP0: 0, TP1: 40}, {TP0: 100, TP1: 50}, back=30) == {TP0: 70, TP1: 40}
    assert start_offsets({TP0: 0}, {TP0: 0}, back=30) == {TP0: 0}


async def test_the_window_divides_the_cache_over_the_partitions() -> None:
    reader = KeyedRequests("127.0.0.1:1", "requests", 3, IdempotencyCache(max_entries=10))
    assert reader.window == 4
