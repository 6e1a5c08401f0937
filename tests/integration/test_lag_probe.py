"""The worker's queue-depth probe on the real broker: end offsets minus the group's committed
offsets, per partition, and the gauges it sets for the partitions a worker owns."""
from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from floodgate.metrics import WorkerMetrics
from streams.lag import LagProbe, refresh
from tests.kafka_util import create_topics, unique_name

pytestmark = pytest.mark.kafka


def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def test_depth_is_end_minus_committed_per_partition(kafka_bootstrap: str) -> None:
    topic, group = unique_name("lag"), unique_name("g")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    probe = LagProbe(kafka_bootstrap, group)
    try:
        assert probe.lag([(topic, 0), (topic, 1)]) == {(topic, 0): 0, (topic, 1): 0}  # an empty topic
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
        for partition, count in ((0, 5), (1, 3)):
            for i in range(count):
                producer.produce(topic, value=b"%d" % i, partition=partition)
        assert producer.flush(30) == 0
        # Nothing committed: the group starts at the beginning, so everything waits.
        assert probe.lag([(topic, 0), (topic, 1)]) == {(topic, 0): 5, (topic, 1): 3}
        _commit(kafka_bootstrap, group, topic, {0: 2, 1: 3})
        assert probe.lag([(topic, 0), (topic, 1)]) == {(topic, 0): 3, (topic, 1): 0}

        registry = CollectorRegistry()
        # This worker owns only partition 0 of a 2-partition dispatch topic for a limit of 10.
        asyncio.run(refresh(probe, WorkerMetrics(registry), {"wan": (topic, 2, 10)}, [(topic, 0), ("other", 1)]))
        assert registry.get_sample_value("floodgate_queue_depth", {"provider": "wan"}) == 3
        assert registry.get_sample_value("floodgate_provider_concurrency_limit", {"provider": "wan"}) == 5
        # Orders read and parked for a slot are acknowledged (committed) but still wait: they count.
        registry = CollectorRegistry()
        asyncio.run(refresh(probe, WorkerMetrics(registry), {"wan": (topic, 2, 10)}, [(topic, 0)], {"wan": lambda: 4}))
        assert registry.get_sample_value("floodgate_queue_depth", {"provider": "wan"}) == 3 + 4
        # The breaker gauge follows this worker's breaker, but only for a provider whose partitions it owns.
        registry = CollectorRegistry()
        topics = {"wan": (topic, 2, 10), "kling": ("kling-topic", 1, 10)}
        asyncio.run(refresh(probe, WorkerMetrics(registry), topics, [(topic, 0)], None,
                            {"wan": lambda: True, "kling": lambda: True}))
        assert registry.get_sample_value("floodgate_provider_breaker_open", {"provider": "wan"}) == 1
        assert registry.get_sample_value("floodgate_provider_breaker_open", {"provider": "kling"}) == 0
    finally:
        probe.close()
    assert probe.lag([(topic, 0)]) == {}  # closed: answers nothing rather than crashing a late timer
