"""``floodgate replay``'s reads on the real broker: a time range of a topic is found with
offsets_for_times on every partition, and a read stops at the end offsets it began with."""
from __future__ import annotations

import pytest
from confluent_kafka import Producer

from floodgate.ops.replay_cli import read_topic
from tests.kafka_util import create_topics, unique_name

pytestmark = pytest.mark.kafka

T0 = 1_800_000_000_000


def test_a_time_range_is_read_on_every_partition_and_nothing_past_its_end(kafka_bootstrap: str) -> None:
    topic = unique_name("replay-range")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    # Records stamped 0..5 s after T0, alternating partitions.
    for i in range(6):
        producer.produce(topic, value=b"r%d" % i, partition=i % 2, timestamp=T0 + i * 1000)
    assert producer.flush(30) == 0

    def values(start: int | None, end: int | None) -> list[bytes]:
        return sorted(m.value() for m in read_topic(kafka_bootstrap, topic, start, end, 10.0))

    assert values(None, None) == [b"r0", b"r1", b"r2", b"r3", b"r4", b"r5"]
    assert values(T0 + 1000, T0 + 4000) == [b"r1", b"r2", b"r3"]  # [from, to)
    assert values(T0 + 4500, None) == [b"r5"]
    assert values(T0 + 9000, None) == []  # after the last record: nothing, at once
    assert values(None, T0 + 500) == [b"r0"]
