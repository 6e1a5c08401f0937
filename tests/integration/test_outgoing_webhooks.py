"""Outgoing webhooks end to end: results topic on the real broker → signed POSTs to a live receiver."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.simulator.receiver import Delivery, run_receiver
from floodgate import codec, signing
from floodgate.kafka_admin import ensure_topics
from floodgate.notify import OutgoingWebhooks, RetryPolicy
from floodgate.settings import Secret, Settings
from floodgate.topics import TopicNames
from tests.kafka_util import consume_until, unique_name

pytestmark = pytest.mark.kafka

SECRET = signing.new_secret()
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_elapsed=10.0)
DEADLINE = 30.0


def make_settings(settings_for: Callable[..., Settings], *, allow_private: bool = True) -> Settings:
    settings = settings_for(app_id=unique_name("app-"), allow_private_webhooks=allow_private,
                            webhook_secrets=Secret(f"acme={SECRET}"), session_timeout=6.0)
    ensure_topics(settings.kafka_bootstrap, TopicNames(settings).layout({}), replication=1)
    return settings


def snapshot(job_id: str, webhook_url: str | None, *, status: str = "completed", version: int = 5) -> dict[str, Any]:
    done = status == "completed"
    return {
        "job_id": job_id, "tenant": "acme", "user_id": "u-1", "model": "kling-2.1", "provider": "kling",
        "provider_job_id": "p-" + job_id, "status": status, "progress": 1.0 if done else 0.4,
        "video_url": f"https://cdn.example.com/{job_id}.mp4" if done else None,
        "error": "provider failed" if status == "failed" else None, "attempt": 1,
        "created_at": 1_790_000_000_000, "updated_at": 1_790_000_060_000, "webhook_url": webhook_url,
        "metadata": {"order": job_id}, "version": version,
    }


def publish(settings: Settings, snapshots: list[dict[str, Any]]) -> list[bytes]:
    """Write snapshots to results as the job-state agent does (keyed by job id); returns the values."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    values = []
    for snap in snapshots:
        value, headers = codec.encode("JobSnapshot", snap)
        producer.produce(TopicNames(settings).results, value, snap["job_id"].encode(), headers=list(headers))
        values.append(value)
    assert producer.flush(30) == 0
    return values


@contextlib.asynccontextmanager
async def running(service: OutgoingWebhooks) -> AsyncIterator[OutgoingWebhooks]:
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def verified(delivery: Delivery) -> dict[str, str]:
    signing.verify(SECRET, delivery.headers, delivery.body, now=time.time())
    return dict(delivery.headers)


async def dead_letters(settings: Settings, count: int) -> list[dict[str, Any]]:
    topic = TopicNames(settings).dlq
    messages = await asyncio.to_thread(consume_until, settings.kafka_bootstrap, topic, lambda m: len(m) >= count)
    return [codec.decode("DeadLetter", m.value(), m.headers()) for m in messages]


def committed(settings: Settings, group: str) -> dict[int, tuple[int, int]]:
    """partition → (committed offset, end offset) of results for ``group``."""
    topic = TopicNames(settings).results
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        out = {}
        for tp in consumer.committed(parts, timeout=10):
            out[tp.partition] = (tp.offset, consumer.get_watermark_offsets(tp, timeout=10)[1])
        return out
    finally:
        consumer.close()


async def test_each_final_result_is_delivered_once_signed_and_committed(
        settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for)
    async with run_receiver() as receiver:
        jobs = [f"job-{i}" for i in range(20)]
        statuses = ["completed", "failed", "cancelled"]
        publish(settings, [snapshot(j, receiver.url, status=statuses[i % 3]) for i, j in enumerate(jobs)]
                + [snapshot("job-no-hook", None), snapshot("job-running", receiver.url, status="running")])
        service = OutgoingWebhooks(settings, policy=FAST, commit_interval=0.05)
        async with running(service):
            await eventually(lambda: service.stats.delivered + service.stats.skipped == 22, "all records handled")
            await eventually(lambda: all(c == end for c, end in committed(settings, service.group_id).values()),
                             "offsets committed to the end")
        assert len(receiver.deliveries) == 20
        headers = [verified(d) for d in receiver.deliveries]
        assert sorted(h["webhook-id"] for h in headers) == sorted(f"{j}:5" for j in jobs)
        stats = service.stats
        assert (stats.delivered, stats.skipped, stats.failed, stats.retries, stats.dead_lettered) == (20, 2, 0, 0, 0)


async def test_two_instances_share_the_work_and_deliver_each_result_once(
        settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for)
    async with run_receiver() as receiver:
        first = OutgoingWebhooks(settings, policy=FAST)
        second = OutgoingWebhooks(settings, policy=FAST)
        async with running(first), running(second):
            await eventually(lambda: bool(first.assignment) and bool(second.assignment)
                             and first.assignment | second.assignment == {0, 1}, "a settled group")
            assert not first.assignment & second.assignment
            jobs = [f"job-{i}" for i in range(40)]
            publish(settings, [snapshot(j, receiver.url) for j in jobs])
            await receiver.wait_count(40, timeout=DEADLINE)
            await eventually(lambda: first.stats.delivered + second.stats.delivered == 40, "40 deliveries")
        ids = [verified(d)["webhook-id"] for d in receiver.deliveries]
        assert sorted(ids) == sorted(f"{j}:5" for j in jobs)
        assert first.stats.delivered > 0 and second.stats.delivered > 0


