"""The Dispatcher without a broker: intake, the waiting line, releases, cancels and the order in
which dispatch records are acknowledged. Faust's tables are real (memory store); their changelog
sends are futures this test resolves; the provider is a fake connector; sends are recorded."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from connectors.providers.base import ProviderStatus, SubmitOrder, SubmitResult
from connectors.providers.fal import FalProvider
from floodgate import codec
from floodgate.dispatch import ENDED, Order, Slot, slot_key
from floodgate.errors import ProviderGone, ProviderRejected, ProviderUnavailable, RateLimited
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings
from streams.app import create_app
from streams.context import Pipeline
from streams.dispatcher import Dispatcher
from streams.emit import Emitter
from streams.poller import FOLLOW_CALLS

WAN_SLOTS = 10  # the dev table's limit


class RecordingEmitter(Emitter):
    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.durable: list[tuple[str, dict[str, Any]]] = []
        """What was sent with ``send_durably`` (also in ``sent``)."""
        self.log: list[str] | None = None
        """When a test sets it: durable sends, in order with the changelog writes it logs too."""

    async def send(self, topic: str, schema: str, key: str | None, record: dict[str, Any]) -> None:
        codec.encode(schema, record)  # what would go on the wire must be a valid record
        self.sent.append((topic, schema, record))

    async def send_durably(self, topic: str, schema: str, key: str | None, record: dict[str, Any]) -> None:
        await self.send(topic, schema, key, record)
        self.durable.append((schema, record))
        if self.log is not None:
            self.log.append(f"durable {schema} {record.get('kind', '')}".rstrip())

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for t, s, r in self.sent if s == "JobEvent" and r["kind"] == kind]


class FakeProvider:
    def __init__(self) -> None:
        self.submitted: list[SubmitOrder] = []
        self.cancelled: list[str] = []
        self.gate: asyncio.Event | None = None

    async def submit(self, session: Any, order: SubmitOrder) -> SubmitResult:
        if self.gate is not None:
            await self.gate.wait()
        self.submitted.append(order)
        return SubmitResult(provider_job_id=f"pj-{order.job_id}", state="queued")

    async def cancel(self, session: Any, provider_job_id: str) -> None:
        self.cancelled.append(provider_job_id)


class FakeConsumer:
    def __init__(self) -> None:
        self.paused: list[Any] = []
        self.resumed: list[Any] = []
        self.assigned: set[Any] = set()

    def assignment(self) -> set[Any]:
        return self.assigned

    def on_buffer_full(self, tp: Any) -> None:
        self.paused.append(tp)

    def on_buffer_drop(self, tp: Any) -> None:
        self.resumed.append(tp)

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        return {tp: 0 for tp in tps}


class Writes:
    """Changelog sends of the lane's tables, held until the test lets them land."""

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.pending: list[asyncio.Future[None]] = []
        self.count = 0

    def __call__(self, partition: int, key: bytes, value: bytes | None, **kwargs: Any) -> asyncio.Future[None]:
        self.count += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.auto:
            fut.set_result(None)
        else:
            self.pending.append(fut)
        return fut

    def land_all(self) -> None:
        for fut in self.pending:
            if not fut.done():
                fut.set_result(None)
        self.pending.clear()


def unit_settings(tmp_path: Path) -> Settings:
    """One dispatch partition. slot_producer_limit=0: the lane's tables write through Faust's
    producer, which `writes` fakes (the slot writer's own producer is tested on a broker:
    tests/integration/test_slot_writer.py). A webhook base URL: providers can call back, as in any
    deployment that has webhooks."""
    return Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path,
                                                dispatch_partitions=1, simulator_url="http://127.0.0.1:9",
                                                slot_producer_limit=0, webhook_base_url="http://bridge.example")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return unit_settings(tmp_path)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def writes() -> Writes:
    return Writes()


@pytest.fixture
async def dispatcher(settings: Settings, provider: FakeProvider, writes: Writes,
                     tmp_path: Path) -> AsyncIterator[Dispatcher]:
    app = create_app(settings, datadir=tmp_path / "w0")
    setup = dev_setup(settings.simulator_url)
    pipe = Pipeline(app, settings, setup, {name: provider for name in setup.routing.providers})
    pipe.emit = RecordingEmitter(app)
    d = Dispatcher(pipe, "wan")
    d.app = SimpleNamespace(consumer=FakeConsumer(), consumer_generation_id=1, rebalancing=False,  # type: ignore[assignment]
                            in_recovery=False)
    for table in (d.lane.slots, d.lane.waiting, d.lane.marks):
        table.table.send_changelog = writes  # type: ignore[method-assign,assignment]  # a fake producer
    yield d
    await d.lane.stop()
    await pipe.close()


def order(job_id: str, attempt: int = 0) -> Order:
    return Order(job_id=job_id, tenant="t", model="wan-2.6", provider="wan", provider_model="wan-2.6",
                 prompt=f"prompt of {job_id}", attempt=attempt, queued_at=0)


def message(offset: int, partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic="floodgate.dispatch.wan", partition=partition, offset=offset, generation_id=1)


async def settle(d: Dispatcher) -> None:
    """Let every background submission, start and chore run to its end."""
    for _ in range(50):
        tasks = [*d.lane.submitting.values(), *d.lane._chores]
        if not tasks:
            await asyncio.sleep(0)
            if not [*d.lane.submitting.values(), *d.lane._chores]:
                return
        await asyncio.gather(*tasks, return_exceptions=True)
    raise AssertionError("background work did not settle")


def emitter(d: Dispatcher) -> RecordingEmitter:
    assert isinstance(d.emit, RecordingEmitter)
    return d.emit


