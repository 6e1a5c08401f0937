"""Stream partitions resumed during a rebalance wait for the seek to committed offsets
(``streams.faust_fixes``: Faust resumes them first, and records in between are lost)."""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from floodgate.chaos.scenarios import STALL_MARK
from streams.faust_fixes import (
    LiveActive,
    StallWatch,
    check_stalls,
    fetch_only_active,
    hold_partitions,
    hold_streams_until_seek,
)

STREAM_0, STREAM_1, CHANGELOG = TP("dispatch", 0), TP("dispatch", 1), TP("app-jobs-changelog", 0)


class FakeConsumer:
    def __init__(self) -> None:
        self.active: set[TP] = set()
        self.calls: list[str] = []
        self.assigned = {STREAM_0, STREAM_1, CHANGELOG}

    def resume_partitions(self, tps: set[TP]) -> None:
        self.calls.append(f"resume {sorted(tp.topic + str(tp.partition) for tp in tps)}")
        self.active |= set(tps)

    async def perform_seek(self) -> None:
        self.calls.append(f"seek while active {sorted(tp.topic + str(tp.partition) for tp in self.active)}")

    def assignment(self) -> set[TP]:
        return self.assigned


def _patched(rebalancing: bool) -> tuple[FakeConsumer, SimpleNamespace]:
    app = SimpleNamespace(rebalancing=rebalancing, tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    consumer = FakeConsumer()
    # arg-type here and below: a SimpleNamespace stands in for faust.App
    hold_streams_until_seek(app, consumer)  # type: ignore[arg-type]
    return consumer, app


def test_during_a_rebalance_streams_resume_only_after_the_seek() -> None:
    consumer, _ = _patched(rebalancing=True)
    consumer.resume_partitions({STREAM_0, STREAM_1, CHANGELOG})
    assert consumer.active == {CHANGELOG}, "changelogs resume at once, streams wait"
    asyncio.run(consumer.perform_seek())
    assert consumer.active == {STREAM_0, STREAM_1, CHANGELOG}
    # The seek ran while no stream partition was active: nothing was handed out from before it.
    assert consumer.calls[1] == "seek while active ['app-jobs-changelog0']", consumer.calls


def test_a_partition_lost_before_the_seek_is_not_resumed() -> None:
    consumer, _ = _patched(rebalancing=True)
    consumer.resume_partitions({STREAM_0, STREAM_1})
    consumer.assigned = {STREAM_0}  # another rebalance took partition 1 away meanwhile
    asyncio.run(consumer.perform_seek())
    assert consumer.active == {STREAM_0}


class FailingSeekConsumer(FakeConsumer):
    async def perform_seek(self) -> None:
        raise TimeoutError("broker did not answer")


def test_a_failed_seek_still_resumes_what_it_held() -> None:
    failing = FailingSeekConsumer()
    app = SimpleNamespace(rebalancing=True, tables=SimpleNamespace(changelog_topics=set()))
    hold_streams_until_seek(app, failing)  # type: ignore[arg-type]
    failing.resume_partitions({STREAM_0})
    with pytest.raises(TimeoutError):
        asyncio.run(failing.perform_seek())
    assert failing.active == {STREAM_0}, "no worse than Faust's own order: never left paused"


def test_outside_a_rebalance_resume_is_untouched() -> None:
    consumer, _ = _patched(rebalancing=False)
    consumer.resume_partitions({STREAM_0})
    assert consumer.active == {STREAM_0}


# --- the stall watch ---------------------------------------------------------------------


def test_a_partition_with_records_and_no_progress_is_reported_once_per_period() -> None:
    watch = StallWatch(stall_after=30)
    assert not watch.observe(STREAM_0, read=21, end=60, now=0)
    assert not watch.observe(STREAM_0, read=21, end=60, now=29)
    assert watch.observe(STREAM_0, read=21, end=61, now=30)
    assert not watch.observe(STREAM_0, read=21, end=61, now=45), "the clock started again"
    assert watch.observe(STREAM_0, read=21, end=61, now=60)


def test_progress_or_an_empty_backlog_is_not_a_stall() -> None:
    watch = StallWatch(stall_after=30)
    for now, read in ((0, 10), (20, 11), (40, 12), (60, 13)):  # slow but moving
        assert not watch.observe(STREAM_0, read=read, end=100, now=now)
    for now in (0, 40, 80):  # idle because everything was read
        assert not watch.observe(STREAM_1, read=99, end=100, now=now)
    assert not watch.observe(TP("x", 0), read=None, end=0, now=0)
    assert not watch.observe(TP("x", 0), read=None, end=0, now=100), "an empty partition"
    assert watch.observe(TP("y", 0), read=None, end=5, now=0) is False
    assert watch.observe(TP("y", 0), read=None, end=5, now=31), "records never handed out at all"


class StallConsumer(FakeConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.active = {STREAM_0, STREAM_1}
        self._read_offset = {STREAM_0: 21, STREAM_1: 40}
        self._committed_offset = {STREAM_0: 22, STREAM_1: 41}
        self.sought: list[tuple[TP, int]] = []

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {STREAM_0: 60, STREAM_1: 41, CHANGELOG: 99}

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


def test_a_stalled_partition_is_sought_back_to_its_committed_offset() -> None:
    consumer = StallConsumer()
    app = SimpleNamespace(consumer=consumer, tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    watch = StallWatch(stall_after=30)
    assert asyncio.run(check_stalls(app, watch, now=0)) == []  # type: ignore[arg-type]
    assert asyncio.run(check_stalls(app, watch, now=31)) == [STREAM_0]  # type: ignore[arg-type]
    assert consumer.sought == [(STREAM_0, 22)], "partition 1 is idle because it was read to its end"
    consumer.active = {STREAM_1}  # paused on purpose (a full buffer, a waiting line): never a stall
    assert asyncio.run(check_stalls(app, watch, now=100)) == []  # type: ignore[arg-type]


def test_a_firing_logs_the_line_the_chaos_suite_counts(caplog: pytest.LogCaptureFixture) -> None:
    app = SimpleNamespace(consumer=StallConsumer(), tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    watch = StallWatch(stall_after=30)
    with caplog.at_level(logging.WARNING, logger="streams.faust_fixes"):
        asyncio.run(check_stalls(app, watch, now=0))  # type: ignore[arg-type]
        asyncio.run(check_stalls(app, watch, now=31))  # type: ignore[arg-type]
    assert sum(r.getMessage().count(STALL_MARK) for r in caplog.records) == 1


# --- the stalled partition: the fetcher drains partitions that are not active -------------
#
# A deterministic reproduction with Faust's own Consumer code (getmany, _wait_next_records,
# pause_partitions) over aiokafka's own Fetcher.fetched_records: only the broker is faked.

DISPATCH, RELEASE = TP("dispatch", 0), TP("release", 0)


class _Record(SimpleNamespace):
    offset: int


class _PartitionRecords:
    """aiokafka's PartitionRecords, as FetchResult uses it: iterate (a batch taken in part goes on
    where it stopped), and say the next offset."""

    def __init__(self, first: int, count: int) -> None:
        self.next_fetch_offset = first
        self._records = iter([_Record(offset=first + i) for i in range(count)])

    def __iter__(self) -> Iterator[_Record]:
        for record in self._records:
            self.next_fetch_offset = record.offset + 1
            yield record


class _Position(SimpleNamespace):
    position: int
    paused: bool = False

    def consumed_to(self, offset: int) -> None:
        self.position = offset


def _fetcher(prefetched: dict[TP, tuple[int, int]]) -> tuple[Fetcher, dict[TP, _Position]]:
    """aiokafka's Fetcher holding records prefetched for ``prefetched`` (tp → first offset, count),
    as its background routine leaves them for every assigned partition, active or not."""
    positions = {tp: _Position(position=first) for tp, (first, _) in prefetched.items()}
    assignment = SimpleNamespace(active=True, state_value=positions.__getitem__)
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._records = {tp: FetchResult(tp, assignment=assignment, partition_records=_PartitionRecords(first, n),
                                        backoff=0) for tp, (first, n) in prefetched.items()}
    fetcher._subscriptions = SimpleNamespace(reassignment_in_progress=False, is_assigned=lambda tp: True)
    fetcher._wait_consume_future = None
    return fetcher, positions


class _Consumer:
    """Faust's Consumer methods on the state they use (its constructor needs a running app)."""

    # Any: mypy would insist that ``self`` be a faust Consumer.
    getmany: Any = FaustConsumer.getmany
    _wait_next_records: Any = FaustConsumer._wait_next_records
    _get_active_partitions: Any = FaustConsumer._get_active_partitions
    pause_partitions: Any = FaustConsumer.pause_partitions
    resume_partitions: Any = FaustConsumer.resume_partitions
    on_buffer_full: Any = FaustConsumer.on_buffer_full
    on_buffer_drop: Any = FaustConsumer.on_buffer_drop

    def __init__(self, active: set[TP]) -> None:
        self.app = SimpleNamespace(consumer_generation_id=1, client_only=False, in_recovery=False,
                                   monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None))
        self.should_stop, self.flow_active = False, True
        self.scheduler = DefaultSchedulingStrategy()  # type: ignore[abstract]  # (faust's stubs: as faust does)
        self.not_waiting_next_records = asyncio.Event()
        self._active_partitions: set[TP] = set(active)
        self._paused_partitions: set[TP] = set()
        self._buffered_partitions: set[TP] = set()
        self.seen_by_fetcher: Any = None
        self.during_fetch: Any = None

    def _to_message(self, tp: TP, record: Any) -> Any:
        return record

    def highwater(self, tp: TP) -> int:
        return 0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def _deliver(consumer: _Consumer, fetcher: Fetcher, *, fixed: bool = False) -> list[tuple[TP, int]]:
    """One round of Faust's fetch loop: getmany over aiokafka's fetched_records, with
    ``consumer.during_fetch`` run while the fetch waits (Faust's fetch runs in another thread);
    ``fixed``: with ``fetch_only_active`` installed."""

    async def _getmany(active_partitions: Any, timeout: float) -> Any:
        consumer.seen_by_fetcher = active_partitions
        if consumer.during_fetch is not None:
            consumer.during_fetch()
        return await fetcher.fetched_records(active_partitions, timeout=0)

    consumer._getmany = _getmany  # type: ignore[attr-defined]
    if fixed:
        fetch_only_active(consumer)

    async def run() -> list[tuple[TP, int]]:
        return [(tp, message.offset) async for tp, message in consumer.getmany(timeout=1.0)]

    return asyncio.run(run())


def _recovery_ends_during_the_fetch() -> tuple[_Consumer, Fetcher, dict[TP, _Position]]:
    # As at the end of table recovery: the changelog was the only active partition when the
    # fetch began; recovery pauses it while the fetch waits, and the stream partitions are still
    # held (they resume only after the seek to committed offsets). aiokafka prefetched them all.
    consumer = _Consumer(active={CHANGELOG})
    consumer._paused_partitions = {DISPATCH, RELEASE}
    consumer.during_fetch = lambda: consumer.pause_partitions({CHANGELOG})
    fetcher, positions = _fetcher({DISPATCH: (29, 23), RELEASE: (7, 3)})
    return consumer, fetcher, positions


def test_faust_hands_the_fetcher_its_live_active_set() -> None:
    """Pins faust-streaming 0.15.3: ``_wait_next_records`` checks that some partition is active,
    then hands the fetcher the live set, which a pause may empty while the fetch waits."""
    consumer, fetcher, _ = _recovery_ends_during_the_fetch()
    _deliver(consumer, fetcher)
    assert consumer.seen_by_fetcher is consumer._active_partitions
    assert consumer.seen_by_fetcher == set()


def test_stock_faust_loses_the_records_of_paused_partitions() -> None:
    """The stalled partition, reproduced: aiokafka reads an empty set as "every partition", so it
    drains the held stream partitions and moves their positions past the records; Faust's getmany
    then drops them (not active), and nothing is handed out until something seeks the partition.
    When this fails after an upgrade, see whether ``fetch_only_active`` is still needed."""
    consumer, fetcher, positions = _recovery_ends_during_the_fetch()
    assert _deliver(consumer, fetcher) == []
    assert positions[DISPATCH].position == 52, "aiokafka has moved past offsets 29..51"
    assert DISPATCH not in fetcher._records, "and no longer holds them"


def test_fetch_only_active_leaves_records_of_paused_partitions_in_the_fetcher() -> None:
    consumer, fetcher, positions = _recovery_ends_during_the_fetch()
    assert _deliver(consumer, fetcher, fixed=True) == []
    assert positions[DISPATCH].position == 29, "nothing read past the committed offset"
    assert DISPATCH in fetcher._records
    # Once the seek has run and the partition resumes, every record is handed out, in order.
    consumer.during_fetch = None
    consumer.resume_partitions({DISPATCH})
    delivered = _deliver(consumer, fetcher, fixed=True)
    assert delivered == [(DISPATCH, offset) for offset in range(29, 52)]
    assert RELEASE in fetcher._records, "still held: not active"


def test_the_live_view_follows_the_set_and_is_never_empty() -> None:
    tps: set[TP] = set()
    view = LiveActive(tps)
    assert view and DISPATCH not in view and len(view) == 0
    tps.add(DISPATCH)
    assert DISPATCH in view and list(view) == [DISPATCH]


def _stream_buffer_relieved(consumer: _Consumer, tp: TP) -> None:
    """What Faust's conductor does for a stream buffer of ``tp`` (the app's queue class, with its
    pressure callbacks): the buffer fills past its high-pressure mark, so the partition is paused,
    then the agent takes the records and the buffer's relief resumes it."""
    queue: ThrowableQueue[int] = ThrowableQueue(maxsize=4, flow_control=FlowControlEvent(initially_suspended=False))

    def high() -> None:
        consumer.on_buffer_full(tp)

    def drop() -> None:
        consumer.on_buffer_drop(tp)

    for n in range(4):
        queue.put_nowait_enhanced(n, on_pressure_high=high, on_pressure_drop=drop)
    assert tp not in consumer._active_partitions, "paused under pressure"
    while queue.qsize():
        queue.get_nowait()


def test_stock_faust_resumes_a_partition_its_owner_paused_when_a_stream_buffer_drains() -> None:
    """Pins faust-streaming 0.15.3: ``on_buffer_drop`` resumes every partition paused with
    ``on_buffer_full``, whoever paused it. The submitter's pause of a full waiting line did not
    last: the partition fetched again and the line grew with the backlog. When this fails after
    an upgrade, see whether ``hold_partitions`` is still needed."""
    consumer = _Consumer(active={DISPATCH})
    consumer.on_buffer_full(DISPATCH)  # the submitter: its line is full
    _stream_buffer_relieved(consumer, DISPATCH)
    assert DISPATCH in consumer._active_partitions, "fetching again, the line still full"


def test_a_held_partition_stays_paused_until_its_owner_lets_it_go() -> None:
    consumer = _Consumer(active={DISPATCH, RELEASE})
    hold_partitions(consumer)
    held: set[TP] = consumer.held_partitions  # type: ignore[attr-defined]
    held.add(DISPATCH)
    consumer.on_buffer_full(DISPATCH)
    _stream_buffer_relieved(consumer, DISPATCH)
    assert DISPATCH not in consumer._active_partitions, "still paused: its line is still full"
    # Partitions nobody holds keep Faust's own flow control.
    _stream_buffer_relieved(consumer, RELEASE)
    assert RELEASE in consumer._active_partitions
    # The owner's line drained: it lets go, and the partition fetches again.
    held.discard(DISPATCH)
    consumer.on_buffer_drop(DISPATCH)
    assert DISPATCH in consumer._active_partitions


# -- fetching the other partitions while one's records wait (streams.app.tune_fetcher) --------------

WEBHOOKS_0, REQUESTS_0 = TP("webhooks", 0), TP("requests", 0)


def _fetch_plan(prefetch_backoff: float) -> list[Any]:
    """The fetch requests aiokafka's routine would send now, with ``DISPATCH`` holding records it
    fetched a moment ago that the consumer has not taken yet, and nothing held for the others."""
    positions = {tp: _Position(position=0, has_valid_position=True) for tp in (DISPATCH, WEBHOOKS_0, REQUESTS_0)}
    assignment = SimpleNamespace(active=True, tps=set(positions), state_value=positions.__getitem__)
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._records = {DISPATCH: FetchResult(DISPATCH, assignment=assignment,
                                              partition_records=_PartitionRecords(0, 3), backoff=prefetch_backoff)}
    fetcher._in_flight = set()
    fetcher._preferred_read_replica = {}
    fetcher._client = SimpleNamespace(cluster=SimpleNamespace(leader_for_partition=lambda tp: 1))
    fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes, fetcher._fetch_max_bytes = 20, 1, 52428800
    fetcher._max_partition_fetch_bytes, fetcher._isolation_level, fetcher._client_rack = 1048576, 0, None
    fetcher._fetcher_timeout = 0.2
    requests, _resets, _timeout, _invalid, _resume = fetcher._get_actions_per_node(assignment)
    return [sorted((topic, p) for topic, parts in request.topics for p, *_ in parts) for _node, request in requests]


def test_aiokafka_holds_back_every_fetch_while_records_wait_to_be_taken() -> None:
    """aiokafka's default (0.1 s): one partition's untaken records stop the broker's next fetch for
    all of them, so a webhook written meanwhile waits for the worker's drain loop's round trip.
    If this fails, aiokafka changed how it schedules fetches: see ``tune_fetcher``."""
    assert _fetch_plan(0.1) == []


def test_with_no_prefetch_backoff_the_other_partitions_are_fetched_at_once() -> None:
    from streams.app import PREFETCH_BACKOFF

    # The partition whose records wait is not fetched again until they are taken (order, bound).
    assert _fetch_plan(PREFETCH_BACKOFF) == [[("requests", 0), ("webhooks", 0)]]


async def _worker_consumer(settings: Any, fetcher: Any, tmp_path: Any, monkeypatch: Any,
                           read_order: Any = None) -> Any:
    """The aiokafka consumer of a worker's Faust app (``streams.app.create_app``), started with
    ``fetcher`` as the fetcher aiokafka's start would build (no broker); ``read_order`` in place of
    the app's own."""
    import aiokafka

    from streams.app import create_app

    async def start(self: Any) -> None:  # what aiokafka's start does to the fetcher, without a broker
        self._fetcher = fetcher

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "start", start)
    app = create_app(settings, datadir=tmp_path / "w0")
    if read_order is not None:
        app.read_order = read_order
    created = app.consumer._thread._create_consumer(asyncio.get_running_loop())  # type: ignore[attr-defined]
    await created.start()
    return created


async def test_the_worker_consumer_starts_with_no_prefetch_backoff(tmp_path: Any, monkeypatch: Any) -> None:
    """The backoff is the fetcher's, built by the consumer's start(): the app sets it then."""
    from floodgate.settings import Settings
    from streams.app import PREFETCH_BACKOFF

    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    created = await _worker_consumer(settings, SimpleNamespace(_prefetch_backoff=0.1, fetched_records=None),
                                     tmp_path, monkeypatch)
    assert created._fetcher._prefetch_backoff == PREFETCH_BACKOFF == 0.0


# -- urgent topics' records first (streams.app.tune_fetcher with floodgate.readorder) -----------------

def _backlog(settings: Any) -> tuple[Fetcher, TP, list[TP]]:
    """aiokafka's Fetcher holding 40 fetched requests on two partitions, then, fetched after them,
    one slot release: what a worker holds while it admits a burst and a provider's job ends."""
    requests_0, requests_1 = TP(settings.topic("requests"), 0), TP(settings.topic("requests"), 1)
    release = TP(settings.topic("release.kling"), 0)
    fetcher, _ = _fetcher({requests_0: (0, 20), requests_1: (0, 20), release: (7, 1)})
    fetcher._records = OrderedDict(fetcher._records)  # as aiokafka keeps them: in fetched order
    return fetcher, release, [requests_0, requests_1]


def test_aiokafka_hands_out_fetched_records_in_fetched_order() -> None:
    """Without the read order, the release comes after every request fetched before it.
    If this fails, aiokafka changed how it hands out records: see ``floodgate.readorder``."""
    from floodgate.settings import Settings

    fetcher, release, _ = _backlog(Settings.from_env({}))
    first = asyncio.run(fetcher.fetched_records(set(fetcher._records), timeout=0, max_records=20))
    assert release not in first


async def test_the_worker_consumer_hands_out_a_release_before_the_requests_fetched_before_it(
        tmp_path: Any, monkeypatch: Any) -> None:
    from floodgate.settings import Settings

    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    fetcher, release, requests = _backlog(settings)
    created = await _worker_consumer(settings, fetcher, tmp_path, monkeypatch)
    assert created._max_poll_records == settings.poll_records == 10
    everything = set(fetcher._records)
    first = await created._fetcher.fetched_records(everything, timeout=0, max_records=settings.poll_records)
    assert [m.offset for m in first[release]] == [7]
    # The rest of the batch is the requests in the order they were fetched, each partition's in
    # Kafka's order.
    assert [(tp, [m.offset for m in batch]) for tp, batch in first.items() if tp != release] == [
        (requests[0], list(range(9)))]


async def test_the_worker_consumer_hands_out_requests_passed_over_by_urgent_records_once_a_second(
        tmp_path: Any, monkeypatch: Any) -> None:
    """Urgent records that never run out, as after rebalance upon rebalance: a request partition's
    fetched records still get a batch each second, until they are all handed out."""
    from floodgate.readorder import ReadOrder
    from floodgate.settings import Settings

    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    requests, webhooks = TP(settings.topic("requests"), 0), TP(settings.topic("webhooks"), 0)
    fetcher, _ = _fetcher({requests: (0, 20)})
    fetcher._records = OrderedDict(fetcher._records)
    now = [0.0]
    created = await _worker_consumer(settings, fetcher, tmp_path, monkeypatch,
                                     ReadOrder.for_worker(settings.topic, clock=lambda: now[0]))
    handed: list[tuple[int, list[int]]] = []
    for step in range(15):
        now[0] = step * 0.25
        fresh, _ = _fetcher({webhooks: (step * 10, 10)})  # a new fetch of webhooks each time
        fetcher._records[webhooks] = fresh._records[webhooks]
        batch = await created._fetcher.fetched_records(set(fetcher._records), timeout=0,
                                                       max_records=settings.poll_records)
        if requests in batch:
            handed.append((step, [m.offset for m in batch[requests]]))
    assert handed == [(4, list(range(10))), (8, list(range(10, 20)))]
