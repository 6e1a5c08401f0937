"""The backlog guard's figures, read in the background so the request path never waits on Kafka.

``KafkaBacklog`` is the ``BacklogProbe`` built from what the deployment already has:

* depth = the workers' consumer lag on ``requests`` (accepted, not yet admitted) plus, with a
  job view, the admitted jobs it holds as ``queued`` (in ``dispatch.<provider>`` or parked in a
  provider's waiting line). With a view, the lag on ``requests`` counts from the newest request
  the view has seen admit a job where that is past the committed offset (``OpenJobs.admitted_to``):
  the workers commit every few seconds, and a job admitted since then is in ``queued`` already;
  without a view (an ingress-only API), the workers' lag on every
  ``dispatch.<provider>`` instead, plus the orders the dispatchers hold in their waiting lines
  (already acknowledged, so not in the lag), from the newest report per dispatch partition on
  ``lines`` (``floodgate.spillover.LineReport``, one a second);
* drain rate = the start rates those reports give for the partitions whose slots are full
  (``floodgate.backlog.line_drain_rate``); while none is full, the records ever written to
  ``results`` (one per job that ended), sampled over a minute (``floodgate.backlog.DrainRate``);
  estimated wait = depth ÷ drain rate;
* per provider, the wait of a job joining its line (``floodgate.backlog.line_waits``): the jobs
  waiting for it ÷ the start rates of its full partitions, where the jobs waiting are the job
  view's count for that provider (``queued_at``) or, without a view, the workers' lag on its
  ``dispatch.<provider>`` plus the orders its dispatchers hold in their lines. Once any provider's
  is known the wait bound goes by these, per model (``BacklogMonitor.refusal_for``); the whole
  backlog's wait above stands in while none is.

The broker calls are blocking (confluent-kafka) and run in a thread, once per refresh. The group
is only read (committed offsets), never joined. ``BacklogMonitor`` refreshes any probe every
interval and keeps the guard's verdict ready for the ingress: a plain attribute read per request.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, TopicPartition

from floodgate.backlog import (
    BacklogGuard,
    BacklogProbe,
    DrainRate,
    LineWait,
    estimated_wait,
    lag,
    line_drain_rate,
    line_waits,
    model_wait,
)
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.quotas import OpenJobs, Refusal
from floodgate.routing import RoutingTable, known_models
from floodgate.settings import Settings
from floodgate.spillover import FRESH_FOR, LineReport
from floodgate.tasks import cancel_and_wait
from floodgate.topics import TopicNames

log = logging.getLogger(__name__)


class KafkaBacklog:
    """Depth and drain rate from Kafka offsets (and ``open_jobs``, the job view's count, when
    there is one). ``lag_topics``: (topic, partitions) whose unread records by ``group`` are
    queued jobs; ``results``: (topic, partitions) counted as finished jobs."""

    def __init__(self, bootstrap: str, group: str, lag_topics: Iterable[tuple[str, int]],
                 results: tuple[str, int], open_jobs: OpenJobs | None = None, *,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 5.0,
                 drain: DrainRate | None = None, lines: str | None = None, count_line_waiting: bool = False,
                 dispatch_topics: Mapping[str, str] | None = None,
                 queued_at: Callable[[str], int] | None = None, requests: str | None = None) -> None:
        """``requests``: the requests topic (among ``lag_topics``), whose lag counts from
        ``open_jobs.admitted_to`` where the view has seen the workers read further. ``lines``:
        the line reports' topic, read for the pace of the full lines and, with
        ``count_line_waiting``, the orders waiting in them (an API without a job view, which
        cannot count them otherwise). Per provider, the jobs waiting for it come from
        ``queued_at`` (the job view's board) or else from the lag on its dispatch topic
        (``dispatch_topics``: provider → topic, among ``lag_topics``) and its lines' orders."""
        self._lagged = [TopicPartition(t, p) for t, parts in lag_topics for p in range(parts)]
        self._requests = requests
        self._results = [TopicPartition(results[0], p) for p in range(results[1])]
        self.open_jobs = open_jobs
        self.clock = clock
        self.timeout = timeout
        self.drain = drain or DrainRate()
        self._depth: int | None = None
        self._wait: float | None = None
        self._rate: float | None = None
        self._lock = threading.Lock()  # close() must not free the client under a running read
        self._closed = False
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False, "client.id": f"{group}-api-backlog"})
        self._lines = lines
        self._count_line_waiting = count_line_waiting
        self._dispatch_topics = dict(dispatch_topics or {})
        self._queued_at = queued_at
        self._line_waits: dict[str, LineWait] = {}

    def depth(self) -> int | None:
        return self._depth

    def estimated_wait(self) -> float | None:
        return self._wait

    def drain_rate(self) -> float | None:
        return self._rate

    def line_waits(self) -> Mapping[str, LineWait]:
        return self._line_waits

    async def refresh(self) -> None:
        """Read the offsets (in a thread) and recompute the figures. On a broker error the
        figures become unknown (the guard then accepts) and ``KafkaException`` is raised."""
        try:
            read_to = dict(self.open_jobs.admitted_to) if self.open_jobs is not None else {}
            unread, finished, reports = await asyncio.to_thread(self._read, read_to)
        except (KafkaException, RuntimeError):
            self._depth = self._wait = None
            self._line_waits = {}
            raise
        depth = sum(unread.values()) + (self.open_jobs.waiting if self.open_jobs is not None else 0)
        if self._count_line_waiting:
            depth += sum(r.waiting for r in reports)
        self.drain.sample(self.clock(), finished)
        # Sampled either way: the finished count is the fallback the moment no line is full.
        finished_rate = self.drain.per_second()
        now = time.time()
        lines_rate = line_drain_rate(reports, now)
        self._rate = lines_rate if lines_rate is not None else finished_rate
        self._depth = depth
        self._wait = estimated_wait(depth, self._rate)
        self._line_waits = line_waits(self._waiting_by_provider(unread, reports), reports, now)

    def _waiting_by_provider(self, unread: Mapping[str, int], reports: Iterable[LineReport]) -> dict[str, int]:
        """Jobs waiting for each provider: the job view's count, else the dispatch lag plus the
        orders its dispatchers hold."""
        providers = {r.provider for r in reports} | set(self._dispatch_topics)
        if self._queued_at is not None:
            return {p: self._queued_at(p) for p in providers}
        out = {p: unread.get(topic, 0) for p, topic in self._dispatch_topics.items()}
        for report in reports:
            out[report.provider] = out.get(report.provider, 0) + report.waiting
        return out

    def _read(self, read_to: Mapping[int, int]) -> tuple[dict[str, int], int, list[LineReport]]:
        """(records the group has yet to read, per lagged topic; records ever written to results;
        the newest fresh line report of each dispatch partition). ``read_to``: per partition of
        the requests topic, the offset the workers are known to have read to."""
        with self._lock:
            if self._closed:
                raise RuntimeError("backlog probe closed")
            unread: dict[str, int] = {}
            if self._lagged:
                committed = {(tp.topic, tp.partition): tp.offset
                             for tp in self._consumer.committed(self._lagged, timeout=self.timeout)}
                for tp in self._lagged:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)
                    seen = read_to.get(tp.partition, 0) if tp.topic == self._requests else 0
                    unread[tp.topic] = (unread.get(tp.topic, 0)
                                        + lag(high, committed.get((tp.topic, tp.partition)), low, seen))
            finished = 0
            for tp in self._results:
                finished += self._consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)[1]
            reports = self._fresh_reports(self._lines) if self._lines is not None else []
            return unread, finished, reports

    def _fresh_reports(self, topic: str) -> list[LineReport]:
        """The newest report per dispatch partition, if fresh."""
        tp = TopicPartition(topic, 0)
        low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)
        if high <= low:
            return []
        self._consumer.assign([TopicPartition(topic, 0, max(low, high - 500))])  # the last few seconds
        newest: dict[bytes, LineReport] = {}
        deadline = time.monotonic() + self.timeout
        done = False
        while not done and time.monotonic() < deadline:
            for msg in self._consumer.consume(num_messages=500, timeout=0.5):
                value = msg.value()
                if msg.error() is None and value is not None:
                    with contextlib.suppress(ValueError, KeyError, TypeError):  # malformed: says nothing
                        newest[msg.key() or b""] = LineReport.decode(value)
                done = done or (msg.offset() or 0) >= high - 1
        return [r for r in newest.values() if time.time() - r.at <= FRESH_FOR]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._consumer.close()


