"""Which offset is safe to commit when records of a partition finish out of order.

Kafka commits one offset per partition meaning "everything before this is done". With many
deliveries in flight, record 7 may finish before record 3; committing 8 then would lose 3 on a
crash. The safe commit point is the lowest offset still in flight, or — when nothing is in
flight — one past the highest offset started.

Pure and synchronous; the caller owns the consumer and the clock. ``forget`` (on rebalance)
bumps a generation so late ``finish`` calls from the previous owner's tasks are ignored.
"""
from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Ticket(Generic[P]):
    """Proof that ``offset`` of ``partition`` was started; hand it back to ``finish``."""

    partition: P
    offset: int
    generation: int


@dataclass
class _Partition:
    generation: int
    next_offset: int  # one past the highest offset started
    heap: list[int] = field(default_factory=list)  # in flight, plus finished ones not yet popped
    finished: set[int] = field(default_factory=set)

    def low_water(self) -> int:
        # Lazy deletion: finished offsets leave the heap only when they reach the top.
        while self.heap and self.heap[0] in self.finished:
            self.finished.discard(heapq.heappop(self.heap))
        return self.heap[0] if self.heap else self.next_offset


class CommitTracker(Generic[P]):
    """Tracks in-flight offsets per partition and reports safe commit points."""

    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}
        self._committed: dict[P, int] = {}
        self._generation = 0

    def start(self, partition: P, offset: int) -> Ticket[P]:
        """Record that ``offset`` is now in flight. Offsets of a partition must increase
        (gaps are fine: compaction and transaction markers leave them); raises ``ValueError`` if not."""
        part = self._parts.get(partition)
        if part is None:
            self._generation += 1
            part = self._parts[partition] = _Partition(self._generation, offset)
        elif offset < part.next_offset:
            raise ValueError(f"offset {offset} of {partition!r} started after {part.next_offset - 1}")
        heapq.heappush(part.heap, offset)
        part.next_offset = offset + 1
        return Ticket(partition, offset, part.generation)

    def finish(self, ticket: Ticket[P]) -> None:
        """Record that the ticket's offset is done. Tickets from before a ``forget`` are ignored."""
        part = self._parts.get(ticket.partition)
        if part is None or part.generation != ticket.generation or ticket.offset >= part.next_offset:
            return
        part.finished.add(ticket.offset)

    def in_flight(self, partition: P) -> int:
        part = self._parts.get(partition)
        return 0 if part is None else len(part.heap) - len(part.finished)

    def committable(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Partition → offset to commit, only where it moved past the last ``mark_committed``."""
        wanted = self._parts if partitions is None else [p for p in partitions if p in self._parts]
        out: dict[P, int] = {}
        for partition in wanted:
            offset = self._parts[partition].low_water()
            if offset > self._committed.get(partition, -1):
                out[partition] = offset
        return out

    def mark_committed(self, offsets: Mapping[P, int]) -> None:
        """Remember what the broker accepted, so ``committable`` reports only progress."""
        for partition, offset in offsets.items():
            if offset > self._committed.get(partition, -1):
                self._committed[partition] = offset

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop partitions this consumer no longer owns (after committing what it could)."""
        for partition in partitions:
            self._parts.pop(partition, None)
            self._committed.pop(partition, None)


__all__ = ["CommitTracker", "Ticket"]
