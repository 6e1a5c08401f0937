"""Helpers for the API's integration tests: a served API on the real broker, and direct Kafka
reads/writes to check what reached the topics (or to play the worker's part)."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from floodgate import codec
from floodgate.api.server import ApiServer, serve
from floodgate.settings import Settings
from tests.kafka_util import unique_name

DEV_SIMULATOR = "http://127.0.0.1:9"  # connectors are built, never called: no simulator needed


@contextlib.asynccontextmanager
async def running_api(settings: Settings, **options: Any) -> AsyncIterator[ApiServer]:
    server = await serve(settings, host="127.0.0.1", port=0, **options)
    try:
        yield server
    finally:
        await server.close()


def record_count(bootstrap: str, topic: str) -> int:
    """Records ever written to ``topic`` (sum of high watermarks). Exact right after a 2xx:
    every record behind one was acknowledged before the response was sent."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("wm")})
    deadline = time.monotonic() + 20
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        while True:
            try:
                return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                           for p in partitions)
            except KafkaException:
                # A just-created topic may not have elected its leaders yet.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        consumer.close()


def read_records(bootstrap: str, topic: str, count: int, *, timeout: float = 20.0) -> list[Any]:
    """The first ``count`` records of ``topic`` (all partitions), read without a consumer group
    (no group join delay); fails after ``timeout`` seconds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("rd"),
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, f"{len(out)} of {count} records on {topic} after {timeout}s"
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
        return out
    finally:
        consumer.close()


async def aread_records(bootstrap: str, topic: str, count: int, *, timeout: float = 20.0) -> list[Any]:
    return await asyncio.to_thread(read_records, bootstrap, topic, count, timeout=timeout)


def produce_snapshots(bootstrap: str, topic: str, snapshots: Iterable[dict[str, Any]]) -> None:
    """Write ``JobSnapshot`` records as the job-state agent does (codec, keyed by job id)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 20000})
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for snap in snapshots:
        value, headers = codec.encode("JobSnapshot", snap)
        producer.produce(topic, key=snap["job_id"].encode(), value=value, headers=dict(headers),
                         on_delivery=delivered)
    assert producer.flush(30) == 0 and not failures, failures


async def aproduce_snapshots(bootstrap: str, topic: str, *snapshots: dict[str, Any]) -> None:
    await asyncio.to_thread(produce_snapshots, bootstrap, topic, snapshots)


def snapshot(job_id: str, version: int, status: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": job_id, "tenant": "default", "user_id": "u1", "model": "kling-2.1", "provider": "kling",
        "provider_job_id": "video_1", "status": status, "progress": 0.0, "video_url": None, "error": None,
        "attempt": 0, "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_000 + version,
        "webhook_url": None, "metadata": {}, "version": version,
    }
    return {**base, **fields}