async def test_backpressure_pauses_and_resumes_without_losing_records(
        settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for)
    async with run_receiver() as receiver:
        jobs = [f"job-{i}" for i in range(60)]
        publish(settings, [snapshot(j, receiver.url) for j in jobs])
        service = OutgoingWebhooks(settings, policy=FAST, concurrency=2, max_pending=3, commit_interval=0.05)
        async with running(service):
            await receiver.wait_count(60, timeout=DEADLINE)
            await eventually(lambda: all(c == end for c, end in committed(settings, service.group_id).values()),
                             "offsets committed to the end")
        assert sorted(verified(d)["webhook-id"] for d in receiver.deliveries) == sorted(f"{j}:5" for j in jobs)


async def test_retries_with_the_same_webhook_id_until_accepted(settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for)
    async with run_receiver(lambda delivery, before: 500 if before < 2 else 200) as receiver:
        publish(settings, [snapshot("job-flaky", receiver.url, version=9)])
        service = OutgoingWebhooks(settings, policy=FAST)
        async with running(service):
            await receiver.wait_count(3, timeout=DEADLINE)
            await eventually(lambda: service.stats.delivered == 1, "the delivery to count")
        assert len(receiver.deliveries) == 3
        headers = [verified(d) for d in receiver.deliveries]
        assert {h["webhook-id"] for h in headers} == {"job-flaky:9"}
        assert len({d.body for d in receiver.deliveries}) == 1
        stats = service.stats
        assert (stats.delivered, stats.retries, stats.failed, stats.dead_lettered) == (1, 2, 0, 0)


async def test_stopping_mid_backoff_leaves_the_record_for_the_next_owner(
        settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for)
    slow = RetryPolicy(max_attempts=5, base_delay=30.0, max_delay=60.0, max_elapsed=600.0)
    async with run_receiver(lambda delivery, before: 503 if before == 0 else 200) as receiver:
        publish(settings, [snapshot("job-interrupted", receiver.url)])
        first = OutgoingWebhooks(settings, policy=slow, commit_interval=0.05)
        async with running(first):
            await receiver.wait_count(1, timeout=DEADLINE)  # failed once; now waiting ≥15 s to retry
        assert all(c < end for c, end in committed(settings, first.group_id).values() if end > 0)
        second = OutgoingWebhooks(settings, policy=FAST)
        async with running(second):
            await receiver.wait_count(2, timeout=DEADLINE)
            await eventually(lambda: second.stats.delivered == 1, "the redelivery to count")
        assert {verified(d)["webhook-id"] for d in receiver.deliveries} == {"job-interrupted:5"}
        assert (first.stats.delivered, first.stats.failed, first.stats.dead_lettered) == (0, 0, 0)


async def test_private_destinations_are_dead_lettered_not_delivered(settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for, allow_private=False)
    async with run_receiver() as receiver:
        by_name = receiver.url.replace("127.0.0.1", "localhost")  # a name: refused by the resolver
        values = publish(settings, [snapshot("job-ip", receiver.url), snapshot("job-name", by_name)])
        service = OutgoingWebhooks(settings, policy=FAST)
        async with running(service):
            letters = await dead_letters(settings, 2)
            await eventually(lambda: service.stats.failed == 2, "both failures counted")
        assert receiver.deliveries == []
    by_key = {letter["key"]: letter for letter in letters}
    assert set(by_key) == {b"job-ip", b"job-name"}
    assert by_key[b"job-ip"]["original"] == values[0] and by_key[b"job-name"]["original"] == values[1]
    assert "private or reserved" in by_key[b"job-ip"]["reason"]
    assert "private or reserved" in by_key[b"job-name"]["reason"]
    for letter in letters:
        assert letter["source_topic"] == TopicNames(settings).results
        assert letter["error_type"] == "NotificationError"
        assert letter["headers"]["fg-schema"].startswith("JobSnapshot/")
        assert "after 1 attempt(s)" in letter["reason"]
    assert service.stats.retries == 0


async def test_a_bad_receiver_does_not_hold_up_the_others(settings_for: Callable[..., Settings]) -> None:
    settings = make_settings(settings_for)
    async with run_receiver(lambda d, n: 503) as down, run_receiver(lambda d, n: 404) as gone, \
            run_receiver() as healthy:
        publish(settings, [snapshot("job-down", down.url), snapshot("job-gone", gone.url)]
                + [snapshot(f"job-{i}", healthy.url) for i in range(10)]
                + [snapshot("job-junk", healthy.url)])
        # An undecodable record on the same topic must not stop anything either.
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        producer.produce(TopicNames(settings).results, b"\xff\x00not avro", b"job-junk-bytes")
        assert producer.flush(30) == 0
        service = OutgoingWebhooks(settings, policy=FAST, commit_interval=0.05)
        async with running(service):
            await healthy.wait_count(11, timeout=DEADLINE)
            letters = await dead_letters(settings, 3)
            await eventually(lambda: all(c == end for c, end in committed(settings, service.group_id).values()),
                             "offsets committed past the failures")
        assert len(down.deliveries) == FAST.max_attempts and len(gone.deliveries) == 1
    reasons = {letter["key"]: letter["reason"] for letter in letters}
    assert f"after {FAST.max_attempts} attempt(s): receiver answered HTTP 503" in reasons[b"job-down"]
    assert "after 1 attempt(s): receiver answered HTTP 404" in reasons[b"job-gone"]
    assert reasons[b"job-junk-bytes"].startswith("undecodable JobSnapshot")
    stats = service.stats
    assert (stats.delivered, stats.failed, stats.dead_lettered) == (11, 2, 3)
    assert stats.retries == FAST.max_attempts - 1


async def test_unreachable_broker_fails_start_and_stop_is_still_clean() -> None:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1")
    service = OutgoingWebhooks(settings)
    with pytest.raises(Exception, match="Unable to bootstrap"):
        await service.start()
    await service.stop()
    await service.stop()
