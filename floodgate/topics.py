"""Every topic Floodgate uses, named from one place (``Settings.topic_prefix``).

Public: requests, dispatch.<provider>, webhooks, events, results, notifications, dlq.
Internal: lines — how each dispatch partition stands (free slots, waiting orders, start rate),
once a second per partition, read by every worker for spillover. instances — each API process
taking requests says it is alive every few seconds (how many share each tenant's rate quota).
release.<provider> — slot
releases for a provider's submitters. It has exactly as many partitions as dispatch.<provider>
and the same keys (job ids), so Faust's co-partitioning assignor hands partition N of both to the
same worker: the release reaches the process that holds the slot, and it never waits behind the
dispatch backlog it is meant to unblock.

Only names and layout (no Faust here), so the streams side and the API, SDK and notify side
depend on this one module instead of on each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from floodgate.settings import Settings

WEEK_MS = 7 * 24 * 3600 * 1000
WEBHOOK_RECORD_BYTES = 1_300_000

REPLAYED_TABLE_LOG: dict[str, str] = {
    "cleanup.policy": "compact",
    # A roll a minute: Kafka never cleans the active segment (1 GiB by default).
    "segment.ms": str(60 * 1000),
    # Clean as soon as a tenth of the log is new: most of it is churn, slots taken and given back.
    "min.cleanable.dirty.ratio": "0.1",
    # A tombstone lives a minute past its cleaning instead of a day. A reader that takes longer
    # than that to read the log from its start could see an entry without its deletion; these
    # logs are read in seconds (the live entries are the slots and the orders read ahead while
    # they are full, at most the lane's window), and a slot that outlived its job only lowers the
    # count of free ones until the poller finds the job ended (at the latest, the job timeout
    # fails it and frees the slot).
    "delete.retention.ms": str(60 * 1000),
}
"""The changelog config of a table that lives in memory and is replayed from its changelog's
start on every assignment (a provider's slots, waiting orders and cancel marks): replaying
takes as long as the log is, not as the table is. Left at Kafka's defaults, the log keeps
every slot ever taken and freed until a 1 GiB segment rolls, and each tombstone a day after
that: a worker replays the whole day's history, and under a restart every few seconds the
replay outlasts the interval between two rebalances. With these, it keeps the live entries,
about a minute's new records and a minute's deletions."""


@dataclass(frozen=True)
class TopicNames:
    settings: Settings

    @property
    def requests(self) -> str:
        return self.settings.topic("requests")

    @property
    def webhooks(self) -> str:
        return self.settings.topic("webhooks")

    @property
    def events(self) -> str:
        return self.settings.topic("events")

    @property
    def results(self) -> str:
        return self.settings.topic("results")

    @property
    def notifications(self) -> str:
        return self.settings.topic("notifications")

    @property
    def dlq(self) -> str:
        return self.settings.topic("dlq")

    @property
    def lines(self) -> str:
        """Internal: each dispatcher's ``LineReport`` per partition, once a second (spillover)."""
        return self.settings.topic("lines")

    @property
    def instances(self) -> str:
        """Internal: each API process taking requests says it is alive every few seconds
        (``floodgate.instances``): how many share each tenant's rate quota."""
        return self.settings.topic("instances")

    def dispatch(self, provider: str) -> str:
        return self.settings.topic(f"dispatch.{provider}")

    def release(self, provider: str) -> str:
        return self.settings.topic(f"release.{provider}")

    def slot_log(self, provider: str) -> str:
        """The changelog of ``provider``'s slot table (``inflight-<provider>``, named as Faust names
        a table's changelog): a record per slot taken, one when the provider accepted its job (with
        the provider job id), a tombstone when it is freed. The API's job view reads it to see a
        job leave the line: the submission costs no record and no hop of its own."""
        return f"{self.settings.app_id}-inflight-{provider}-changelog"

    def dispatch_partitions(self, concurrency_limit: int) -> int:
        """A dispatch topic never has more partitions than its provider has slots (each partition
        needs a share of at least one)."""
        return max(1, min(self.settings.dispatch_partitions, concurrency_limit))

    def layout(self, providers: dict[str, int]) -> dict[str, tuple[int, dict[str, Any]]]:
        """topic → (partitions, config) for every topic; ``providers`` maps name → concurrency limit."""
        s = self.settings
        base = {"min.insync.replicas": str(s.min_insync_replicas)}
        out: dict[str, tuple[int, dict[str, Any]]] = {
            self.requests: (s.partitions, base),
            # The bridge accepts webhook bodies up to 1 MiB; the envelope around one is a little
            # larger than the broker's 1 MiB default record limit.
            self.webhooks: (s.partitions, {**base, "max.message.bytes": str(WEBHOOK_RECORD_BYTES)}),
            self.events: (s.partitions, base),
            self.results: (s.partitions, base),
            # Latest snapshot per job survives compaction: the API rebuilds its job view from it.
            self.notifications: (s.partitions,
                                 {**base, "cleanup.policy": "compact,delete", "retention.ms": str(WEEK_MS)}),
            self.dlq: (1, base),
            # The latest report per provider partition is all that matters, and only for seconds.
            self.lines: (1, {**base, "cleanup.policy": "compact,delete", "retention.ms": str(3600 * 1000)}),
            # Heartbeats matter for seconds; readers start from the last minute's.
            self.instances: (1, {**base, "retention.ms": str(3600 * 1000), "segment.ms": str(600 * 1000)}),
        }
        for p, limit in providers.items():
            out[self.dispatch(p)] = (self.dispatch_partitions(limit), base)
            out[self.release(p)] = (self.dispatch_partitions(limit), base)
            # A table's changelog, which the worker would create; made here too, so that an API
            # started before any worker reads it from the start (its job view shows submissions).
            out[self.slot_log(p)] = (self.dispatch_partitions(limit), {**base, **REPLAYED_TABLE_LOG})
        return out
