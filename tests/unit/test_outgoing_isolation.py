"""One slow destination never stalls the others: the outgoing webhooks and the pushes, in memory.

The service runs for real (its fetch loop, pausing, commit loop, stop) against a fake ``results``
consumer and dlq producer; the receivers are a notifier whose black hole accepts attempts and
answers none until the test lets it. No broker, no HTTP, no sleeps to wait for things: every wait
is for a condition, under a deadline.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from connectors.notifiers.base import Notification, NotificationError
from floodgate import codec
from floodgate.errors import ConfigError
from floodgate.metrics import ApiMetrics
from floodgate.notify import OutgoingWebhooks, PushDeliveries, RetryPolicy, outgoing
from floodgate.notify.outgoing import fetch_room, webhook_destination
from floodgate.settings import Settings
from tests.fake_results import FakeResults

TOPIC = "results"
DEADLINE = 5.0
"""Generous for a loop that needs milliseconds, and far below what the black hole would hold
things up for (for ever, until the test lets it answer)."""
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_elapsed=10.0)


# --- pure rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "lane"), [
    ("https://hooks.example.com/a", "hooks.example.com:443"),
    ("https://HOOKS.example.com./b?x=1", "hooks.example.com:443"),  # one receiver, however spelt
    ("http://hooks.example.com/a", "hooks.example.com:80"),
    ("https://hooks.example.com:8443/a", "hooks.example.com:8443"),
    ("https://user@hooks.example.com/a", "hooks.example.com:443"),
    ("http://[2001:db8::1]:9000/h", "[2001:db8::1]:9000"),
    ("https://hooks.example.com:99999/a", "https://hooks.example.com:99999/a"),  # unparsable: its own lane
])
def test_a_webhook_lane_is_the_receivers_host_and_port(url: str, lane: str) -> None:
    assert webhook_destination(url) == lane


@pytest.mark.parametrize(("held", "overflow", "room"), [
    (0, 0, 32),
    (32, 0, 0),  # as many records as max_pending, for many destinations: the fetch waits
    (40, 36, 28),  # 40 of them for one black hole, share 4: only 4 count
    (128, 120, 0),  # ... but memory is bounded all the same
    (130, 126, -2),
])
def test_fetch_room_counts_a_destination_only_up_to_its_share(held: int, overflow: int, room: int) -> None:
    assert fetch_room(held, overflow, max_pending=32, max_held=128) == room


# --- the service, in memory ---------------------------------------------------------------------
class FakeDlq:
    def __init__(self) -> None:
        self.letters: list[bytes] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_and_wait(self, topic: str, value: bytes, headers: Iterable[tuple[str, bytes]] = ()) -> None:
        self.letters.append(value)


class Receivers:
    """Every destination answers at once, except ``hole``: it accepts attempts and answers none
    until ``answer`` is set (then it takes them)."""

    def __init__(self, hole: Callable[[Notification], bool]) -> None:
        self.is_hole = hole
        self.answer = asyncio.Event()
        self.hanging = 0
        self.most_hanging = 0
        self.delivered: set[str] = set()

    async def send(self, notification: Notification) -> None:
        if self.is_hole(notification):
            self.hanging += 1
            self.most_hanging = max(self.most_hanging, self.hanging)
            try:
                await self.answer.wait()
            finally:
                self.hanging -= 1
        self.delivered.add(notification.job_id)


def record(partition: int, offset: int, job_id: str, **fields: Any) -> ConsumerRecord[Any, Any]:
    snap = {"job_id": job_id, "tenant": "acme", "user_id": "u-1", "model": "kling-2.1", "provider": "kling",
            "provider_job_id": "p-" + job_id, "status": "completed", "progress": 1.0,
            "video_url": f"https://cdn.example.com/{job_id}.mp4", "error": None, "attempt": 1,
            "created_at": 1_790_000_000_000, "updated_at": 1_790_000_060_000, "webhook_url": None,
            "metadata": {}, "version": 5} | fields
    value, headers = codec.encode("JobSnapshot", snap)
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, job_id.encode(), value, None, len(job_id), len(value),
                          headers)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        await asyncio.sleep(0.001)


HOLE, HEALTHY = "https://hole.example.com/hook", "https://tenant-b.example.com/hook"
TOKEN = "ab" * 32


def webhook(partition: int, offset: int, job_id: str) -> ConsumerRecord[Any, Any]:
    return record(partition, offset, job_id, webhook_url=HOLE if job_id.startswith("hole") else HEALTHY)


def push(partition: int, offset: int, job_id: str) -> ConsumerRecord[Any, Any]:
    platform = "apns" if job_id.startswith("hole") else "fcm"
    return record(partition, offset, job_id, push={"platform": platform, "token": TOKEN})


def results(make: Callable[[int, int, str], ConsumerRecord[Any, Any]]) -> dict[int, list[ConsumerRecord[Any, Any]]]:
    """Partition 0: 30 results for the black hole, one healthy, 30 more, one healthy; partition 1: one healthy.
    Twice ``max_pending`` for the black hole, so pausing for its records would stop everything."""
    jobs = [f"hole-{i}" for i in range(30)] + ["ok-a"] + [f"hole-{i}" for i in range(30, 60)] + ["ok-b"]
    return {0: [make(0, offset, job) for offset, job in enumerate(jobs)], 1: [make(1, 0, "ok-c")]}


# The black hole's most attempts at once: its lane's cap (16 // 8 for webhooks, 16 // 2 for push)
# while the others need slots; alone, all but the reserved quarter of the 16 (a burst).
CHANNELS = [
    pytest.param(OutgoingWebhooks, webhook, lambda n: n.webhook_url == HOLE, 12, id="webhooks"),
    pytest.param(PushDeliveries, push, lambda n: n.push is not None and n.push.platform == "apns", 12,
                 id="push"),
]


def service_for(monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks],
                make: Callable[[int, int, str], ConsumerRecord[Any, Any]],
                hole: Callable[[Notification], bool]) -> tuple[OutgoingWebhooks, FakeResults, Receivers]:
    receivers = Receivers(hole)
    log = results(make)
    by_offset = {(p, r.offset): r.key.decode() for p, records in log.items() for r in records if r.key}
    fake = FakeResults(TOPIC, log, lambda r: by_offset[(r.partition, r.offset)] in receivers.delivered)
    monkeypatch.setattr(outgoing, "results_consumer", lambda settings, group_id, wait_ms: fake)
    monkeypatch.setattr(outgoing, "AIOKafkaProducer", lambda **_: FakeDlq())
    service = channel(Settings(kafka_bootstrap="127.0.0.1:9"), notifier=receivers, policy=FAST, concurrency=16,
                      max_pending=32, commit_interval=0.001, drain_timeout=0.05)
    return service, fake, receivers


@pytest.mark.parametrize(("channel", "make", "hole", "lane_cap"), CHANNELS)
async def test_a_black_hole_holds_only_its_share_and_the_others_are_delivered_at_once(
        monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks],
        make: Callable[[int, int, str], ConsumerRecord[Any, Any]], hole: Callable[[Notification], bool],
        lane_cap: int) -> None:
    service, fake, receivers = service_for(monkeypatch, channel, make, hole)
    await service.start()
    try:
        await eventually(lambda: {"ok-a", "ok-b", "ok-c"} <= receivers.delivered,
                         "the healthy results delivered while the black hole has not answered once")
        assert receivers.hanging == receivers.most_hanging == lane_cap  # never the reserved quarter
        assert fake.position == {0: 62, 1: 1} and not fake.paused_now  # every result fetched, nothing paused
        await eventually(lambda: fake.committed.get(1) == 1, "the healthy partition committed")
        assert fake.committed.get(0, 0) == 0  # partition 0's first record is the black hole's, unfinished
        receivers.answer.set()  # the receiver comes back
        await eventually(lambda: fake.committed.get(0) == 62, "partition 0 committed to its end")
    finally:
        await service.stop()
    assert not fake.violations
    assert receivers.most_hanging == lane_cap
    stats = service.stats
    assert (stats.delivered, stats.failed, stats.dead_lettered) == (63, 0, 0)


@pytest.mark.parametrize(("channel", "make", "hole", "lane_cap"), CHANNELS)
async def test_stopping_leaves_the_black_holes_records_uncommitted(
        monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks],
        make: Callable[[int, int, str], ConsumerRecord[Any, Any]], hole: Callable[[Notification], bool],
        lane_cap: int) -> None:
    service, fake, receivers = service_for(monkeypatch, channel, make, hole)
    await service.start()
    try:
        await eventually(lambda: {"ok-a", "ok-b", "ok-c"} <= receivers.delivered, "the healthy results delivered")
    finally:
        await asyncio.wait_for(service.stop(), DEADLINE)  # hung attempts are cut at drain_timeout
    assert not fake.violations and fake.commits > 0
    assert fake.committed.get(0, 0) == 0 and fake.committed[1] == 1  # the next owner delivers the black hole's
    stats = service.stats
    assert (stats.delivered, stats.failed, stats.dead_lettered) == (3, 0, 0)


# --- open breakers, as metrics ------------------------------------------------------------------
class Refusing:
    """Every destination takes its deliveries at once, except the hole's: refused every time, as a
    receiver (or platform) that is down refuses connections."""

    def __init__(self, hole: Callable[[Notification], bool]) -> None:
        self.is_hole = hole
        self.delivered: set[str] = set()

    async def send(self, notification: Notification) -> None:
        if self.is_hole(notification):
            raise NotificationError("connection refused", retriable=True)
        self.delivered.add(notification.job_id)


@pytest.mark.parametrize(("channel", "make", "hole", "lane_cap"), CHANNELS)
async def test_an_open_breaker_is_shown_by_channel_never_by_destination(
        monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks],
        make: Callable[[int, int, str], ConsumerRecord[Any, Any]], hole: Callable[[Notification], bool],
        lane_cap: int) -> None:
    registry = CollectorRegistry()
    receivers = Refusing(hole)
    log = results(make)
    fake = FakeResults(TOPIC, log, lambda r: False)
    monkeypatch.setattr(outgoing, "results_consumer", lambda settings, group_id, wait_ms: fake)
    monkeypatch.setattr(outgoing, "AIOKafkaProducer", lambda **_: FakeDlq())
    service = channel(Settings(kafka_bootstrap="127.0.0.1:9"), notifier=receivers, policy=FAST, concurrency=16,
                      max_pending=32, commit_interval=0.001, drain_timeout=0.05, metrics=ApiMetrics(registry))
    name = service.channel

    def metric(metric_name: str) -> float:
        return registry.get_sample_value(metric_name, {"channel": name}) or 0.0

    assert metric("floodgate_destination_breakers_open") == 0
    await service.start()
    try:
        await eventually(lambda: metric("floodgate_destination_breakers_open") == 1, "the hole's breaker open")
        await eventually(lambda: {"ok-a", "ok-b", "ok-c"} <= receivers.delivered, "the others delivered")
        assert metric("floodgate_destination_breaker_openings_total") == 1
        labels = {(s.name, tuple(sorted(s.labels.items()))) for family in registry.collect()
                  if family.name.startswith("floodgate_destination_breaker") for s in family.samples}
        assert {label for _, series in labels for label in series} == {
            ("channel", c) for c in ("webhooks", "push", "videos")}  # never a destination
    finally:
        await service.stop()
    assert metric("floodgate_destination_breakers_open") == 0  # the lane went with its deliveries
    assert metric("floodgate_destination_breaker_openings_total") == 1


# --- a destination's bound on the deliveries it holds -------------------------------------------
class TimingOut(Receivers):
    """As :class:`Receivers`, until ``time_out`` is set: then the black hole's hanging attempts end
    as its timeouts end them, and every later one fails the same way at once."""

    def __init__(self, hole: Callable[[Notification], bool]) -> None:
        super().__init__(hole)
        self.time_out = asyncio.Event()

    async def send(self, notification: Notification) -> None:
        if self.is_hole(notification):
            if not self.time_out.is_set():
                self.hanging += 1
                self.most_hanging = max(self.most_hanging, self.hanging)
                try:
                    await self.time_out.wait()
                finally:
                    self.hanging -= 1
            raise NotificationError("timed out", retriable=True)
        self.delivered.add(notification.job_id)


def dead_letters(dlq: FakeDlq) -> dict[str, str]:
    """Job id → reason of each dead letter written."""
    letters = (codec.decode("DeadLetter", value) for value in dlq.letters)
    return {bytes(letter["key"]).decode(): letter["reason"] for letter in letters}


async def unpaused(fake: FakeResults) -> None:
    """The fetch may pause for the loop turns between a record's dead letter and its task's end
    (the task's done callback frees its room): give it those turns, no more, before asserting on it."""
    for _ in range(100):
        if not fake.paused_now:
            return
        await asyncio.sleep(0)


def bounded(monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks], receivers: Receivers,
            log: dict[int, list[ConsumerRecord[Any, Any]]],
            registry: CollectorRegistry) -> tuple[OutgoingWebhooks, FakeResults, FakeDlq]:
    """The service with ``max_held`` 64, so a destination's bound is 32 (half), its share 4."""
    dlq = FakeDlq()

    def done(r: ConsumerRecord[Any, Any]) -> bool:
        assert r.key is not None
        job = bytes(r.key).decode()
        return job in receivers.delivered or job in dead_letters(dlq)

    fake = FakeResults(TOPIC, log, done)
    monkeypatch.setattr(outgoing, "results_consumer", lambda settings, group_id, wait_ms: fake)
    monkeypatch.setattr(outgoing, "AIOKafkaProducer", lambda **_: dlq)
    service = channel(Settings(kafka_bootstrap="127.0.0.1:9"), notifier=receivers, policy=FAST, concurrency=16,
                      max_pending=32, max_held=64, commit_interval=0.001, drain_timeout=0.05,
                      metrics=ApiMetrics(registry))
    return service, fake, dlq


