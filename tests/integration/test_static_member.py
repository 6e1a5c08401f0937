"""A static member's leave on a real broker (``streams.static_member``): a member stopped for good
hands its partitions over at once, not at the session timeout; one that comes back under its name
within the session timeout gets its partitions again without a rebalance."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from floodgate.cli import main
from floodgate.kafka_admin import ensure_topics
from streams.static_member import leave
from tests.kafka_util import unique_name

pytestmark = pytest.mark.kafka

PARTITIONS = 4
SESSION_TIMEOUT = 45.0  # long, so that a move before it can only be the leave's doing


class Assignments(ConsumerRebalanceListener):
    """Each assignment a member was given, and an event per change."""

    def __init__(self) -> None:
        self.now: set[TopicPartition] = set()
        self.assigned_times = 0
        self.changed = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.now = set(assigned)
        self.assigned_times += 1
        self.changed.set()

    async def until(self, count: int, timeout: float) -> float:
        """Seconds until this member holds ``count`` partitions (raises past ``timeout``)."""
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while len(self.now) != count:
                self.changed.clear()
                await self.changed.wait()
        return time.monotonic() - start


async def member(bootstrap: str, group: str, topic: str, name: str) -> tuple[AIOKafkaConsumer, Assignments]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, group_instance_id=name,
                                session_timeout_ms=int(SESSION_TIMEOUT * 1000), heartbeat_interval_ms=1000,
                                rebalance_timeout_ms=int(SESSION_TIMEOUT * 1000), enable_auto_commit=False)
    listener = Assignments()
    consumer.subscribe([topic], listener=listener)
    await consumer.start()
    return consumer, listener


def generation(consumer: AIOKafkaConsumer) -> int:
    """The group generation the member joined (a rebalance makes a new one)."""
    return int(consumer._coordinator.generation)  # (aiokafka keeps it on its coordinator)


@pytest.fixture
async def group(kafka_bootstrap: str) -> AsyncIterator[tuple[str, str]]:
    topic, group_id = unique_name("static-"), unique_name("static-group-")
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, {topic: (PARTITIONS, {})}, 1)
    yield topic, group_id


async def two_members(bootstrap: str, topic: str, group_id: str) -> tuple[tuple[AIOKafkaConsumer, Assignments], ...]:
    """Members ``worker-a`` and ``worker-b`` of the group, once each holds half the partitions.
    (aiokafka joins and syncs from a task of its own: no fetch needed.)"""
    a = await member(bootstrap, group_id, topic, "worker-a")
    b = await member(bootstrap, group_id, topic, "worker-b")
    await asyncio.gather(a[1].until(PARTITIONS // 2, 60), b[1].until(PARTITIONS // 2, 60))
    return a, b


async def test_a_static_member_that_leaves_hands_its_partitions_over_before_the_session_timeout(
        kafka_bootstrap: str, group: tuple[str, str]) -> None:
    topic, group_id = group
    (a, _), (b, b_seen) = await two_members(kafka_bootstrap, topic, group_id)
    try:
        await a.stop()  # aiokafka sends no LeaveGroup for a static member
        left = await leave(kafka_bootstrap, group_id, "worker-a")
        assert left.error is None and left.gone
        took = await b_seen.until(PARTITIONS, SESSION_TIMEOUT - 5)
        assert took < SESSION_TIMEOUT / 2, f"{took:.1f} s: the move waited for the session timeout"
        again = await leave(kafka_bootstrap, group_id, "worker-a")
        assert again.error == "UnknownMemberIdError" and again.gone, "a second leave finds nobody"
    finally:
        await b.stop()


async def test_a_static_member_back_under_its_name_gets_its_partitions_without_a_rebalance(
        kafka_bootstrap: str, group: tuple[str, str]) -> None:
    topic, group_id = group
    (a, a_seen), (b, b_seen) = await two_members(kafka_bootstrap, topic, group_id)
    held, b_times, before = a_seen.now, b_seen.assigned_times, generation(a)
    a2 = None
    try:
        await a.stop()  # as if killed: no leave
        a2, a2_seen = await member(kafka_bootstrap, group_id, topic, "worker-a")
        await a2_seen.until(PARTITIONS // 2, 60)
        assert a2_seen.now == held, "the same partitions as before it stopped"
        assert generation(a2) == before == generation(b), "no rebalance: the group's generation is the same"
        assert b_seen.assigned_times == b_times
    finally:
        await b.stop()
        if a2 is not None:
            await a2.stop()
        await leave(kafka_bootstrap, group_id, "worker-a")
        await leave(kafka_bootstrap, group_id, "worker-b")


async def test_floodgate_leave_takes_a_stopped_member_out_of_its_group(
        kafka_bootstrap: str, group: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``floodgate leave <worker id>``: for a worker stopped for good without its leave."""
    topic, group_id = group
    monkeypatch.setenv("FLOODGATE_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("FLOODGATE_APP_ID", group_id)
    (a, _), (b, b_seen) = await two_members(kafka_bootstrap, topic, group_id)
    try:
        await a.stop()  # no leave: it would hold its partitions for the session timeout
        assert await asyncio.to_thread(main, ["leave", "worker-a"]) == 0
        took = await b_seen.until(PARTITIONS, SESSION_TIMEOUT - 5)
        assert took < SESSION_TIMEOUT / 2, f"{took:.1f} s: the move waited for the session timeout"
        assert await asyncio.to_thread(main, ["leave", "worker-a"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == [f"worker-a left group {group_id}: its partitions move now",
                       f"worker-a was not a member of group {group_id}"]
    finally:
        await b.stop()
        await leave(kafka_bootstrap, group_id, "worker-b")
