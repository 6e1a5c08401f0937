"""The keyed requests every API process accepted, for the Idempotency-Key check of an API without
a job view (an ingress-only process).

Such a process follows no job's changes, so it cannot look a retried key's job up in a view. It
reads ``requests`` instead: the ingress and the SDK write a keyed request's body hash in a header
(``REQUEST_HASH_HEADER``), and ``KeyedRequests`` puts each (job id, hash) into the process's
``IdempotencyCache`` (``learn``). No value is decoded; records without the header (requests
without a key, or written by other tools such as kcat) are skipped. A key reused with another
body is then a 422 on every ingress-only process, including one started since, once the first
request's record has been read here. The reader's fetches wait for 64 KiB or 100 ms, so a reuse
within about that long of the first 202, on another process, is a 202 naming the first job (whose
body wins).

The reader is librdkafka's consumer (no group: every process needs every key), polled from a
thread of its own: it looks at every record of ``requests``, and on the event loop aiokafka's
fetching and parsing of them cost the ingress-only process's accept path about a fifth more CPU per
202 (accept bench, pinned: 0.251 → 0.302 ms). The thread hands only the keyed requests' (job id,
hash) pairs to the loop, a batch at a time. It starts at most the cache's size back from the end of
each partition (``max_entries`` ÷ partitions), which covers the keys the cache could hold anyway,
and reads them in the background while the process serves: a process that has just started knows
older keys a few seconds later. A key whose first request is older than that window is checked
against this process's own 202s only. A reader that cannot reach the broker leaves the cache as
it is: the same fallback, and never a second job (one key is one job id).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from floodgate.api.idempotency import IdempotencyCache
from floodgate.kafka_admin import groupless_reader, watermarks
from floodgate.tasks import PollThread
from floodgate.validation import REQUEST_HASH_HEADER

log = logging.getLogger(__name__)

BATCH = 1000
POLL_SECONDS = 0.2
"""How long the thread waits for records before it looks at whether it should stop."""
FETCH_WAIT_MS = 100
FETCH_MIN_BYTES = 64 * 1024


def start_offsets(marks: dict[tuple[str, int], tuple[int, int]], back: int) -> dict[int, int]:
    """Where to start reading each partition, from its (low, high) watermarks: ``back`` records
    before its end, or its beginning."""
    return {p: max(low, high - back) for (_, p), (low, high) in marks.items()}


def keyed_pairs(messages: list[Any]) -> list[tuple[str, str]]:
    """(job id, request hash) of the keyed requests among ``messages`` (confluent-kafka's), in order."""
    pairs = []
    for msg in messages:
        if msg.error() is not None:
            continue
        headers, key = msg.headers(), msg.key()
        if not headers or key is None:
            continue
        for name, value in headers:
            if name == REQUEST_HASH_HEADER and value is not None:
                pairs.append((key.decode("utf-8", "replace"), value.decode("ascii", "replace")))
                break
    return pairs


class KeyedRequests:
    """``start()`` (reading from a cache's worth back of ``requests``), then ``stop()``. Each keyed
    request read is learned by ``cache``, on the event loop."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, cache: IdempotencyCache) -> None:
        self.topic = topic
        self.cache = cache
        self.learned = 0
        """Keyed requests read since the start (for tests and logs)."""
        self.window = -(-cache.max_entries // partitions)
        """Records read back from the end of each partition at the start."""
        self._partitions = range(partitions)
        self._consumer = Consumer(groupless_reader(
            bootstrap, "floodgate-api-keys", **{
                "isolation.level": "read_committed",
                # A few fetches a second under load, ten when idle: a key is learned within ~100 ms.
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                "fetch.min.bytes": FETCH_MIN_BYTES,
                "logger": log,
            }))
        self._poller = PollThread("floodgate-api-keys")

    async def start(self) -> None:
        """Find where to start and start reading; what lies before the end is read in the background."""
        try:
            # A topic created a moment ago may have no leader yet: ``watermarks`` asks again.
            marks = await asyncio.to_thread(watermarks, self._consumer, [(self.topic, p) for p in self._partitions])
        except BaseException:
            await asyncio.to_thread(self._consumer.close)
            raise
        self._consumer.assign([TopicPartition(self.topic, p, offset)
                               for p, offset in start_offsets(marks, self.window).items()])
        self._poller.start(self._run)

    async def stop(self) -> None:
        await self._poller.stop()
        await asyncio.to_thread(self._consumer.close)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reader's thread: consume, and hand the keyed requests' pairs to the loop."""
        try:
            while not self._poller.stopping.is_set():
                try:
                    messages = self._consumer.consume(BATCH, timeout=POLL_SECONDS)
                except KafkaException as exc:
                    log.warning("keyed requests: %s not read: %s; reading again in a second", self.topic, exc)
                    self._poller.stopping.wait(1.0)
                    continue
                pairs = keyed_pairs(messages)
                if pairs:
                    try:
                        loop.call_soon_threadsafe(self.take, pairs)
                    except RuntimeError:  # the loop is closed: nobody answers requests any more
                        return
        except Exception:
            log.exception("keyed requests: reader stopped; Idempotency-Key reuse is checked against this "
                          "process's own 202s only")

    def take(self, pairs: list[tuple[str, str]]) -> None:
        """Learn the (job id, request hash) pairs read from ``requests`` (on the event loop)."""
        learn = self.cache.learn
        for job_id, digest in pairs:
            learn(job_id, digest)
        self.learned += len(pairs)


__all__ = ["KeyedRequests", "keyed_pairs", "start_offsets"]
