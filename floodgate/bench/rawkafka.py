"""The physical limit, same run, same broker: confluent-kafka producing and consuming records
of the size of a ``JobRequest`` with the SDK's producer settings (acks=all, idempotent,
murmur2), with no Floodgate code in the loop. Floodgate's numbers are quoted as ratios of these.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from floodgate import codec
from floodgate.api.ingress import job_request
from floodgate.bench.context import Context
from floodgate.ids import new_job_id
from floodgate.kafka_admin import ensure_topics
from floodgate.validation import validate_job_request


@dataclass(frozen=True)
class RawConfig:
    records: int = 500_000


def sample_record() -> tuple[bytes, bytes, list[tuple[str, str | bytes | None]]]:
    """Key, value and headers of a typical JobRequest, encoded as the API encodes it."""
    req = validate_job_request({"model": "wan-2.6", "user_id": "user-1",
                                "input": {"prompt": "a lighthouse in a storm, take 12345"}},
                               known_models=("wan-2.6",))
    job_id = new_job_id()
    value, headers = codec.encode("JobRequest", job_request(job_id, "default", req, None, int(time.time() * 1000)))
    return job_id.encode(), value, [(k, v) for k, v in headers]


def produce(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    key, value, headers = sample_record()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "partitioner": "murmur2_random"})
    keys = [key[:-6] + b"%06d" % (i % 1_000_000) for i in range(n)]  # spread over partitions
    t0 = time.perf_counter()
    for k in keys:
        while True:
            try:
                producer.produce(topic, value, k, headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(120)
    elapsed = time.perf_counter() - t0
    return {"records": n - left, "seconds": elapsed, "per_s": (n - left) / elapsed,
            "record_bytes": len(key) + len(value) + sum(len(h) + len(v or b"") for h, v in headers)}


def consume(bootstrap: str, topic: str, partitions: int, n: int) -> dict[str, Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "floodgate-bench-raw",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    try:
        while seen < n and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(10_000, 1.0) if m.error() is None)
        elapsed = time.perf_counter() - t0
    finally:
        consumer.close()
    return {"records": seen, "seconds": elapsed, "per_s": seen / elapsed if elapsed else 0.0}


def run(ctx: Context, cfg: RawConfig) -> dict[str, Any]:
    partitions = ctx.settings.partitions
    topic = f"bench.{ctx.work_dir.name}.raw"
    ensure_topics(ctx.bootstrap, {topic: (partitions, {})}, ctx.settings.replication_factor)
    ctx.progress.status(f"producing {cfg.records} records", force=True)
    produced = produce(ctx.bootstrap, topic, cfg.records)
    ctx.progress.status(f"consuming {produced['records']} records", force=True)
    consumed = consume(ctx.bootstrap, topic, partitions, produced["records"])
    return {"config": asdict(cfg), "topic_partitions": partitions, "produce": produced, "consume": consumed}
