"""Small helpers for tests that talk to the real broker: unique names, topic creation, and
consume-until-deadline (never a sleep)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for fut in futures.values():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not acknowledged"


def consume_until(bootstrap: str, topic: str, done: Callable[[list], bool], *, timeout: float = 60.0,
                  group: str | None = None) -> list:
    """Read ``topic`` from the beginning until ``done(messages)`` or the deadline (then fail)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group or unique_name("g"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while not done(messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s on {topic}: {len(messages)} messages read")
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            messages.append(msg)
    finally:
        consumer.close()
    return messages


def wait_consumed(bootstrap: str, group: str, topic: str, *, timeout: float = 60.0) -> None:
    """Wait until ``group`` has committed offsets up to the current end of every partition of
    ``topic``: everything produced so far has been processed."""
    from confluent_kafka import TopicPartition

    admin = AdminClient({"bootstrap.servers": bootstrap})
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("probe")})
    try:
        parts = list(probe.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        probe.close()
    # An empty partition has nothing to consume, and the group never commits an offset there.
    committed = _poll_committed(admin, group, topic, parts,
                                lambda c: all(e == 0 or c.get(p, -1) >= e for p, e in ends.items()), timeout)
    if committed is not None:
        raise AssertionError(f"group {group} did not consume {topic} to {ends} within {timeout}s: {committed}")


def wait_committed(bootstrap: str, group: str, topic: str, *, timeout: float = 60.0) -> None:
    """Wait until ``group`` has committed an offset above 0 on every partition of ``topic``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = list(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    committed = _poll_committed(admin, group, topic, parts, lambda c: all(c.get(p, -1) > 0 for p in parts), timeout)
    if committed is not None:
        raise AssertionError(f"group {group} committed nothing on some partition of {topic} within {timeout}s: "
                             f"{committed}")


def wait_for_commits(bootstrap: str, group: str, topic: str, done: Callable[[dict[int, int]], bool], *,
                     timeout: float = 60.0) -> dict[int, int]:
    """Wait until ``group``'s committed offsets on ``topic`` (partition → offset) satisfy ``done``;
    returns them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = list(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    if (last := _poll_committed(admin, group, topic, parts, done, timeout)) is not None:
        raise AssertionError(f"group {group}'s commits on {topic} not as awaited within {timeout}s: {last}")
    return committed_offsets(bootstrap, group, topic)


def _poll_committed(admin: Any, group: str, topic: str, parts: list[int], done: Callable[[dict[int, int]], bool],
                    timeout: float) -> dict[int, int] | None:
    """Poll ``group``'s committed offsets on ``topic`` until ``done(offsets)``: None on success,
    else the last offsets seen when the deadline passed."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    deadline = time.monotonic() + timeout
    while True:  # at least one look, even with no time to wait
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])
        result = admin.list_consumer_group_offsets([request])[group].result(timeout=10)
        committed = {tp.partition: tp.offset for tp in result.topic_partitions}
        if done(committed):
            return None
        if time.monotonic() >= deadline:
            return committed
        time.sleep(0.2)


def read_all(bootstrap: str, topic: str, *, quiet: float = 3.0) -> list:
    """Every record of ``topic`` from the beginning, read until nothing new came for ``quiet`` s."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("all"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out: list = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
                last = time.monotonic()
    finally:
        consumer.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = list(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    return _poll_committed(admin, group, topic, parts, lambda c: False, 0.0) or {}  # one look
