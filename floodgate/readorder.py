"""Which of the records a worker has fetched it hands to its agents first. Pure.

A worker fetches every topic it consumes with one consumer, and hands the records to its agents
one batch at a time, one record per turn of the event loop while the agents are busy. A record
fetched after a large batch waits until that batch is handed out: during a burst's admission, a
batch of a thousand requests took the worker 0.1-0.3 s to hand out, and a slot's release fetched
meanwhile waited that long while the slot sat idle and orders waited for it.

So the worker takes small batches (``FLOODGATE_POLL_RECORDS``) and ``ReadOrder`` arranges the
partitions whose records are waiting to be taken so that the most urgent topics come first:

1. ``webhooks`` and ``events``: a job's progress, which its user is waiting to see;
2. ``release.<provider>``: a slot's release; the next order waiting for the slot is submitted
   when it is read, and until then the slot the customer pays for is idle;
3. ``dispatch.<provider>``: admitted orders, which wait for a slot anyway;
4. everything else, ``requests`` among them: new work, read once the work in hand is moving.

Progress before releases: a provider's news of an ended job comes as both at once (the bridge
writes the release right after the webhook), so a release waits only for the progress records
fetched with it, about a millisecond each, where with releases first a webhook waited for every
release of a burst, up to hundreds handed out back to back while the pipeline ran at its max.
Measured in turns on one machine (``floodgate bench --only notify,handover``, three runs each,
2026-12-05): the notification p99 with the pipeline at its max 208.8, 154.5 and 262.1 ms against
213.1, 244.7 and 274.0 with releases first (0.85x on the means; p50 63.0-67.8 against 70.9-74.7),
the slot handover p99 22.2-22.8 ms against 23.2-25.5, the pipeline's results/s alike.

Within a partition the order is Kafka's, and nothing across partitions was ever promised, so the
arrangement changes only latency. Usually the urgent topics carry a few records per job, and a
job's records on them follow its admission. Not after a rebalance under load: every worker
re-reads its urgent partitions from their committed offsets and the records written while the
group stood still, and if rebalances follow each other the worker may spend every window between
them on those. In a worker-kill chaos run a ``requests`` partition with records fetched and
waiting was handed nothing for 30 s over five such windows (the stall watchdog fired), which the
read order alone allows. So records passed over for ``MAX_PASSED_OVER`` go first, the longest
waiting first, until some of them are taken (``taken``); the clock starts again for what is left
of them. A partition's share is then at least one batch (``FLOODGATE_POLL_RECORDS``, 10) a
second, and urgent records wait behind at most one batch a second per partition passed over.

The clock starts again when records are taken, not when they are put first: a batch that the
first partition put first fills is all a call hands out, so of several partitions passed over
at once only the first was served, and the others, their clocks started again unserved, went
first together again a second later, the same one first. With the worker short of CPU (urgent
records never running out) that starved ``requests`` partitions for 30 s and more: the stall
watchdog fired up to 41 times in one loaded run of the pipeline bench (its log: the partition
active, its fetched records waiting at the position the consumer had reached, put first within
the last second and never handed out).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

URGENT = ("webhooks", "events", "release.", "dispatch.")
"""The urgent topics by name (a name ending in "." is a prefix), most urgent first; with the
deployment's topic prefix before each."""

RANKS = (0, 0, 1, 2)
"""The rank of each of ``URGENT``: webhooks and events are equally urgent, then releases."""

MAX_PASSED_OVER = 1.0
"""Seconds a partition's fetched records may wait behind others before they go first (until some are taken)."""


class ReadOrder:
    """Ranks topics by ``rules`` (full names, or prefixes ending in "."; the first match wins)
    and arranges fetched partitions by rank. Unmatched topics come last, in the order they were
    fetched. Records waiting ``max_passed_over`` seconds or more come first until some of them
    are taken (``taken``; ``clock`` tells the time)."""

    def __init__(self, rules: Sequence[str], ranks: Sequence[int] | None = None, *,
                 max_passed_over: float = MAX_PASSED_OVER, clock: Callable[[], float] = time.monotonic) -> None:
        if ranks is not None and len(ranks) != len(rules):
            raise ValueError("one rank per rule")
        self.rules = list(zip(rules, ranks if ranks is not None else range(len(rules)), strict=True))
        self.max_passed_over = max_passed_over
        self._clock = clock
        self._ranks: dict[str, int | None] = {}
        self._waiting: dict[Any, tuple[Any, float]] = {}
        """Partition → (its fetched records, when they were first seen or some of them last
        taken). The records are aiokafka's object for one fetch: a new fetch is a new object."""

    @classmethod
    def for_worker(cls, topic: Callable[[str], str], **options: Any) -> ReadOrder:
        """The worker's order: ``URGENT`` named as ``topic`` names them (``Settings.topic``);
        ``options`` as the constructor takes them."""
        return cls([topic(name) for name in URGENT], RANKS, **options)

    def rank(self, topic: str) -> int | None:
        """``topic``'s rank (0 first), or None: after every ranked topic."""
        try:
            return self._ranks[topic]
        except KeyError:
            found = next((rank for rule, rank in self.rules
                          if topic == rule or (rule.endswith(".") and topic.startswith(rule))), None)
            self._ranks[topic] = found
            return found

    def arrange(self, fetched: OrderedDict[Any, Any]) -> None:
        """Reorder ``fetched`` (partition → records waiting to be taken; each key has ``.topic``)
        in place: records passed over for too long first, the longest waiting first; then ranked
        partitions by rank, each rank in its fetched order; then the rest as they were. Tell
        ``taken`` which partitions' records the batch then took."""
        ranked = [(rank, i, tp) for i, tp in enumerate(fetched) if (rank := self.rank(tp.topic)) is not None]
        for _rank, _i, tp in sorted(ranked, reverse=True):  # the last moved to the front ends up first
            fetched.move_to_end(tp, last=False)
        for tp in reversed(self._passed_over(fetched)):
            fetched.move_to_end(tp, last=False)

    def taken(self, partitions: Iterable[Any]) -> None:
        """Records of ``partitions`` were taken (the batch after ``arrange``): the clock of what
        is left of each starts again."""
        now, waiting = self._clock(), self._waiting
        for tp in partitions:
            seen = waiting.get(tp)
            if seen is not None:
                waiting[tp] = (seen[0], now)

    def _passed_over(self, fetched: OrderedDict[Any, Any]) -> list[Any]:
        """The partitions whose records have waited ``max_passed_over`` or more, the longest
        waiting first."""
        now, waiting = self._clock(), self._waiting
        for tp in [tp for tp in waiting if tp not in fetched]:  # all taken, or no longer assigned
            del waiting[tp]
        late: list[tuple[float, Any]] = []
        for tp, records in fetched.items():
            seen = waiting.get(tp)
            if seen is None or seen[0] is not records:
                waiting[tp] = (records, now)
            elif now - seen[1] >= self.max_passed_over:
                late.append((seen[1], tp))
        late.sort(key=lambda item: item[0])
        return [tp for _, tp in late]
