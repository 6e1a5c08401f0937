"""Watermarks of a topic created a moment ago: a partition without a leader yet is asked again
until it answers, within the patience given; past it, the error is raised."""
from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from floodgate.kafka_admin import watermarks


class NoLeaderAtFirst:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.asked: list[tuple[str, int]] = []

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self.asked.append((tp.topic, tp.partition))
        if self.refusals:
            self.refusals -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return 0, 10 + tp.partition


def test_a_partition_without_a_leader_is_asked_again() -> None:
    consumer = NoLeaderAtFirst(refusals=2)
    marks = watermarks(consumer, [("requests", 0), ("requests", 1)])  # type: ignore[arg-type]
    assert marks == {("requests", 0): (0, 10), ("requests", 1): (0, 11)}
    assert consumer.asked == [("requests", 0)] * 3 + [("requests", 1)]


def test_past_its_patience_the_error_is_raised() -> None:
    with pytest.raises(KafkaException):
        watermarks(NoLeaderAtFirst(refusals=1), [("requests", 0)], patience=0.0)  # type: ignore[arg-type]
