"""Queue depth and limit shares for the worker's metrics, refreshed by a timer off the event loop.

The depth of ``dispatch.<provider>`` is the worker group's consumer lag on the partitions *this*
worker owns (end offset − committed offset) plus the orders this worker has read and parked until
a slot frees (their records are acknowledged), so summing over workers gives the whole backlog
without counting a partition twice. Likewise the concurrency limit gauge is the sum of the owned
partitions' shares. The broker calls are blocking (confluent-kafka), so they run in a thread.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from floodgate.metrics import WorkerMetrics
from floodgate.throttle import partition_share

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0


def depth(end: int, committed: int | None, low: int) -> int:
    """Records not yet consumed by the group: ``end`` minus the committed offset, or minus the
    log start ``low`` when nothing is committed (the group starts from the earliest record)."""
    start = committed if committed is not None and committed >= 0 else low
    return max(0, end - max(start, low))


def owned_share(limit: int, partitions: int, owned: Iterable[int]) -> int:
    """The part of ``limit`` held by the ``owned`` partitions of a ``partitions``-wide dispatch topic."""
    return sum(partition_share(limit, partitions, p) for p in owned)


class LagProbe:
    """Reads the group's committed offsets and the log ends of some partitions. Blocking calls:
    use :meth:`refresh` from the loop, which runs them in a thread. Never joins the group."""

    def __init__(self, bootstrap: str, group: str, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()  # close() must not free the client under a running lag()
        self._closed = False
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "client.id": f"{group}-lag-probe"})

    def lag(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """(topic, partition) → depth. Raises ``KafkaException`` if the broker does not answer."""
        tps = [TopicPartition(topic, p) for topic, p in partitions]
        with self._lock:
            if not tps or self._closed:
                return {}
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in self._consumer.committed(tps, timeout=self.timeout)}
            out = {}
            for tp in tps:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)
                out[(tp.topic, tp.partition)] = depth(high, committed.get((tp.topic, tp.partition)), low)
            return out

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._consumer.close()


async def refresh(probe: LagProbe, metrics: WorkerMetrics, topics: Mapping[str, tuple[str, int, int]],
                  owned: Iterable[tuple[str, int]], waiting: Mapping[str, Callable[[], int]] | None = None,
                  breakers: Mapping[str, Callable[[], bool]] | None = None) -> None:
    """Set ``queue_depth``, ``concurrency_limit`` and ``breaker_open`` per provider for the
    ``owned`` partitions.

    ``topics`` maps provider → (dispatch topic, its partition count, the provider's limit);
    ``waiting`` provider → how many orders this worker holds waiting for a slot now; ``breakers``
    provider → whether this worker's breaker for it is not closed now.
    """
    mine = set(owned)
    wanted = [(topic, p) for topic, parts, _ in topics.values() for p in range(parts) if (topic, p) in mine]
    try:
        lags: dict[tuple[str, int], int] | None = await asyncio.to_thread(probe.lag, wanted)
    except (KafkaException, RuntimeError) as exc:  # RuntimeError: the client is closing
        log.info("queue depth not refreshed: %s", exc)
        lags = None
    for provider, (topic, parts, limit) in topics.items():
        here = [p for p in range(parts) if (topic, p) in mine]
        metrics.concurrency_limit.labels(provider).set(owned_share(limit, parts, here))
        # A worker that owns none of the provider's partitions sends it nothing: its breaker says nothing.
        is_open = bool(here) and breakers is not None and provider in breakers and breakers[provider]()
        metrics.breaker_open.labels(provider).set(1 if is_open else 0)
        if lags is not None:
            parked = waiting[provider]() if waiting and provider in waiting else 0
            metrics.queue_depth.labels(provider).set(parked + sum(lags.get((topic, p), 0) for p in here))
