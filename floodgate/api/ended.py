"""The ends of the jobs this process accepted, for the queued-jobs quota of an API without a job
view (an ingress-only process).

Such a process follows no job's changes (that is what keeps its core for the 202s), so it counts
only the jobs it answered 202 itself (``floodgate.quotas.JobsByTenant``, filled by the
admission) and takes each out when its job's result appears on ``results``: every job that ends
(completed, failed, cancelled, expired) gets a record there, keyed by its job id (the jobs agent
writes it with the terminal state; a second one, after a redelivery, changes nothing).
``EndedJobs`` reads only those keys: no value is decoded.

The reader (``floodgate.api.topic_reader``) starts at the end of the topic, before the first
request is served, so every job this process accepts ends after its reading position. A job
counts for at most 100 ms after its result is written; a reader that cannot reach the broker
leaves jobs counted (the quota then refuses early, never late).
"""
from __future__ import annotations

from floodgate.api.topic_reader import Batches, TopicReader
from floodgate.quotas import JobsByTenant


class EndedJobs(TopicReader):
    """``start()`` (reading from the end of ``results``), then ``stop()``. Each result read takes
    its job out of ``jobs``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, jobs: JobsByTenant) -> None:
        super().__init__(bootstrap, topic, partitions, client_id="floodgate-api-ended")
        self.jobs = jobs
        self.read = 0
        """Results read since the start (for tests and logs)."""

    async def seek(self) -> None:
        await self.consumer.seek_to_end(*self.partitions)
        for tp in self.partitions:  # the end is looked up now, not at the first fetch
            await self.consumer.position(tp)

    def take(self, batches: Batches) -> None:
        discard = self.jobs.discard
        for records in batches.values():
            for msg in records:
                key = msg.key
                if key is not None:
                    discard(key.decode("utf-8", "replace"))
            self.read += len(records)


__all__ = ["EndedJobs"]
