"""Create Floodgate's topics up front (the broker has auto-creation off, on purpose: a typo in a
topic name should fail loudly, not create an empty topic), and ask where their partitions begin
and end (``watermarks``), patiently while a new topic's leaders are being elected; the settings of
a reader that places itself (``groupless_reader``)."""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from floodgate.errors import ConfigError

log = logging.getLogger(__name__)


def cluster_replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: three copies at most,
    and an acknowledged write on all but one of them, so losing any one broker loses no
    acknowledged record and blocks no producer (3 brokers: 3 and 2; 1 broker: 1 and 1)."""
    replication = max(1, min(3, brokers))
    return replication, max(1, replication - 1)


def ensure_topics(bootstrap: str, layout: Mapping[str, tuple[int, Mapping[str, Any]]], replication: int,
                  timeout: float = 30.0) -> list[str]:
    """Create the missing topics of ``layout`` (name → (partitions, config)), and give the existing
    ones the config the layout names (``align_configs``); returns the topics created.

    An existing topic with a different partition count is an error: keys would hash elsewhere;
    so is creating one with a replication factor above the brokers up (said in the terms of
    Floodgate's settings).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    for name, (partitions, _) in layout.items():
        if name in existing and len(existing[name].partitions) != partitions:
            raise ConfigError(f"topic {name} has {len(existing[name].partitions)} partitions, expected {partitions}")
    align_configs(admin, {name: cfg for name, (_, cfg) in layout.items() if name in existing and cfg}, timeout)
    missing = [NewTopic(name, num_partitions=p, replication_factor=replication,
                        config={k: str(v) for k, v in cfg.items()})
               for name, (p, cfg) in layout.items() if name not in existing]
    if not missing:
        return []
    if metadata.brokers and replication > len(metadata.brokers):
        # Checked only when creating: existing topics stay usable while one broker is down.
        raise ConfigError(f"FLOODGATE_REPLICATION_FACTOR={replication} but the cluster at {bootstrap} has "
                          f"{len(metadata.brokers)} broker(s) up")
    created = []
    for name, fut in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def align_configs(admin: AdminClient, wanted: Mapping[str, Mapping[str, Any]],
                  timeout: float = 30.0) -> dict[str, dict[str, str]]:
    """Set, on existing topics, the config entries of ``wanted`` (topic → entries) whose value
    differs; entries it does not name are left as they are. Returns what changed, topic by topic.

    A topic created by an older release keeps its creation config otherwise: a fix to a topic's
    config (the slot logs' compaction, ``REPLAYED_TABLE_LOG``) would reach new deployments only.
    A cluster that refuses (no ALTER_CONFIGS right) is logged, not fatal: the topic still works."""
    if not wanted:
        return {}
    changes: dict[str, dict[str, str]] = {}
    try:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted]
        for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
            current = future.result(timeout=timeout)
            diff = {key: str(value) for key, value in wanted[resource.name].items()
                    if key not in current or current[key].value != str(value)}
            if diff:
                changes[resource.name] = diff
        if not changes:
            return {}
        alters = [ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in diff.items()])
            for name, diff in changes.items()]
        for _, future in admin.incremental_alter_configs(alters, request_timeout=timeout).items():
            future.result(timeout=timeout)
    except KafkaException as exc:
        log.warning("could not bring the config of existing topics to the layout's (%s); wanted: %s", exc, changes)
        return {}
    for name, diff in changes.items():
        log.info("topic %s: config set to the layout's: %s", name, diff)
    return changes


def groupless_reader(bootstrap: str, client_id: str, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for a reader that assigns its partitions itself, chooses where to start
    and never commits (the API's job view feed, its keyed-requests reader), with ``extra`` on top."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        # librdkafka wants a group id; such a reader never joins the group nor commits to it.
        "group.id": f"{client_id}-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **extra,
    }


def watermarks(consumer: Consumer, partitions: Iterable[tuple[str, int]],
               patience: float = 30.0) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) offsets of each (topic, partition), asked of the brokers (blocking). A topic
    created a moment ago may have no leader yet (librdkafka does not flag every such answer
    retriable): errors are retried for ``patience`` seconds, then raised."""
    deadline = time.monotonic() + patience
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    for t, p in partitions:
        while (t, p) not in marks:
            try:
                marks[(t, p)] = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise
                log.debug("watermarks of %s[%s]: %s; retrying", t, p, exc)
                time.sleep(0.2)
    return marks
