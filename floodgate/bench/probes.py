"""Looking at a running stack from outside: Kafka offsets (queue depth as consumer lag),
records as they land on topics, a process's resident memory, the simulator's counters."""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from floodgate.errors import FloodgateError


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from ``/proc/<pid>/status`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise FloodgateError(f"no VmRSS for pid {pid}")


def stat_cpu(stat: str, ticks_per_second: float) -> tuple[str, float]:
    """The name and user + system CPU seconds in a ``/proc/<pid>/stat`` (or ``task/<tid>/stat``)
    line; the name may hold spaces and parentheses."""
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / ticks_per_second


def schedstat(text: str) -> tuple[int, int]:
    """(nanoseconds on a CPU, nanoseconds runnable but waiting for one) from a thread's
    ``/proc/<pid>/task/<tid>/schedstat`` line (its third field, time slices, is left out)."""
    fields = text.split()
    return int(fields[0]), int(fields[1])


def main_thread_schedstat(pid: int) -> tuple[int, int] | None:
    """``schedstat`` of ``pid``'s main thread; None where the kernel keeps no such file."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as fh:
            return schedstat(fh.read())
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (``/proc/<pid>/stat``)."""
    import os

    with open(f"/proc/{pid}/stat") as fh:
        return stat_cpu(fh.read(), os.sysconf("SC_CLK_TCK"))[1]


class Offsets:
    """End offsets of topics and a consumer group's committed offsets, by one admin client."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._partitions: dict[str, list[int]] = {}

    def partitions(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            meta = self.admin.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None:
                raise FloodgateError(f"topic {topic}: {meta.error}")
            self._partitions[topic] = sorted(meta.partitions)
        return self._partitions[topic]

    def _tps(self, topics: Iterable[str]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in topics for p in self.partitions(t)]

    def ends(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        tps = self._tps(topics)
        futures = self.admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
        return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}

    def committed(self, group: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        request = ConsumerGroupTopicPartitions(group, self._tps(topics))
        result = self.admin.list_consumer_group_offsets([request], request_timeout=10)[group].result()
        # No commit yet means nothing consumed: the bench's topics are new, so that is offset 0.
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in result.topic_partitions}

    def lag(self, group: str, topics: Iterable[str]) -> dict[str, int]:
        """Records not yet processed by ``group``, per topic."""
        topics = list(topics)
        ends, done = self.ends(topics), self.committed(group, topics)
        out = dict.fromkeys(topics, 0)
        for key, end in ends.items():
            out[key[0]] += max(0, end - done.get(key, 0))
        return out

    def total(self, topics: Iterable[str]) -> int:
        return sum(self.ends(topics).values())

    def written(self, prefix: str) -> dict[str, int]:
        """Records ever written to each topic whose name starts with ``prefix`` (end offsets: compaction
        does not lower them), table changelogs and internal topics included."""
        names = sorted(t for t in self.admin.list_topics(timeout=10).topics if t.startswith(prefix))
        out = dict.fromkeys(names, 0)
        for (topic, _), end in self.ends(names).items():
            out[topic] += end
        return out



@dataclass
class LagSampler:
    """A thread sampling ``group``'s lag on some topics every ``interval`` seconds."""

    bootstrap: str
    group: str
    topics: Mapping[str, list[str]]  # label → topics summed under it
    interval: float = 0.5
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)
        self._offsets = Offsets(self.bootstrap)

    def _run(self) -> None:
        every = [t for ts in self.topics.values() for t in ts]
        while not self._stop.is_set():
            t = time.time()
            try:
                lag = self._offsets.lag(self.group, every)
                self.samples.append((t, {label: sum(lag[x] for x in ts) for label, ts in self.topics.items()}))
            except Exception:  # a missed sample is a gap in a plot, not a failed run
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


Handler = Callable[[Any], None]


class TopicTap:
    """A thread reading topics and handing every record to its topic's handler: from the
    beginning, or (``from_now``) from the end offsets at construction."""

    def __init__(self, bootstrap: str, handlers: Mapping[str, Handler], *, from_now: bool = False) -> None:
        self.handlers = dict(handlers)
        self.count = 0
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "floodgate-bench-tap",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 50})
        offsets = Offsets(bootstrap)
        start = offsets.ends(self.handlers) if from_now else {}
        self._consumer.assign([TopicPartition(t, p, start.get((t, p), OFFSET_BEGINNING)) for t in self.handlers
                               for p in offsets.partitions(t)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="topic-tap", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.1):
                topic = msg.topic()
                if msg.error() is None and topic is not None:
                    self.count += 1
                    self.handlers[topic](msg)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._consumer.close()


EVENTS_PROCESSED = re.compile(r'^floodgate_events_processed_total\{agent="([^"]*)"\} ([0-9.e+]+)$', re.M)


STALLED = re.compile(r'^floodgate_stalled_partitions_total\{topic="([^"]*)"\} ([0-9.e+]+)$', re.M)
PARKED = re.compile(r'^floodgate_orders_parked_total\{provider="([^"]*)"\} ([0-9.e+]+)$', re.M)


@dataclass(frozen=True)
class WorkerCounters:
    """Summed over a stack's workers."""

    events: dict[str, float]
    """``floodgate_events_processed_total`` per agent: the records consumed, i.e. the consumer hops."""
    stalled: float
    """The stall watchdog's firings (``floodgate_stalled_partitions_total``, every topic)."""
    parked: float
    """Dispatch orders that waited for a slot (``floodgate_orders_parked_total``, every provider)."""


def histogram_buckets(text: str, name: str, labels: str = "") -> dict[float, float]:
    """A histogram from ``/metrics`` text: upper bound → observations at or below it. ``labels``:
    the series' labels before ``le`` as exposed (``generation="2",``)."""
    line = re.compile(rf'^{re.escape(name)}_bucket\{{{re.escape(labels)}le="([^"]*)"\}} ([0-9.e+]+)$', re.M)
    return {float(le): float(count) for le, count in line.findall(text)}


def loop_lag_buckets(text: str, process: str = "api") -> dict[float, float]:
    """A process's event loop lag histogram (probes per bound); ``process``: ``api`` or ``worker``."""
    return histogram_buckets(text, f"floodgate_{process}_event_loop_lag_seconds")


def full_gc_buckets(text: str, process: str = "api") -> dict[float, float]:
    """A process's full (generation 2) collections' durations (collections per bound)."""
    return histogram_buckets(text, f"floodgate_{process}_gc_pause_seconds", 'generation="2",')


def loop_lag_between(before: Mapping[float, float], after: Mapping[float, float]) -> dict[str, Any]:
    """What the probes taken between two readings of the histogram say (pure): how many there were,
    how many found the loop over 100 ms late, and upper bounds of the 99th percentile and of the
    worst lag (the bucket it fell in; ``inf`` past the last one)."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cumulative[-1] if cumulative else 0.0

    def bound_of(share: float) -> float | None:
        return next((b for b, c in zip(bounds, cumulative, strict=True) if c >= share * total), None)

    over = total - next((c for b, c in zip(bounds, cumulative, strict=True) if b >= 0.1), total)
    finite = [b for b in bounds if b != float("inf")]
    return {"probes": int(total), "over_100ms": int(over),
            "p99_le_ms": _ms(bound_of(0.99)) if total else None, "worst_le_ms": _ms(bound_of(1.0)) if total else None,
            "last_bucket_ms": finite[-1] * 1000 if finite else None}


def _ms(bound: float | None) -> float | None:
    """Milliseconds; None past the last finite bucket (JSON has no infinity)."""
    return None if bound is None or bound == float("inf") else bound * 1000


def summed(histograms: Iterable[Mapping[float, float]]) -> dict[float, float]:
    """Histograms of several processes as one (pure): bucket counts are cumulative, so their sum is
    the histogram of all the observations together."""
    total: dict[float, float] = {}
    for one in histograms:
        for bound, count in one.items():
            total[bound] = total.get(bound, 0.0) + count
    return total


Stalls = tuple[dict[float, float], dict[float, float]]
"""A reading of a process's loop lag and full-collection histograms (``stalls``)."""


def stalls_between(before: Stalls, after: Stalls, process: str = "api") -> dict[str, Any]:
    """What ``process``'s loop went through between two readings (pure): ``<process>_loop_lag`` and
    ``<process>_full_gc`` as ``loop_lag_between`` says them (for the collections, "probes" counts
    the collections)."""
    return {f"{process}_loop_lag": loop_lag_between(before[0], after[0]),
            f"{process}_full_gc": loop_lag_between(before[1], after[1])}


async def scrape_all(metrics_urls: Iterable[str]) -> list[str]:
    """The ``/metrics`` text of each of ``metrics_urls``, read once."""
    texts = []
    async with aiohttp.ClientSession() as session:
        for url in metrics_urls:
            async with session.get(url) as resp:
                texts.append(await resp.text())
    return texts


async def stalls(metrics_urls: Iterable[str], process: str = "api") -> Stalls:
    """The loop lag and full-collection histograms of ``process`` (``api`` or ``worker``), read once
    from each of its processes' ``metrics_urls`` and added up."""
    texts = await scrape_all(metrics_urls)
    return (summed(loop_lag_buckets(t, process) for t in texts),
            summed(full_gc_buckets(t, process) for t in texts))


async def webhook_answers(metrics_urls: Iterable[str]) -> dict[float, float]:
    """The bridge's answer time histogram (``floodgate_webhook_answer_seconds``), read once from each
    API process at ``metrics_urls`` and added up."""
    return summed(histogram_buckets(t, "floodgate_webhook_answer_seconds") for t in await scrape_all(metrics_urls))


def answers_between(before: Mapping[float, float], after: Mapping[float, float]) -> dict[str, Any]:
    """The bridge's answers between two readings of its histogram (pure): how many, how many took
    over 100 ms, and upper bounds of the 99th percentile and the slowest."""
    seen = loop_lag_between(before, after)
    return {"answers": seen.pop("probes"), **seen}


async def worker_counters(metrics_urls: Iterable[str]) -> WorkerCounters:
    """The counters of the workers at ``metrics_urls``, summed."""
    events: dict[str, float] = {}
    stalled = parked = 0.0
    for text in await scrape_all(metrics_urls):
        for agent, value in EVENTS_PROCESSED.findall(text):
            events[agent] = events.get(agent, 0.0) + float(value)
        stalled += sum(float(value) for _, value in STALLED.findall(text))
        parked += sum(float(value) for _, value in PARKED.findall(text))
    return WorkerCounters(events, stalled, parked)


def worker_metrics_urls(stack: Any) -> list[str]:
    return [url for name, url in stack.metrics_urls.items() if name.startswith("worker")]


def api_metrics_urls(stack: Any) -> list[str]:
    return [url for name, url in stack.metrics_urls.items() if name.startswith("api")]


async def simulator_jobs(url: str, provider: str) -> list[dict[str, Any]]:
    """The simulator's jobs at ``provider`` with their wall-clock creation and completion times."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_admin/{provider}/jobs") as resp:
        resp.raise_for_status()
        return list((await resp.json())["jobs"])


async def simulator_stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/stats") as resp:
        return dict((await resp.json())["providers"])


def topic_keys(bootstrap: str, topic: str, *, timeout: float = 120.0) -> set[str]:
    """Every key on ``topic`` up to its current end (how a bench proves nothing accepted was lost)."""
    offsets = Offsets(bootstrap)
    ends = {p: end for (_, p), end in offsets.ends([topic]).items() if end > 0}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "floodgate-bench-keys",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    keys: set[str] = set()
    remaining = dict(ends)
    deadline = time.monotonic() + timeout
    try:
        while remaining:
            if time.monotonic() > deadline:
                raise FloodgateError(f"reading {topic}: {remaining} not reached in {timeout:.0f}s")
            for msg in consumer.consume(10_000, 0.5):
                if msg.error() is not None:
                    continue
                key = msg.key()
                if key is not None:
                    keys.add(key.decode())
                p = msg.partition()
                if p in remaining and (msg.offset() or 0) + 1 >= remaining[p]:
                    del remaining[p]
    finally:
        consumer.close()
    return keys


def mean_record_bytes(bootstrap: str, topic: str, n: int = 500, timeout: float = 10.0) -> float:
    """Mean key + value size of the first ``n`` records of ``topic`` (0.0 if it is empty)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "floodgate-bench-sizes",
                         "enable.auto.commit": False})
    offsets = Offsets(bootstrap)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in offsets.partitions(topic)])
    sizes: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while len(sizes) < n and time.monotonic() < deadline:
            for msg in consumer.consume(n, 0.5):
                if msg.error() is None:
                    sizes.append(len(msg.key() or b"") + len(msg.value() or b""))
    finally:
        consumer.close()
    return sum(sizes) / len(sizes) if sizes else 0.0