@pytest.mark.parametrize(("channel", "make", "hole", "lane_cap"), CHANNELS)
async def test_a_black_hole_holds_at_most_its_bound_and_once_it_times_out_the_others_go_on(
        monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks],
        make: Callable[[int, int, str], ConsumerRecord[Any, Any]], hole: Callable[[Notification], bool],
        lane_cap: int) -> None:
    """Partition 0: 100 results for a black hole, more than ``max_held`` (64), then one healthy;
    partition 1: one healthy. Before the bound, the hole's deliveries filled all 64 places and the
    fetch paused for everyone; once its attempts timed out and its breaker opened they only waited
    for their retry budget to give them up (ten minutes by default), and the healthy results were
    not read until then. With the bound, it holds 32: while its breaker is closed the fetch waits
    for it (its attempts are under way); once they time out and the breaker opens, its next 68 are
    dead-lettered at once and the others' results are fetched and delivered."""
    registry = CollectorRegistry()
    receivers = TimingOut(hole)
    jobs = [f"hole-{i}" for i in range(100)] + ["ok-a"]
    log = {0: [make(0, offset, job) for offset, job in enumerate(jobs)], 1: [make(1, 0, "ok-c")]}
    service, fake, dlq = bounded(monkeypatch, channel, receivers, log, registry)
    name = service.channel
    await service.start()
    try:
        await eventually(lambda: bool(fake.paused_now) and receivers.hanging == lane_cap,
                         "the fetch waiting for the black hole's attempts")
        assert fake.position == {0: 32, 1: 0} and not dlq.letters  # its bound, and nothing given up yet
        receivers.time_out.set()  # its attempts time out: its breaker opens
        await eventually(lambda: {"ok-a", "ok-c"} <= receivers.delivered,
                         "the healthy results delivered while the black hole's deliveries wait for its breaker")
        await eventually(lambda: fake.position == {0: 101, 1: 1}, "every result fetched")
        await unpaused(fake)
        assert not fake.paused_now
        assert registry.get_sample_value("floodgate_destination_breakers_open", {"channel": name}) == 1
        letters = dead_letters(dlq)
        assert set(letters) == {f"hole-{i}" for i in range(32, 100)}  # the first 32 are held, in its lane
        assert all("after 0 attempt(s)" in reason and "breaker is open" in reason and "holds 32" in reason
                   for reason in letters.values())
        outcomes = "floodgate_outgoing_webhooks_total" if name == "webhooks" else "floodgate_push_notifications_total"
        assert registry.get_sample_value(outcomes, {"outcome": "failed"}) == 68
        assert registry.get_sample_value("floodgate_deliveries_shed_total", {"channel": name}) == 68
        await eventually(lambda: fake.committed.get(1) == 1, "the healthy partition committed")
        assert fake.committed.get(0, 0) == 0  # partition 0 starts with a held delivery of the hole's
    finally:
        await service.stop()
    assert not fake.violations
    stats = service.stats
    assert (stats.delivered, stats.failed, stats.dead_lettered, stats.shed) == (2, 68, 68, 68)