async def fill(d: Dispatcher, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await d.intake(message(i), order(f"job-{i}"))


async def test_an_order_with_a_free_slot_is_submitted_once_its_slot_is_durable(
        dispatcher: Dispatcher, provider: FakeProvider, writes: Writes) -> None:
    writes.auto = False
    durable = await dispatcher.intake(message(0), order("a"))
    assert durable is not None and not provider.submitted
    await asyncio.sleep(0.01)
    assert not provider.submitted, "the provider hears of the job only once its slot is on Kafka"
    writes.land_all()
    await settle(dispatcher)
    assert [o.job_id for o in provider.submitted] == ["a"]
    assert provider.submitted[0].idempotency_key == "a:0"
    slot = dispatcher.lane.slots.get(slot_key(0, "a"))
    assert slot is not None and slot.provider_job_id == "pj-a"
    assert not emitter(dispatcher).events("submitted"), "the slot's record is the submission: no event of its own"


async def test_orders_past_the_limit_wait_in_line_and_a_release_starts_the_oldest(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await fill(dispatcher, WAN_SLOTS + 3)
    await settle(dispatcher)
    assert len(provider.submitted) == WAN_SLOTS
    assert len(dispatcher.lane.lines[0]) == 3 and len(dispatcher.lane.waiting) == 3
    await dispatcher.release({"job_id": "job-4", "attempt": 0, "status": "completed"}, 0, 1)
    await settle(dispatcher)
    assert [o.job_id for o in provider.submitted[WAN_SLOTS:]] == [f"job-{WAN_SLOTS}"], "oldest first"
    assert len(dispatcher.lane.waiting) == 2 and dispatcher.lane.slots.get(slot_key(0, "job-4")) is None
    assert len(dispatcher.lane.pools[0]) == WAN_SLOTS


async def test_a_release_of_an_older_attempt_does_not_free_the_slot(dispatcher: Dispatcher) -> None:
    await dispatcher.intake(message(0), order("a", attempt=1))
    await settle(dispatcher)
    await dispatcher.release({"job_id": "a", "attempt": 0, "status": "failed"}, 0, 1)
    assert dispatcher.lane.slots.get(slot_key(0, "a")) is not None
    await dispatcher.release({"job_id": "a", "attempt": 1, "status": "completed"}, 0, 1)
    assert dispatcher.lane.slots.get(slot_key(0, "a")) is None


async def test_a_redelivered_order_of_a_submitted_job_is_not_submitted_again(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await dispatcher.intake(message(0), order("a"))
    await settle(dispatcher)
    assert await dispatcher.intake(message(0), order("a")) is None
    await settle(dispatcher)
    assert len(provider.submitted) == 1
    assert not emitter(dispatcher).events("submitted")


async def test_cancel_of_a_waiting_order_takes_it_out_of_line(dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await fill(dispatcher, WAN_SLOTS + 1)
    await settle(dispatcher)
    waiting = f"job-{WAN_SLOTS}"
    await dispatcher.release({"job_id": waiting, "attempt": 0, "status": "cancelled"}, 0, 1)
    assert len(dispatcher.lane.lines[0]) == 0 and len(dispatcher.lane.waiting) == 0
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": "completed"}, 0, 1)
    await settle(dispatcher)
    assert waiting not in {o.job_id for o in provider.submitted}


async def test_cancel_of_a_submitted_job_cancels_it_at_the_provider_then_frees_the_slot(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await dispatcher.intake(message(0), order("a"))
    await settle(dispatcher)
    await dispatcher.release({"job_id": "a", "attempt": 0, "status": "cancelled"}, 0, 1)
    await settle(dispatcher)
    assert provider.cancelled == ["pj-a"]
    assert dispatcher.lane.slots.get(slot_key(0, "a")) is None and len(dispatcher.lane.pools[0]) == 0


async def test_a_job_cancelled_before_its_order_arrives_is_never_submitted(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await dispatcher.release({"job_id": "a", "attempt": 0, "status": "cancelled"}, 0, 1)
    assert dispatcher.lane.marked(slot_key(0, "a"))
    assert await dispatcher.intake(message(5), order("a")) is None
    await settle(dispatcher)
    assert not provider.submitted and not dispatcher.lane.marked(slot_key(0, "a")), "the mark is used up"


async def test_cancel_while_the_submission_runs_cancels_the_job_it_created(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    provider.gate = asyncio.Event()
    await dispatcher.intake(message(0), order("a"))
    await asyncio.sleep(0.01)  # the submission is now waiting on the provider
    assert slot_key(0, "a") in dispatcher.lane.submitting
    await dispatcher.release({"job_id": "a", "attempt": 0, "status": "cancelled"}, 0, 1)
    provider.gate.set()
    await settle(dispatcher)
    assert provider.cancelled == ["pj-a"], "the job it created is cancelled before the slot goes"
    assert dispatcher.lane.slots.get(slot_key(0, "a")) is None
    assert not emitter(dispatcher).events("submitted")


async def test_slot_records_written_before_the_fields_had_names_still_decode() -> None:
    old = b'{"a":1,"t":5.0,"o":' + __import__("orjson").dumps(order("x").to_record()) + b',"pj":"p-1"}'
    slot = Slot.decode(old)
    assert (slot.attempt, slot.taken_at, slot.order.job_id, slot.provider_job_id) == (1, 5.0, "x", "p-1")
    assert Slot.decode(slot.encode()) == slot


async def test_the_bridge_release_frees_only_the_slot_of_the_provider_job_that_ended(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await fill(dispatcher, 2)
    await settle(dispatcher)
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": ENDED, "provider_job_id": "pj-other"}, 0, 1)
    assert dispatcher.lane.slots.get(slot_key(0, "job-0")) is not None, "another provider job of this job"
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": ENDED, "provider_job_id": "pj-job-0"}, 0, 1)
    assert dispatcher.lane.slots.get(slot_key(0, "job-0")) is None and len(dispatcher.lane.pools[0]) == 1
    assert not provider.cancelled


async def test_a_job_that_ends_before_its_submission_returns_frees_its_slot_without_a_second_write(
        dispatcher: Dispatcher, provider: FakeProvider, writes: Writes) -> None:
    provider.gate = asyncio.Event()
    await dispatcher.intake(message(0), order("a"))
    await asyncio.sleep(0.01)
    await dispatcher.release({"job_id": "a", "attempt": 0, "status": ENDED, "provider_job_id": "pj-a"}, 0, 1)
    assert dispatcher.lane.slots.get(slot_key(0, "a")) is not None, "held until the submission knows its job"
    before = writes.count
    provider.gate.set()
    await settle(dispatcher)
    assert dispatcher.lane.slots.get(slot_key(0, "a")) is None
    assert writes.count == before + 1, "the slot's delete only: its provider job id is never written"
    assert not emitter(dispatcher).events("submitted")


class FalNamedProvider(FakeProvider):
    """Names its jobs as fal does, ``{app}/{request_id}``, where fal's app may not be the one the
    webhook's callback path foresaw: the bridge may release ``workflows/acme/{request_id}`` for the
    slot of ``workflows/acme/video/{request_id}``, one job (the connector's ``same_job``)."""

    same_job = FalProvider.same_job

    async def submit(self, session: Any, order: SubmitOrder) -> SubmitResult:
        await super().submit(session, order)
        return SubmitResult(provider_job_id=f"workflows/acme/video/req-{order.job_id}", state="queued")


async def test_the_bridge_release_frees_the_slot_of_a_provider_job_its_connector_says_is_the_one_that_ended(
        dispatcher: Dispatcher) -> None:
    dispatcher.connector = FalNamedProvider()
    await fill(dispatcher, 2)
    await settle(dispatcher)
    key = slot_key(0, "job-0")
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": ENDED,
                              "provider_job_id": "workflows/acme/req-job-1"}, 0, 1)
    assert dispatcher.lane.slots.get(key) is not None, "another request: not this slot's job"
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": ENDED,
                              "provider_job_id": "workflows/acme/req-job-0"}, 0, 1)
    assert dispatcher.lane.slots.get(key) is None and len(dispatcher.lane.pools[0]) == 1


async def test_a_job_that_ends_before_its_submission_returns_is_freed_however_its_webhook_named_it(
        dispatcher: Dispatcher) -> None:
    connector = FalNamedProvider()
    connector.gate = asyncio.Event()
    dispatcher.connector = connector
    key = slot_key(0, "a")
    await dispatcher.intake(message(0), order("a"))
    await until_calling(dispatcher, key)
    await dispatcher.release({"job_id": "a", "attempt": 0, "status": ENDED,
                              "provider_job_id": "workflows/acme/req-a"}, 0, 1)
    assert dispatcher.lane.slots.get(key) is not None, "held until the submission knows its job"
    connector.gate.set()
    await settle(dispatcher)
    assert dispatcher.lane.slots.get(key) is None


async def test_a_reconcile_right_after_a_handover_counts_the_slot_just_handed_out(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    """The poll tick rebuilds the pool from the slot table. A slot handed to a waiting order must
    be in the table from the moment it is in the pool, or a reconcile in between frees it twice."""
    await fill(dispatcher, WAN_SLOTS + 2)
    await settle(dispatcher)
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": "completed"}, 0, 1)
    dispatcher.lane.reconcile(0)  # before the handed-over order's start has run
    assert len(dispatcher.lane.pools[0]) == WAN_SLOTS
    await dispatcher.intake(message(99), order("late"))
    await settle(dispatcher)
    assert len(provider.submitted) == WAN_SLOTS + 1, "one slot freed, one order started: never more"
    assert "late" not in {o.job_id for o in provider.submitted}


async def test_a_freed_slot_goes_to_the_higher_class_then_to_the_tenant_holding_fewer_slots(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await fill(dispatcher, WAN_SLOTS)  # every slot taken by tenant t
    base = order("x")
    waiting = [replace(base, job_id="t-1"), replace(base, job_id="t-2"),
               replace(base, job_id="u-1", tenant="u"), replace(base, job_id="low", tenant="v", priority="low"),
               replace(base, job_id="vip", tenant="w", priority="high")]
    for n, o in enumerate(waiting, start=WAN_SLOTS):
        await dispatcher.intake(message(n), o)
    await settle(dispatcher)
    for i in range(len(waiting)):
        await dispatcher.release({"job_id": f"job-{i}", "attempt": 0, "status": "completed"}, 0, 1)
        await settle(dispatcher)
    # t holds every slot, u none: u goes before t's next, whatever their turns say.
    assert [o.job_id for o in provider.submitted[WAN_SLOTS:]] == ["vip", "u-1", "t-1", "t-2", "low"]


async def test_an_order_past_its_deadline_is_never_submitted(dispatcher: Dispatcher, provider: FakeProvider) -> None:
    now = dispatcher.pipe.now_ms()
    assert await dispatcher.intake(message(0), replace(order("late"), deadline_at=now - 1)) is None
    await settle(dispatcher)
    assert not provider.submitted and len(dispatcher.lane.pools[0]) == 0
    [expired] = emitter(dispatcher).events("expired")
    assert expired["job_id"] == "late" and "deadline passed" in expired["error"]


async def test_a_waiting_order_expires_on_the_poll_tick_and_its_place_is_not_taken(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await fill(dispatcher, WAN_SLOTS)
    soon = dispatcher.pipe.now_ms() + 50
    await dispatcher.intake(message(WAN_SLOTS), replace(order("short"), deadline_at=soon))
    await dispatcher.intake(message(WAN_SLOTS + 1), order("patient"))
    await settle(dispatcher)
    assert len(dispatcher.lane.waiting) == 2
    while dispatcher.pipe.now_ms() <= soon:
        await asyncio.sleep(0.01)
    dispatcher.expire_waiting(0)
    await settle(dispatcher)
    assert [e["job_id"] for e in emitter(dispatcher).events("expired")] == ["short"]
    assert dispatcher.lane.parked(slot_key(0, "short")) is None and len(dispatcher.lane.lines[0]) == 1
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": "completed"}, 0, 1)
    await settle(dispatcher)
    assert [o.job_id for o in provider.submitted[WAN_SLOTS:]] == ["patient"]


async def test_an_order_that_expires_at_the_head_of_the_line_gives_its_slot_to_the_next(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    await fill(dispatcher, WAN_SLOTS)
    soon = dispatcher.pipe.now_ms() + 50
    await dispatcher.intake(message(WAN_SLOTS), replace(order("short"), deadline_at=soon))
    await dispatcher.intake(message(WAN_SLOTS + 1), order("patient"))
    while dispatcher.pipe.now_ms() <= soon:
        await asyncio.sleep(0.01)
    await dispatcher.release({"job_id": "job-0", "attempt": 0, "status": "completed"}, 0, 1)
    await settle(dispatcher)
    assert [o.job_id for o in provider.submitted[WAN_SLOTS:]] == ["patient"]
    assert [e["job_id"] for e in emitter(dispatcher).events("expired")] == ["short"]
    assert len(dispatcher.lane.pools[0]) == WAN_SLOTS


async def test_orders_that_would_wait_too_long_spill_to_an_equivalent_with_room(
        settings: Settings, provider: FakeProvider, tmp_path: Path) -> None:
    from floodgate.pace import Pace
    from floodgate.routing import Spillover
    from floodgate.spillover import LineReport
    from streams.lines import LineBoard

    app = create_app(settings, datadir=tmp_path / "w1")
    setup = dev_setup(settings.simulator_url)
    routing = replace(setup.routing, spillover={"wan-2.6": Spillover(("kling-2.1",), max_wait_s=2.0)})
    pipe = Pipeline(app, settings, replace(setup, routing=routing), {name: provider for name in routing.providers})
    pipe.emit = RecordingEmitter(app)
    pipe.lines = LineBoard("127.0.0.1:1", "floodgate.lines")  # (never started: reports are put by hand)
    d = Dispatcher(pipe, "wan")
    d.app = SimpleNamespace(consumer=FakeConsumer(), consumer_generation_id=1, rebalancing=False,  # type: ignore[assignment]
                            in_recovery=False)
    for table in (d.lane.slots, d.lane.waiting, d.lane.marks):
        table.table.send_changelog = Writes()  # type: ignore[method-assign,assignment]
    sent_raw: list[bytes] = []

    async def send_raw(topic: str, key: bytes, value: bytes) -> None:
        sent_raw.append(value)

    pipe.emit.send_raw = send_raw  # type: ignore[method-assign]
    try:
        await fill(d, WAN_SLOTS + 30)  # ten start, thirty wait
        await settle(d)
        now = time.time()
        d.lane.paces[0] = pace = Pace()
        # Ten saturated starts' gaps within a second, whatever this machine's pace: 10/s (a rate is
        # taken over a second at least). Dated a little ahead, so that no gap is left open since
        # the last one when the rate is read.
        for i in range(WAN_SLOTS + 2):  # the first two of a spell set its pace going
            pace.started(f"seen-{i}", now + 5 + i / 20, now, waiting=30, limit=WAN_SLOTS, full=True)
        pipe.lines.put(LineReport("kling", 0, free_slots=4, waiting=0, start_rate=None, at=now))
        await d.report_and_spill({0})
        await settle(d)
        moved = [r for t, s, r in emitter(d).sent if s == "DispatchOrder" and t.endswith("dispatch.kling")]
        assert len(moved) == 4, "as many as kling had room for"
        assert all(r["model"] == "kling-2.1" and r["spilled_from"] == "wan-2.6" and r["attempt"] == 1 for r in moved)
        rerouted = emitter(d).events("rerouted")
        assert {r["job_id"] for r in rerouted} == {r["job_id"] for r in moved}
        assert all(r["model"] == "kling-2.1" and "spilled from wan-2.6" in r["error"] for r in rerouted)
        # Each joins kling's line when it moves, at the back (its event says when, to the job's view).
        at = {r["job_id"]: r["at"] for r in rerouted}
        assert all(r["lined_at"] == at[r["job_id"]] > r["queued_at"] for r in moved)
        # Ten starts within a second: 10/s, so from place 20 on an order would wait past 2 s. The
        # first four of those go (oldest first: the line's order is kept), out of the waiting table.
        assert {r["job_id"] for r in moved} == {f"job-{i}" for i in range(WAN_SLOTS + 20, WAN_SLOTS + 24)}
        assert len(d.lane.lines[0]) == 26 and len(d.lane.waiting) == 26
        assert LineReport.decode(sent_raw[0]).waiting == 30, "the report says how the line stood"
        assert LineReport.decode(sent_raw[0]).start_rate == 10.0
        assert d.metrics.registry.get_sample_value("floodgate_provider_start_rate", {"provider": "wan"}) == 10.0
        await d.report_and_spill({0})
        await settle(d)
        assert len([r for t, s, r in emitter(d).sent if s == "DispatchOrder"]) == 4, "no room left: no more"
        # A spilled order arriving back here is never spilled a second time.
        pipe.lines.put(LineReport("kling", 0, free_slots=9, waiting=0, start_rate=None, at=time.time() + 1))
        back = replace(order("bounced"), spilled_from="kling-2.1")
        assert d.spill_for(back, 100, 0) is None and d.spill_for(order("fresh"), 100, 0) is not None
    finally:
        await d.lane.stop()
        await pipe.close()


async def test_a_spilled_order_joins_the_line_behind_the_orders_already_waiting_there(
        dispatcher: Dispatcher, provider: FakeProvider) -> None:
    """It was accepted before them, but they were told their place and ETA before it came: it takes
    only the room they leave."""
    await fill(dispatcher, WAN_SLOTS)
    now = dispatcher.pipe.now_ms()
    for i, job in enumerate(("own-1", "own-2")):
        await dispatcher.intake(message(WAN_SLOTS + i), replace(order(job), queued_at=now - 1000 + i))
    moved = replace(order("moved"), queued_at=now - 60_000, attempt=1, spilled_from="kling-2.1", lined_at=now)
    await dispatcher.intake(message(WAN_SLOTS + 2), moved)
    await dispatcher.intake(message(WAN_SLOTS + 3), replace(order("own-3"), queued_at=now + 1))
    await settle(dispatcher)
    assert [o.job_id for o in dispatcher.lane.lines[0].in_order()] == ["own-1", "own-2", "moved", "own-3"]
    for i in range(4):
        await dispatcher.release({"job_id": f"job-{i}", "attempt": 0, "status": "completed"}, 0, 1)
        await settle(dispatcher)
    assert [o.job_id for o in provider.submitted[WAN_SLOTS:]] == ["own-1", "own-2", "moved", "own-3"]


def windowed(settings: Settings, provider: FakeProvider, datadir: Path, window: int,
             *names: str) -> tuple[Pipeline, FakeConsumer, list[Dispatcher]]:
    """Dispatchers for ``names`` on one worker whose read-ahead window is ``window``, sharing a
    consumer that records which partitions are held."""
    windowed_settings = settings.with_overrides(fair_window=window)
    app = create_app(windowed_settings, datadir=datadir)
    setup = dev_setup(settings.simulator_url)
    pipe = Pipeline(app, windowed_settings, setup, {name: provider for name in setup.routing.providers})
    pipe.emit = RecordingEmitter(app)
    consumer = FakeConsumer()
    consumer.held_partitions = set()  # type: ignore[attr-defined]
    dispatchers = [Dispatcher(pipe, name) for name in names]
    for d in dispatchers:
        d.app = SimpleNamespace(consumer=consumer, consumer_generation_id=1, rebalancing=False,  # type: ignore[assignment]
                                in_recovery=False)
        for table in (d.lane.slots, d.lane.waiting, d.lane.marks):
            table.table.send_changelog = Writes()  # type: ignore[method-assign,assignment]
    return pipe, consumer, dispatchers


@contextlib.asynccontextmanager
async def one_dispatcher(settings: Settings, provider: FakeProvider, datadir: Path,
                         jobs: int = 0) -> AsyncIterator[Dispatcher]:
    """wan's dispatcher on a worker of its own whose provider is ``provider``, with ``jobs``
    submitted (job-0, job-1, ...); stopped after."""
    pipe, _, (d,) = windowed(settings, provider, datadir, settings.fair_window, "wan")
    try:
        await fill(d, jobs)
        await settle(d)
        yield d
    finally:
        await d.lane.stop()
        await pipe.close()


async def test_the_read_ahead_window_is_shared_by_every_provider_of_a_worker(
        settings: Settings, provider: FakeProvider, tmp_path: Path) -> None:
    """The window bounds the orders a worker holds over all its lines: the provider that fills it
    last is paused too, a line under its floor never is, and both fetch again once starts have
    drained the total to the low mark."""
    window = 150
    pipe, consumer, (wan, kling) = windowed(settings, provider, tmp_path / "w2", window, "wan", "kling")

    def kling_order(job_id: str) -> Order:
        return replace(order(job_id), model="kling-2.1", provider="kling", provider_model="kling-2.1")

    try:
        await fill(wan, WAN_SLOTS + 100)  # ten start, a hundred wait
        for i in range(10 + 50):
            await kling.intake(message(i), kling_order(f"k-{i}"))
        await settle(wan)
        await settle(kling)
        assert pipe.read_ahead.held() == window and not consumer.paused, "kling's line is under its floor"
        for i in range(60, 60 + 14):
            await kling.intake(message(i), kling_order(f"k-{i}"))
        assert len(kling.lane.lines[0]) == kling.floor(0) == 64
        assert kling.window_held == {0} and [tp.topic for tp in consumer.paused] == [kling.orders_topic]
        await wan.intake(message(500), order("late"))
        assert wan.window_held == {0} and [tp.topic for tp in consumer.paused][1:] == [wan.orders_topic]
        assert pipe.read_ahead.held() == window + 15
        # Wan's renders end one by one: each start shortens the total; at the low mark (150 - 1)
        # both partitions fetch again, not before.
        for n in range(WAN_SLOTS + 100):
            await wan.release({"job_id": f"job-{n}", "attempt": 0, "status": "completed"}, 0, 1)
            await settle(wan)
            if pipe.read_ahead.held() > pipe.read_ahead.low:
                assert not consumer.resumed, f"resumed at {pipe.read_ahead.held()} held"
            else:
                break
        assert pipe.read_ahead.held() == pipe.read_ahead.low == 149
        assert sorted(tp.topic for tp in consumer.resumed) == sorted([wan.orders_topic, kling.orders_topic])
        assert not wan.window_held and not kling.window_held and not consumer.held_partitions  # type: ignore[attr-defined]
    finally:
        for each in (wan, kling):
            await each.lane.stop()
        await pipe.close()


@pytest.mark.parametrize(("burst", "window"), [(150, 1000), (1200, 1000)])
async def test_a_tenant_behind_a_burst_is_served_in_turns_within_the_window_and_soon_past_it(
        settings: Settings, provider: FakeProvider, tmp_path: Path, burst: int, window: int) -> None:
    """Tenant A bursts ``burst`` orders, B sends 10 right after; the partition is fed only while
    it is not held (as Kafka would), and each release starts the next order. Within the window
    B's orders are read at once and take every slot that frees until B holds its half, then
    alternate with A's; past it, B's wait is about the part of the burst that overflowed the
    window (read as the line drains), not the whole burst."""
    pipe, consumer, (d,) = windowed(settings, provider, tmp_path / "w3", window, "wan")
    sent = [replace(order(f"a-{i}"), tenant="A", queued_at=i) for i in range(burst)]
    sent += [replace(order(f"b-{j}"), tenant="B", queued_at=burst + j) for j in range(10)]
    try:
        offset = 0
        while len(provider.submitted) < len(sent):
            while offset < len(sent) and not consumer.held_partitions:  # type: ignore[attr-defined]
                await d.intake(message(offset), sent[offset])
                offset += 1
            await settle(d)
            oldest = next(o for o in provider.submitted if d.lane.slots.get(slot_key(0, o.job_id)) is not None)
            await d.release({"job_id": oldest.job_id, "attempt": 0, "status": "completed"}, 0, 1)
            await settle(d)
        starts = [o.job_id for o in provider.submitted]
        b_median = sorted(i for i, job in enumerate(starts) if job.startswith("b-"))[5]
        a_median = sorted(i for i, job in enumerate(starts) if job.startswith("a-"))[burst // 2]
        if burst + 10 <= window:
            b_starts = sorted(i for i, job in enumerate(starts) if job.startswith("b-"))
            half = WAN_SLOTS // 2
            assert b_starts[:half] == list(range(WAN_SLOTS, WAN_SLOTS + half)), f"B takes freed slots: {starts[:40]}"
            assert b_median <= WAN_SLOTS + 2 * 5 + 1, f"then B and A alternate: {starts[:40]}"
        else:
            overflow = burst - window - WAN_SLOTS  # A's orders still in Kafka when the window filled
            assert b_median <= overflow + window // 100 + 2 * 5 + 2 * WAN_SLOTS, (b_median, overflow)
        assert b_median < a_median / 2, (b_median, a_median)
    finally:
        await d.lane.stop()
        await pipe.close()


async def test_the_share_of_the_limit_is_published_with_the_first_slot_of_a_generation(
        dispatcher: Dispatcher) -> None:
    """A dashboard draws slots in use against the limit: both gauges from the first slot on (the
    metrics timer's first refresh comes seconds later), once per consumer generation."""
    from faust.types import TP

    registry = dispatcher.metrics.registry
    dispatcher.metrics.concurrency_limit.labels("wan").set(0)
    dispatcher.app.consumer.assigned = {TP(dispatcher.orders_topic, 0)}  # type: ignore[attr-defined]
    await dispatcher.intake(message(0), order("a"))
    await settle(dispatcher)
    share = dispatcher.lane.capacity(0)
    assert registry.get_sample_value("floodgate_provider_concurrency_limit", {"provider": "wan"}) == share
    assert registry.get_sample_value("floodgate_provider_inflight", {"provider": "wan"}) == 1
    dispatcher.metrics.concurrency_limit.labels("wan").set(0)  # (as a stale reading would)
    await dispatcher.intake(message(1), order("b"))
    assert registry.get_sample_value("floodgate_provider_concurrency_limit", {"provider": "wan"}) == 0, \
        "once per generation: the timer keeps it after that"
    dispatcher.app.consumer_generation_id = 2
    await dispatcher.intake(message(2), order("c"))
    assert registry.get_sample_value("floodgate_provider_concurrency_limit", {"provider": "wan"}) == share


# -- the provider's own queue ----------------------------------------------------------------------


class QueueingProvider(FakeProvider):
    """A provider that keeps accepted jobs in a queue of its own, says where they stand when asked and
    calls back only at the end (fal)."""

    callbacks = "end"

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, ProviderStatus] = {}
        self.asked: list[str] = []

    def say(self, job_id: str, state: str, place: int | None = None) -> None:
        self.states[f"pj-{job_id}"] = ProviderStatus(f"pj-{job_id}", state, None, None, None, queue_position=place)

    def say_progress(self, job_id: str, progress: float) -> None:
        self.states[f"pj-{job_id}"] = ProviderStatus(f"pj-{job_id}", "running", progress, None, None)

    def say_completed(self, job_id: str) -> None:
        video = "https://cdn.example/v.mp4"
        self.states[f"pj-{job_id}"] = ProviderStatus(f"pj-{job_id}", "completed", 1.0, video, None)

    async def status(self, session: Any, provider_job_id: str) -> ProviderStatus:
        self.asked.append(provider_job_id)
        return self.states[provider_job_id]


@pytest.fixture
async def queueing(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Dispatcher, QueueingProvider]]:
    provider = QueueingProvider()
    async with one_dispatcher(settings, provider, tmp_path / "wq") as d:
        yield d, provider


async def late_look(d: Dispatcher, key: bytes, slot: Slot, now: float) -> None:
    """The late poll's round for one slot: its check, then the status call it queued, if any."""
    await d.poller.check_slot(key, slot, now)
    await d.poller.ask_due()


def places(d: Dispatcher) -> list[tuple[str, int | None]]:
    return [(r["job_id"], r.get("queue_position")) for r in emitter(d).events("submitted")]


async def test_a_job_in_the_providers_own_queue_is_followed_until_it_starts(
        queueing: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = queueing
    await fill(d, 2)
    await settle(d)
    assert set(d.poller.followed) == {slot_key(0, "job-0"), slot_key(0, "job-1")}, "both answered queued"
    provider.say("job-0", "queued", 3)
    provider.say("job-1", "running")
    await d.poller.follow()
    assert places(d) == [("job-0", 3)]
    assert [r["job_id"] for r in emitter(d).events("running")] == ["job-1"]
    assert set(d.poller.followed) == {slot_key(0, "job-0")}, "a job that started is no longer followed"
    await d.poller.follow()
    assert places(d) == [("job-0", 3)], "the same place again is no news"
    provider.say("job-0", "queued", 0)
    await d.poller.follow()
    assert places(d) == [("job-0", 3), ("job-0", 0)]
    event = emitter(d).events("submitted")[-1]
    assert (event["provider"], event["provider_job_id"], event["attempt"]) == ("wan", "pj-job-0", 0)
    assert provider.asked.count("pj-job-1") == 1 and provider.asked.count("pj-job-0") == 3


async def test_a_followed_job_whose_slot_is_freed_is_dropped_without_a_call(
        queueing: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = queueing
    await fill(d, 1)
    await settle(d)
    await d.release({"job_id": "job-0", "attempt": 0, "status": "completed"}, 0, 1)
    await d.poller.follow()
    assert not d.poller.followed and not provider.asked


async def test_after_a_restart_the_late_poll_finds_a_job_in_the_providers_queue_and_follows_it(
        queueing: tuple[Dispatcher, QueueingProvider]) -> None:
    d, provider = queueing
    await fill(d, 1)
    await settle(d)
    key = slot_key(0, "job-0")
    d.poller.followed.clear()  # what a restarted worker knows: the slot, from its changelog, and no more
    d.poller.told.clear()
    provider.say("job-0", "queued", 2)
    slot = d.lane.slots.get(key)
    assert slot is not None
    await late_look(d, key, slot, slot.taken_at + d.settings.poll_after + 1)
    assert places(d) == [("job-0", 2)] and key in d.poller.followed
    await late_look(d, key, slot, slot.taken_at + d.settings.poll_after + 2)
    assert provider.asked == ["pj-job-0"], "a followed job is left to follow"


async def test_jobs_at_a_provider_that_calls_back_every_change_are_not_followed(
        dispatcher: Dispatcher, settings: Settings, tmp_path: Path) -> None:
    await fill(dispatcher, 1)
    await settle(dispatcher)
    poller = dispatcher.poller
    assert not poller.follows and not poller.followed  # (the fake's callbacks: the default, "all")
    off = settings.with_overrides(provider_status_poll=0)
    async with one_dispatcher(off, QueueingProvider(), tmp_path / "off") as d:
        assert not d.poller.follows, "FLOODGATE_PROVIDER_STATUS_POLL=0 turns it off"


class SilentProvider(QueueingProvider):
    """A provider that never calls back (Runway): its jobs are followed to their end."""

    callbacks = "none"


async def test_a_job_at_a_provider_without_webhooks_is_followed_to_its_end_telling_only_news(
        settings: Settings, tmp_path: Path) -> None:
    provider = SilentProvider()
    async with one_dispatcher(settings, provider, tmp_path / "silent", jobs=1) as d:
        key = slot_key(0, "job-0")
        assert d.poller.follows and key in d.poller.followed
        provider.say("job-0", "queued")  # waiting, no place: nothing to record
        await d.poller.follow()
        provider.say_progress("job-0", 0.10)
        await d.poller.follow()
        provider.say_progress("job-0", 0.12)  # less than a step since the last word
        await d.poller.follow()
        provider.say_progress("job-0", 0.30)
        await d.poller.follow()
        provider.say_completed("job-0")
        await d.poller.follow()
        sent = [(r["kind"], r.get("progress")) for _, s, r in emitter(d).sent if s == "JobEvent"]
        assert sent == [("progress", 0.10), ("progress", 0.30), ("completed", 1.0)]
        assert emitter(d).events("completed")[0]["video_url"] == "https://cdn.example/v.mp4"
        assert key not in d.poller.followed and len(provider.asked) == 5


class TellingProvider(QueueingProvider):
    """A provider whose webhooks tell every change (the default): only the late poll asks it."""

    callbacks = "all"


async def test_where_webhooks_are_on_the_late_poll_asks_about_a_quiet_job_less_and_less_often(
        settings: Settings, tmp_path: Path) -> None:
    """A lost webhook is rare: a long render is asked about at 30, 40, 60, 90 s... (the rule:
    ``floodgate.following.late_look_due``), not every round. A slot taken again starts over."""
    provider = TellingProvider()
    async with one_dispatcher(settings, provider, tmp_path / "quiet", jobs=1) as d:
        key = slot_key(0, "job-0")
        slot = d.lane.slots.get(key)
        assert slot is not None and d.poller.poll_every == 10 and not d.poller.follows
        provider.say("job-0", "running")
        for tick in range(7):  # rounds at 30, 40, ..., 90 s
            await late_look(d, key, slot, slot.taken_at + d.settings.poll_after + 10 * tick)
        assert len(provider.asked) == 4, provider.asked
        again = replace(slot, taken_at=slot.taken_at + 100)
        await late_look(d, key, again, again.taken_at + d.settings.poll_after)
        assert len(provider.asked) == 5, "a slot taken again is a new render"


async def test_where_no_webhook_can_reach_us_every_job_is_followed_to_its_end(
        settings: Settings, tmp_path: Path) -> None:
    """No FLOODGATE_WEBHOOK_BASE_URL: whatever the provider's webhooks could tell, none reaches us,
    so its jobs are followed from their submission, a status call each status poll round, and an
    end is found within a round instead of after FLOODGATE_POLL_AFTER."""
    provider = TellingProvider()
    async with one_dispatcher(settings.with_overrides(webhook_base_url=""), provider, tmp_path / "deaf",
                              jobs=1) as d:
        key = slot_key(0, "job-0")
        assert d.webhook_url is None and d.poller.follows and key in d.poller.followed, "followed from its submission"
        provider.say("job-0", "running")
        await d.poller.follow()
        slot = d.lane.slots.get(key)
        assert slot is not None
        await late_look(d, key, slot, slot.taken_at + d.settings.poll_after)
        assert len(provider.asked) == 1, "the late poll leaves a followed job to the following"
        provider.say_completed("job-0")
        await d.poller.follow()
        assert [r["job_id"] for r in emitter(d).events("completed")] == ["job-0"]
        assert key not in d.poller.followed and len(provider.asked) == 2


async def test_the_late_poll_tells_a_long_render_once_and_an_end_as_often_as_it_hears_it(
        settings: Settings, tmp_path: Path) -> None:
    provider = TellingProvider()
    # No webhooks and no following: the late poll asks every round (FLOODGATE_PROVIDER_STATUS_POLL=0).
    quiet = settings.with_overrides(webhook_base_url="", provider_status_poll=0)
    async with one_dispatcher(quiet, provider, tmp_path / "late", jobs=1) as d:
        key = slot_key(0, "job-0")
        slot = d.lane.slots.get(key)
        assert slot is not None and not d.poller.follows and not d.poller.followed
        late = slot.taken_at + d.settings.poll_after
        provider.say("job-0", "running")
        for tick in range(3):  # a render past poll_after, its webhooks quiet: polled every tick
            await late_look(d, key, slot, late + 10 * tick)
        assert len(emitter(d).events("running")) == 1, "still running is no news"
        provider.say_completed("job-0")
        await late_look(d, key, slot, late + 30)
        await late_look(d, key, slot, late + 40)  # the slot still held: the first word of the end was lost
        assert len(emitter(d).events("completed")) == 2
        assert len(provider.asked) == 5
        await d.release({"job_id": "job-0", "attempt": 0, "status": "completed"}, 0, 1)
        await d.poller.poll()
        assert key not in d.poller.told, "what was told of a job is forgotten with its slot"


# -- status calls within the provider's read budget ------------------------------------------------


class ReadLimitedProvider(QueueingProvider):
    """fal-like, with a documented limit of two status calls a second (a connector's
    ``status_rate_per_second``; the routing file can set one too)."""

    status_rate_per_second = 2.0


def waiting_calls(d: Dispatcher) -> float | None:
    return d.metrics.registry.get_sample_value("floodgate_provider_status_calls_waiting", {"provider": "wan"})


async def test_status_calls_keep_to_the_providers_read_budget_and_every_job_is_asked_in_turn(
        settings: Settings, tmp_path: Path) -> None:
    provider = ReadLimitedProvider()
    async with one_dispatcher(settings, provider, tmp_path / "budget", jobs=6) as d:
        assert d.poller.status_rate == 2.0 and len(d.poller.followed) == 6
        now = 1000.0
        d.poller.clock = lambda: now
        for i in range(6):
            provider.say(f"job-{i}", "queued", i + 1)
        await d.poller.follow()
        assert len(provider.asked) == 2, "a second's worth of the budget, not one call per job"
        assert waiting_calls(d) == 4
        turns = [list(provider.asked)]
        for _ in range(2):
            now += 1.0
            await d.poller.follow()  # a new round finds every job due again: those waiting keep their places
            now += 0.4
            await d.poller.ask_due()  # (less than a call's worth of budget since the round)
            turns.append(provider.asked[sum(map(len, turns)):])
        assert [len(turn) for turn in turns] == [2, 2, 2]
        assert sorted(sum(turns, [])) == [f"pj-job-{i}" for i in range(6)], "each job once before any twice"
        now += 1.0
        await d.poller.ask_due()
        assert provider.asked[6:] == turns[0], "then the first ones again, in the same turn"


class TwoReadProvider(ReadLimitedProvider):
    """Each status answer took two reads at the provider (as fal's end does: its status, then its
    result)."""

    async def status(self, session: Any, provider_job_id: str) -> ProviderStatus:
        return replace(await super().status(session, provider_job_id), reads=2)


async def test_an_answer_that_took_two_reads_pays_for_both_from_the_budget(
        settings: Settings, tmp_path: Path) -> None:
    provider, clock = TwoReadProvider(), SimpleNamespace(now=1000.0)
    for i in range(6):
        provider.say(f"job-{i}", "queued", 3)
    async with one_dispatcher(settings, provider, tmp_path / "two-reads", jobs=6) as d:
        d.poller.clock = lambda: clock.now
        await d.poller.follow()  # the budget's two calls a second
        clock.now += 1.0
        await d.poller.ask_due()  # that second's budget went to the first two answers' second reads
        assert len(provider.asked) == 2
        clock.now += 1.0
        await d.poller.ask_due()
        assert len(provider.asked) == 4, "four calls, eight reads, in two seconds"


class RefusingProvider(QueueingProvider):
    """Answers the next ``refusals`` status calls 429 (another client spent the account's reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 0

    async def status(self, session: Any, provider_job_id: str) -> ProviderStatus:
        if self.refusals:
            self.refusals -= 1
            self.asked.append(provider_job_id)
            raise RateLimited("status call rate limit reached", status=429, retry_after=5.0)
        return await super().status(session, provider_job_id)


async def test_a_429_to_a_status_call_stops_them_all_until_its_retry_after_and_that_job_goes_first(
        settings: Settings, tmp_path: Path) -> None:
    provider = RefusingProvider()
    async with one_dispatcher(settings, provider, tmp_path / "refused", jobs=3) as d:
        assert d.poller.status_rate is None, "no budget: every job due is asked at once"
        now = 1000.0
        d.poller.clock = lambda: now
        for i in range(3):
            provider.say(f"job-{i}", "queued", 1)
        provider.refusals = 1
        await d.poller.follow()
        refused = provider.asked[0]
        assert len(provider.asked) == 3 and waiting_calls(d) == 1
        assert d.metrics.registry.get_sample_value("floodgate_provider_status_rate_limited_total",
                                                   {"provider": "wan"}) == 1
        now += 4.0
        await d.poller.follow()
        assert len(provider.asked) == 3, "nothing is asked before the Retry-After"
        now += 1.0
        await d.poller.ask_due()
        assert provider.asked[3] == refused and len(provider.asked) == 6
        assert waiting_calls(d) == 0


async def test_a_job_past_its_timeout_is_asked_about_out_of_turn_and_failed_while_status_calls_wait(
        settings: Settings, tmp_path: Path) -> None:
    provider = ReadLimitedProvider()
    provider.callbacks = "all"  # only the late poll asks
    async with one_dispatcher(settings, provider, tmp_path / "late-budget", jobs=4) as d:
        d.poller.clock = lambda: 1000.0
        for i in range(4):
            provider.say(f"job-{i}", "running")
        slots = [(slot_key(0, f"job-{i}"), d.lane.slots.get(slot_key(0, f"job-{i}"))) for i in range(4)]
        for key, slot in slots[:3]:
            assert slot is not None
            await d.poller.check_slot(key, slot, slot.taken_at + d.settings.poll_after)
        key, slot = slots[3]
        assert slot is not None
        await d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 1)
        await d.poller.ask_due()
        assert provider.asked[0] == "pj-job-3", "a timeout never waits its turn"
        assert len(provider.asked) == 2 and waiting_calls(d) == 2, "its call is paid from the budget too"
        assert [r["job_id"] for r in emitter(d).events("failed")] == ["job-3"]
        assert provider.cancelled == ["pj-job-3"], "still running: the provider lets it go first"


class FailingStatusProvider(QueueingProvider):
    """A provider whose status calls fail (an outage)."""

    async def status(self, session: Any, provider_job_id: str) -> ProviderStatus:
        self.asked.append(provider_job_id)
        raise ProviderUnavailable("503 from the provider")


def held(d: Dispatcher, job_id: str) -> tuple[bytes, Slot]:
    """The key and slot ``job_id`` holds on partition 0."""
    key = slot_key(0, job_id)
    slot = d.lane.slots.get(key)
    assert slot is not None
    return key, slot


def timeouts(d: Dispatcher) -> float:
    """Jobs failed by the timeout so far (the metrics registry outlives one test)."""
    return d.metrics.registry.get_sample_value("floodgate_provider_timeouts_total", {"provider": "wan"}) or 0.0


async def test_a_job_past_its_timeout_that_the_provider_finished_is_completed_not_failed(
        settings: Settings, tmp_path: Path) -> None:
    # Its completion webhook waited in Kafka while this worker stood still longer than the timeout.
    provider = QueueingProvider()
    async with one_dispatcher(settings, provider, tmp_path / "finished", jobs=1) as d:
        key, slot = held(d, "job-0")
        provider.say_completed("job-0")
        failed_before = timeouts(d)
        await d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 1)
        assert [r["video_url"] for r in emitter(d).events("completed")] == ["https://cdn.example/v.mp4"]
        assert not emitter(d).events("failed") and not provider.cancelled and timeouts(d) == failed_before
        await d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 2)  # its release not yet read
        assert len(provider.asked) == 2 and len(emitter(d).events("completed")) == 2, "an end is told as heard"
        assert not emitter(d).events("failed")


async def test_a_job_past_its_timeout_is_failed_when_the_provider_cannot_say(
        settings: Settings, tmp_path: Path) -> None:
    provider = FailingStatusProvider()
    async with one_dispatcher(settings, provider, tmp_path / "outage", jobs=1) as d:
        key, slot = held(d, "job-0")
        failed_before = timeouts(d)
        await d.poller.check_slot(key, slot, slot.taken_at + d.settings.job_timeout + 1)
        assert provider.asked == ["pj-job-0"]
        assert [r["job_id"] for r in emitter(d).events("failed")] == ["job-0"] and timeouts(d) == failed_before + 1


class EchoingProvider(QueueingProvider):
    """A provider that, once asked to cancel a job, says it is cancelled, and is asked about it by
    another status call (``during_cancel``: the follow timer's, say) while the cancel is answered."""

    def __init__(self) -> None:
        super().__init__()
        self.during_cancel: Callable[[], Awaitable[Any]] | None = None

    async def cancel(self, session: Any, provider_job_id: str) -> None:
        await super().cancel(session, provider_job_id)
        self.states[provider_job_id] = ProviderStatus(provider_job_id, "cancelled", None, None, None)
        if self.during_cancel is not None:
            await self.during_cancel()


async def time_out_hearing(d: Dispatcher, provider: EchoingProvider,
                           heard: str | None = None) -> tuple[bytes, Slot, float]:
    """job-0's slot timed out, and a status call about its provider job (or about ``heard``,
    another provider job, as if the slot had been taken again for it) made during the cancel."""
    key, slot = held(d, "job-0")
    provider.say("job-0", "running")
    asked = slot if heard is None else replace(slot, provider_job_id=heard)
    late = slot.taken_at + d.settings.job_timeout + 1
    provider.during_cancel = lambda: d.poller.look(key, asked, late)
    await d.poller.check_slot(key, slot, late)
    return key, slot, late


async def test_a_timeouts_own_cancel_heard_by_a_status_call_during_it_leaves_the_failure_its_reason(
        settings: Settings, tmp_path: Path) -> None:
    # Told first, the provider's word of the cancel would end the job "cancelled at wan" (a
    # provider's cancel fails a job: floodgate.jobs.state), the timeout's failure old news.
    provider = EchoingProvider()
    async with one_dispatcher(settings, provider, tmp_path / "echo", jobs=1) as d:
        key, slot, late = await time_out_hearing(d, provider)
        assert provider.cancelled == ["pj-job-0"] and provider.asked == ["pj-job-0", "pj-job-0"], \
            "asked before the timeout, and once during its cancel"
        reason = f"no result from wan after {d.settings.job_timeout:.0f}s"
        assert [r["error"] for r in emitter(d).events("failed")] == [reason]
        assert not emitter(d).events("cancelled")
        assert not d.poller.timing_out
        # Heard again once the failure is told, the word is told (after it, on the same partition).
        await d.poller.look(key, slot, late + 1)
        kinds = [r["kind"] for _, schema, r in emitter(d).sent if schema == "JobEvent"]
        assert kinds[-2:] == ["failed", "cancelled"], kinds


async def test_a_cancel_of_another_provider_job_heard_during_a_timeout_is_told(
        settings: Settings, tmp_path: Path) -> None:
    # The slot freed and taken again meanwhile, for another provider job: the word is that job's.
    provider = EchoingProvider()
    provider.states["pj-other"] = ProviderStatus("pj-other", "cancelled", None, None, None)
    async with one_dispatcher(settings, provider, tmp_path / "other", jobs=1) as d:
        await time_out_hearing(d, provider, heard="pj-other")
        assert [r["provider_job_id"] for r in emitter(d).events("cancelled")] == ["pj-other"]


class GatedProvider(QueueingProvider):
    """Once ``close`` is called, holds every status call until ``open``; ``asking`` is set once
    ``expected`` calls are held."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.opened, self.asking, self.expected = asyncio.Event(), asyncio.Event(), expected
        self.opened.set()
        self.held = 0

    def close(self) -> None:
        self.opened.clear()
        self.asked.clear()
        self.held = 0

    def open(self) -> None:
        self.opened.set()

    async def status(self, session: Any, provider_job_id: str) -> ProviderStatus:
        self.held += 1
        if self.held >= self.expected:
            self.asking.set()
        await self.opened.wait()
        return await super().status(session, provider_job_id)


async def test_the_poll_tick_asks_about_overdue_jobs_a_group_at_once(settings: Settings, tmp_path: Path) -> None:
    jobs = FOLLOW_CALLS + 2
    provider = GatedProvider(expected=FOLLOW_CALLS)
    provider.callbacks = "all"  # no job followed: only the timeout's checks ask
    # Every slot is overdue as soon as it is taken.
    async with one_dispatcher(settings.with_overrides(job_timeout=0.0), provider, tmp_path / "overdue",
                              jobs=jobs) as d:
        for i in range(jobs):
            provider.say_completed(f"job-{i}")
        provider.close()
        tick = asyncio.ensure_future(d.poller.poll())
        # (A bound, not a wait: one call at a time would never hold a group, and hang.)
        await asyncio.wait_for(provider.asking.wait(), timeout=30)
        assert provider.held == FOLLOW_CALLS, "one group of calls at a time, not one call"
        provider.open()
        await tick
        assert len(provider.asked) == jobs
        assert sorted(r["job_id"] for r in emitter(d).events("completed")) == sorted(f"job-{i}" for i in range(jobs))
        assert not emitter(d).events("failed")


def log_writes(d: Dispatcher, writes: Writes) -> list[str]:
    """One log of the lane's changelog writes and the durable sends, in the order they were made."""
    log: list[str] = []

    def logged(partition: int, key: bytes, value: bytes | None, **kwargs: Any) -> asyncio.Future[None]:
        log.append(("tombstone " if value is None else "put ") + key.decode())
        return writes(partition, key, value, **kwargs)

    for table in (d.lane.slots, d.lane.waiting, d.lane.marks):
        table.table.send_changelog = logged  # type: ignore[method-assign,assignment]  # a fake producer
    emitter(d).log = log
    return log


class Refusing(FakeProvider):
    """Refuses every submission with ``error`` (None: accepts them)."""

    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    async def submit(self, session: Any, order: SubmitOrder) -> SubmitResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return await super().submit(session, order)


@pytest.mark.parametrize(("error", "sends"), [
    (ProviderRejected("HTTP 400: bad params", status=400), ["durable JobEvent failed"]),
    (ProviderGone("HTTP 410: model retired", status=410), ["durable JobEvent rerouted", "durable DispatchOrder"]),
])
async def test_a_job_that_moves_on_is_told_on_kafka_before_its_slot_is_given_back(
        dispatcher: Dispatcher, writes: Writes, error: Exception, sends: list[str]) -> None:
    """The slot is all that stands for the job here (its order was acknowledged when the slot was
    taken): a crash after the slot's tombstone but before the job's next step would leave neither."""
    dispatcher.connector = Refusing(error)
    log = log_writes(dispatcher, writes)
    await dispatcher.intake(message(0), order("a"))
    await settle(dispatcher)
    assert log == ["put 0:a", *sends, "tombstone 0:a"]


async def test_an_expired_order_is_told_on_kafka_before_it_leaves_the_waiting_table(
        dispatcher: Dispatcher, writes: Writes) -> None:
    await fill(dispatcher, WAN_SLOTS)
    await dispatcher.intake(message(WAN_SLOTS), replace(order("late"), deadline_at=dispatcher.pipe.now_ms() + 60_000))
    await settle(dispatcher)
    log = log_writes(dispatcher, writes)
    dispatcher.pipe.now_ms = lambda: 2**62  # type: ignore[method-assign]  # far past every deadline
    dispatcher.expire_waiting(0)
    await settle(dispatcher)
    assert log == ["durable JobEvent expired", "tombstone 0:late"]


async def until_calling(d: Dispatcher, key: bytes) -> None:
    """Until the submission of ``key`` is in its provider call (a few turns of the loop)."""
    for _ in range(100):
        if key in d.lane.calling:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{key!r} never reached its provider call")


async def test_a_revoke_waits_for_a_call_under_way_until_its_provider_job_id_is_on_kafka(
        dispatcher: Dispatcher, provider: FakeProvider, writes: Writes) -> None:
    """Its next owner must find the provider job id: finding a slot without one, it would submit
    the job a second time (most providers have no idempotency key)."""
    provider.gate = asyncio.Event()
    dispatcher.app.consumer.held_partitions = set()  # type: ignore[attr-defined]
    key = slot_key(0, "a")
    await dispatcher.intake(message(0), order("a"))
    await until_calling(dispatcher, key)
    writes.auto = False  # the provider job id's write lands when the test says
    revoke = asyncio.create_task(dispatcher._revoked(dispatcher.app, revoked={TP(dispatcher.orders_topic, 0)}))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not revoke.done(), "the revoke waits for the call"
    provider.gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert writes.pending and not revoke.done(), "and then for the provider job id's write"
    writes.land_all()
    await asyncio.wait_for(revoke, 5)
    slot = dispatcher.lane.slots.get(key)
    assert slot is not None and slot.provider_job_id == "pj-a" and len(provider.submitted) == 1


async def test_a_revoke_stops_a_submission_waiting_out_a_429_before_it_calls_again(
        dispatcher: Dispatcher, writes: Writes) -> None:
    limited = Refusing(RateLimited("HTTP 429", status=429, retry_after=0.2))
    dispatcher.connector = limited
    dispatcher.app.consumer.held_partitions = set()  # type: ignore[attr-defined]
    await dispatcher.intake(message(0), order("a"))
    for _ in range(100):  # until the first call was refused and the retry's wait began
        if limited.calls and slot_key(0, "a") not in dispatcher.lane.calling:
            break
        await asyncio.sleep(0)
    await asyncio.wait_for(dispatcher._revoked(dispatcher.app, revoked={TP(dispatcher.orders_topic, 0)}), 5)
    assert not dispatcher.lane.submitting, "cancelled, not waited for: nothing is left to call again"
    assert limited.calls == 1
    assert not emitter(dispatcher).events("rerouted") and not emitter(dispatcher).events("failed")
    slot = dispatcher.lane.slots.get(slot_key(0, "a"))
    assert slot is not None and slot.provider_job_id is None, "its slot stays for the next owner"
    limited.error = None  # the provider has room again
    dispatcher.sync(0, 2)  # the partition comes back (most do: every rebalance revokes them all)
    await settle(dispatcher)
    assert limited.calls == 2, "taken up at once, not at the poll's re-dispatch"
    slot = dispatcher.lane.slots.get(slot_key(0, "a"))
    assert slot is not None and slot.provider_job_id == "pj-a"


async def test_a_submission_whose_partition_moved_on_meanwhile_never_calls(
        dispatcher: Dispatcher, provider: FakeProvider, writes: Writes) -> None:
    writes.auto = False
    await dispatcher.intake(message(0), order("a"))  # its slot's write is still on its way
    dispatcher.lane.forget_waiting({0})  # revoked, then assigned again in a later generation
    dispatcher.lane.sync(0, 2)
    writes.land_all()
    await settle(dispatcher)
    assert not provider.submitted


async def test_a_revoke_cancels_a_submission_waiting_for_its_slot_s_write_but_never_the_write(
        dispatcher: Dispatcher, provider: FakeProvider, writes: Writes) -> None:
    """The ack line awaits the same write before it acknowledges the order: cancelled, it would
    stop the line for good (it awaits its head again and again)."""
    writes.auto = False
    dispatcher.app.consumer.held_partitions = set()  # type: ignore[attr-defined]
    durable = await dispatcher.intake(message(0), order("a"))
    await asyncio.wait_for(dispatcher._revoked(dispatcher.app, revoked={TP(dispatcher.orders_topic, 0)}), 5)
    assert not dispatcher.lane.submitting and not durable.done()
    writes.land_all()
    await asyncio.wait_for(durable, 5)  # landed, as the ack line needs it to
    assert not provider.submitted, "the partition is gone: nothing calls"
