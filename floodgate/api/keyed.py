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

The reader (``floodgate.api.topic_reader``) starts at most the cache's size back from the end of
each partition (``max_entries`` ÷ partitions), which covers the keys the cache could hold anyway,
and reads them in the background while the process serves: a process that has just started knows
older keys a few seconds later. A key whose first request is older than that window is checked
against this process's own 202s only. A reader that cannot reach the broker leaves the cache as
it is: the same fallback, and never a second job (one key is one job id).
"""
from __future__ import annotations

from aiokafka import TopicPartition

from floodgate.api.idempotency import IdempotencyCache
from floodgate.api.topic_reader import Batches, TopicReader
from floodgate.validation import REQUEST_HASH_HEADER


def start_offsets(beginning: dict[TopicPartition, int], end: dict[TopicPartition, int],
                  back: int) -> dict[TopicPartition, int]:
    """Where to start reading each partition: ``back`` records before its end, or its beginning."""
    return {tp: max(beginning.get(tp, 0), last - back) for tp, last in end.items()}


class KeyedRequests(TopicReader):
    """``start()`` (reading from a cache's worth back of ``requests``), then ``stop()``. Each keyed
    request read is learned by ``cache``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, cache: IdempotencyCache) -> None:
        super().__init__(bootstrap, topic, partitions, client_id="floodgate-api-keys")
        self.cache = cache
        self.learned = 0
        """Keyed requests read since the start (for tests and logs)."""
        self.window = -(-cache.max_entries // partitions)
        """Records read back from the end of each partition at the start."""

    async def seek(self) -> None:
        beginning = await self.consumer.beginning_offsets(self.partitions)
        end = await self.consumer.end_offsets(self.partitions)
        for tp, offset in start_offsets(beginning, end, self.window).items():
            self.consumer.seek(tp, offset)

    def take(self, batches: Batches) -> None:
        learn = self.cache.learn
        for records in batches.values():
            for msg in records:
                key = msg.key
                if key is None:
                    continue
                for name, value in msg.headers:
                    if name == REQUEST_HASH_HEADER:
                        learn(key.decode("utf-8", "replace"), value.decode("ascii", "replace"))
                        self.learned += 1
                        break


__all__ = ["KeyedRequests", "start_offsets"]
