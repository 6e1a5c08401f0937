"""The backlog guard's figures, read in the background so the request path never waits on Kafka.

``KafkaBacklog`` is the ``BacklogProbe`` built from what the deployment already has:

* depth = the workers' consumer lag on ``requests`` (accepted, not yet admitted) plus, with a
  job view, the admitted jobs it holds as ``queued`` (in ``dispatch.<provider>`` or parked in a
  provider's waiting line); without a view (an ingress-only API), the workers' lag on every
  ``dispatch.<provider>`` instead, plus the orders the dispatchers hold in their waiting lines
  (already acknowledged, so not in the lag), from the newest report per dispatch partition on
  ``lines`` (``floodgate.spillover.LineReport``, one a second);
* drain rate = the start rates those reports give for the partitions whose slots are full
  (``floodgate.backlog.line_drain_rate``); while none is full, the records ever written to
  ``results`` (one per job that ended), sampled over a minute (``floodgate.backlog.DrainRate``);
  estimated wait = depth ÷ drain rate.

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

from confluent_kafka import Consumer, KafkaException, TopicPartition

from floodgate.backlog import BacklogGuard, BacklogProbe, DrainRate, estimated_wait, lag, line_drain_rate
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.quotas import OpenJobs, Refusal
from floodgate.settings import Settings
from floodgate.spillover import FRESH_FOR, LineReport
from floodgate.topics import TopicNames

log = logging.getLogger(__name__)


class KafkaBacklog:
    """Depth and drain rate from Kafka offsets (and ``open_jobs``, the job view's count, when
    there is one). ``lag_topics``: (topic, partitions) whose unread records by ``group`` are
    queued jobs; ``results``: (topic, partitions) counted as finished jobs."""

    def __init__(self, bootstrap: str, group: str, lag_topics: Iterable[tuple[str, int]],
                 results: tuple[str, int], open_jobs: OpenJobs | None = None, *,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 5.0,
                 drain: DrainRate | None = None, lines: str | None = None, count_line_waiting: bool = False) -> None:
        """``lines``: the line reports' topic, read for the pace of the full lines and, with
        ``count_line_waiting``, the orders waiting in them (an API without a job view, which
        cannot count them otherwise)."""
        self._lagged = [TopicPartition(t, p) for t, parts in lag_topics for p in range(parts)]
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

    def depth(self) -> int | None:
        return self._depth

    def estimated_wait(self) -> float | None:
        return self._wait

    def drain_rate(self) -> float | None:
        return self._rate

    async def refresh(self) -> None:
        """Read the offsets (in a thread) and recompute the figures. On a broker error the
        figures become unknown (the guard then accepts) and ``KafkaException`` is raised."""
        try:
            unread, finished, reports = await asyncio.to_thread(self._read)
        except (KafkaException, RuntimeError):
            self._depth = self._wait = None
            raise
        depth = unread + (self.open_jobs.waiting if self.open_jobs is not None else 0)
        if self._count_line_waiting:
            depth += sum(r.waiting for r in reports)
        self.drain.sample(self.clock(), finished)
        # Sampled either way: the finished count is the fallback the moment no line is full.
        finished_rate = self.drain.per_second()
        lines_rate = line_drain_rate(reports, time.time())
        self._rate = lines_rate if lines_rate is not None else finished_rate
        self._depth = depth
        self._wait = estimated_wait(depth, self._rate)

    def _read(self) -> tuple[int, int, list[LineReport]]:
        """(records the group has yet to read on the lagged topics, records ever written to
        results, the newest fresh line report of each dispatch partition)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("backlog probe closed")
            unread = 0
            if self._lagged:
                committed = {(tp.topic, tp.partition): tp.offset
                             for tp in self._consumer.committed(self._lagged, timeout=self.timeout)}
                for tp in self._lagged:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)
                    unread += lag(high, committed.get((tp.topic, tp.partition)), low)
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
    """Refreshes ``probe`` every ``interval`` seconds and keeps ``refusal``: what the ingress
    answers new jobs with now (None: accept). Publishes the figures as gauges."""

    def __init__(self, probe: BacklogProbe, guard: BacklogGuard, metrics: ApiMetrics | None = None,
                 interval: float = 1.0) -> None:
        self.probe = probe
        self.guard = guard
        self.metrics = metrics
        self.interval = interval
        self.refusal: Refusal | None = None
        self.refreshed = asyncio.Event()
        """Set after every refresh, successful or not (tests wait on it rather than sleep)."""
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="backlog-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
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
        self.refusal = self.guard.verdict(depth, wait, self.probe.drain_rate())
        if self.metrics is not None:
            self.metrics.backlog_depth.set(-1 if depth is None else depth)
            self.metrics.backlog_wait.set(-1 if wait is None else wait)
            self.metrics.backlog_shedding.set(0 if self.refusal is None else 1)
        self.refreshed.set()

    async def _run(self) -> None:
        while True:
            self.refreshed.clear()
            await self.refresh_once()
            await asyncio.sleep(self.interval)




async def start_monitor(settings: Settings, topics: TopicNames, providers: Iterable[str],
                        partitions: Mapping[str, int], open_jobs: OpenJobs | None) -> BacklogMonitor | None:
    """The running monitor for the settings' guard (None when no bound is set), its first
    reading taken. ``partitions``: topic → partition count (the topic layout); ``open_jobs``:
    the job view's counts, when this process has one."""
    guard = BacklogGuard(settings.backlog_max_depth, settings.backlog_max_wait)
    if not guard.enabled:
        return None
    lagged = [topics.requests]
    if open_jobs is None:  # no view: the dispatch topics' lag stands for the admitted jobs still queued
        lagged += [topics.dispatch(p) for p in providers]
    probe = KafkaBacklog(settings.kafka_bootstrap, settings.app_id, [(t, partitions[t]) for t in lagged],
                         (topics.results, partitions[topics.results]), open_jobs,
                         lines=topics.lines, count_line_waiting=open_jobs is None)
    monitor = BacklogMonitor(probe, guard, api_metrics(), settings.backlog_refresh)
    await monitor.refresh_once()
    monitor.start()
    return monitor


__all__ = ["BacklogMonitor", "KafkaBacklog", "start_monitor"]