@pytest.mark.parametrize(("channel", "make", "hole", "lane_cap"), CHANNELS)
async def test_a_slow_destination_at_its_bound_is_waited_for_never_given_up_on(
        monkeypatch: pytest.MonkeyPatch, channel: type[OutgoingWebhooks],
        make: Callable[[int, int, str], ConsumerRecord[Any, Any]], hole: Callable[[Notification], bool],
        lane_cap: int) -> None:
    """100 results for one destination that takes its deliveries, only slowly (as all of a lag
    for one receiver after a restart is): at its bound, with its breaker closed, the fetch waits
    for it, and every delivery is made; none is dead-lettered for being past the bound."""
    receivers = Receivers(hole)
    jobs = [f"hole-{i}" for i in range(100)]
    service, fake, dlq = bounded(monkeypatch, channel, receivers, {0: [make(0, o, j) for o, j in enumerate(jobs)]},
                                 CollectorRegistry())
    await service.start()
    try:
        await eventually(lambda: bool(fake.paused_now) and receivers.hanging == lane_cap,
                         "the fetch waiting for the slow destination")
        assert fake.position == {0: 32} and not dlq.letters
        receivers.answer.set()  # it answers
        await eventually(lambda: fake.committed.get(0) == 100, "every result delivered and committed")
    finally:
        await service.stop()
    assert not fake.violations and not dlq.letters
    stats = service.stats
    assert (stats.delivered, stats.failed, stats.shed) == (100, 0, 0)


@pytest.mark.parametrize(("max_held", "bound", "most"), [
    (None, None, 64),  # half of max_held, itself 4 × max_pending
    (100, None, 50),
    (33, None, 16),
    (64, 8, 8),
])
def test_a_destinations_bound_defaults_to_half_of_max_held(max_held: int | None, bound: int | None,
                                                           most: int) -> None:
    service = OutgoingWebhooks(Settings(kafka_bootstrap="127.0.0.1:9"), notifier=Receivers(lambda n: False),
                               max_pending=32, max_held=max_held, max_per_destination=bound)
    assert service.max_per_destination == most


def test_a_destination_must_be_allowed_one_delivery() -> None:
    with pytest.raises(ConfigError, match="max_per_destination"):
        OutgoingWebhooks(Settings(kafka_bootstrap="127.0.0.1:9"), notifier=Receivers(lambda n: False),
                         max_per_destination=0)
