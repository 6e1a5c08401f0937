"""Topics created by an older release get the config the layout names now (``align_configs``):
on a real broker, a slot log made with compaction alone is given its bounded tail."""
from __future__ import annotations

import time
from collections.abc import Mapping

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from floodgate.kafka_admin import align_configs, ensure_topics
from floodgate.topics import REPLAYED_TABLE_LOG
from tests.kafka_util import unique_name

pytestmark = pytest.mark.kafka


def configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {key: entry.value for key, entry in entries.items()}


def configs_once(bootstrap: str, topic: str, expected: Mapping[str, str], timeout: float = 30.0) -> dict[str, str]:
    """The topic's config once ``expected`` shows in it (or, at the deadline, as it is). A change
    the controller acknowledged reaches the broker that answers a describe a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        now = configs(bootstrap, topic)
        if all(now.get(key) == value for key, value in expected.items()) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_an_existing_slot_log_is_given_the_layouts_config(kafka_bootstrap: str) -> None:
    topic = unique_name("slots-")
    # As releases before the bounded tail created it, with an entry set by hand since.
    ensure_topics(kafka_bootstrap, {topic: (2, {"cleanup.policy": "compact", "retention.bytes": "123456789"})}, 1)
    before = configs_once(kafka_bootstrap, topic, {"retention.bytes": "123456789"})
    assert before["delete.retention.ms"] == str(24 * 3600 * 1000)  # Kafka's default: a day

    assert ensure_topics(kafka_bootstrap, {topic: (2, dict(REPLAYED_TABLE_LOG))}, 1) == []  # none created

    after = configs_once(kafka_bootstrap, topic, REPLAYED_TABLE_LOG)
    assert {key: after[key] for key in REPLAYED_TABLE_LOG} == REPLAYED_TABLE_LOG
    assert after["retention.bytes"] == "123456789"  # what the layout does not name stays


def test_a_topic_already_as_the_layout_says_is_left_alone(kafka_bootstrap: str) -> None:
    topic = unique_name("slots-")
    ensure_topics(kafka_bootstrap, {topic: (1, dict(REPLAYED_TABLE_LOG))}, 1)
    configs_once(kafka_bootstrap, topic, REPLAYED_TABLE_LOG)  # (made with it: as soon as it shows)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert align_configs(admin, {topic: REPLAYED_TABLE_LOG}) == {}
    changed = align_configs(admin, {topic: {**REPLAYED_TABLE_LOG, "segment.ms": "30000"}})
    assert changed == {topic: {"segment.ms": "30000"}}
    assert configs_once(kafka_bootstrap, topic, {"segment.ms": "30000"})["segment.ms"] == "30000"