class BacklogMonitor:
    """Refreshes ``probe`` every ``interval`` seconds and keeps the verdicts ready for the ingress:
    ``refusal``, what every new job is answered now (the depth bound; the wait bound too while no
    provider's line wait is known), and ``refusal_for(model)``, the wait bound for a model's jobs
    by the line they would join (None: accept). Publishes the figures as gauges."""

    def __init__(self, probe: BacklogProbe, guard: BacklogGuard, metrics: ApiMetrics | None = None,
                 interval: float = 1.0, routing: RoutingTable | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.probe = probe
        self.guard = guard
        self.metrics = metrics
        self.interval = interval
        self.routing = routing
        self.clock = clock
        self.refusal: Refusal | None = None
        self._by_model: dict[str, Refusal] = {}
        self._published: set[str] = set()
        """Providers whose line wait the gauge shows."""
        self.refreshed = asyncio.Event()
        """Set after every refresh, successful or not (tests wait on it rather than sleep)."""
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="backlog-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await asyncio.to_thread(self.probe.close)

    async def refresh_once(self) -> None:
        try:
            await self.probe.refresh()
            if self._failing:
                log.info("backlog figures readable again")
            self._failing = False
        except Exception as exc:  # a dead monitor would freeze its last verdict: log and go on
            if not self._failing:  # once per outage, not once a second
                log.warning("backlog figures unknown (new jobs are not shed meanwhile): %s", exc)
            self._failing = True
        depth, wait = self.probe.depth(), self.probe.estimated_wait()
        lines = self.probe.line_waits() if self.routing is not None else {}
        # The whole backlog's wait stands in for the lines' only while none of theirs is known.
        self.refusal = self.guard.verdict(depth, None if lines else wait, self.probe.drain_rate())
        self._by_model = self._model_refusals(lines)
        if self.metrics is not None:
            self.metrics.backlog_depth.set(-1 if depth is None else depth)
            self.metrics.backlog_wait.set(-1 if wait is None else wait)
            self.metrics.backlog_shedding.set(0 if self.refusal is None and not self._by_model else 1)
            for provider, line in lines.items():
                self.metrics.backlog_line_wait.labels(provider).set(line.seconds)
            for provider in self._published - lines.keys():  # no longer known: no figure, not a stale one
                self.metrics.backlog_line_wait.remove(provider)
            self._published = set(lines)
        self.refreshed.set()

    def refusal_for(self, model: str) -> Refusal | None:
        """The wait bound's verdict for a new job of ``model`` (a dict read on the request path)."""
        return self._by_model.get(model)

    def _model_refusals(self, lines: Mapping[str, LineWait]) -> dict[str, Refusal]:
        if not lines or self.routing is None or self.guard.max_wait <= 0:
            return {}
        when = self.clock()
        out: dict[str, Refusal] = {}
        for model in known_models(self.routing, when):
            refusal = self.guard.line_verdict(model, model_wait(self.routing, model, lines, when))
            if refusal is not None:
                out[model] = refusal
        return out

    async def _run(self) -> None:
        while True:
            self.refreshed.clear()
            await self.refresh_once()
            await asyncio.sleep(self.interval)




async def start_monitor(settings: Settings, topics: TopicNames, providers: Iterable[str],
                        partitions: Mapping[str, int], open_jobs: OpenJobs | None,
                        routing: RoutingTable | None = None,
                        queued_at: Callable[[str], int] | None = None) -> BacklogMonitor | None:
    """The running monitor for the settings' guard (None when no bound is set), its first
    reading taken. ``partitions``: topic → partition count (the topic layout); ``open_jobs``
    and ``queued_at``: the job view's counts (all, and per provider), when this process has one;
    ``routing``: the models' routes, for the wait bound per model."""
    guard = BacklogGuard(settings.backlog_max_depth, settings.backlog_max_wait)
    if not guard.enabled:
        return None
    lagged = [topics.requests]
    dispatch = {p: topics.dispatch(p) for p in providers}
    if open_jobs is None:  # no view: the dispatch topics' lag stands for the admitted jobs still queued
        lagged += list(dispatch.values())
    probe = KafkaBacklog(settings.kafka_bootstrap, settings.app_id, [(t, partitions[t]) for t in lagged],
                         (topics.results, partitions[topics.results]), open_jobs,
                         lines=topics.lines, count_line_waiting=open_jobs is None,
                         dispatch_topics=dispatch if open_jobs is None else None,
                         queued_at=queued_at if open_jobs is not None else None, requests=topics.requests)
    monitor = BacklogMonitor(probe, guard, api_metrics(), settings.backlog_refresh, routing=routing)
    await monitor.refresh_once()
    monitor.start()
    return monitor


__all__ = ["BacklogMonitor", "KafkaBacklog", "start_monitor"]
