"""The waiting line of one provider: priority classes first, then each tenant's weighted share. Pure.

Orders that wait for a provider's slot are served in this order:

1. **Priority.** ``high`` before ``standard`` before ``low``: a waiting order is never passed by one
   of a lower class (an order already submitted is not taken back).
2. **Fair share within a class.** Tenants share the provider's slots by weight. A tenant whose
   jobs hold fewer slots there than the whole slots of its share (``slots × weight ÷`` the
   weights of the tenants waiting in the class, rounded down) goes first, the one holding the
   fewest for its weight first: a tenant arriving while another's burst holds every slot takes
   each slot that frees until it holds its share, instead of every other one. Otherwise
   start-time fair queueing decides: each order gets a start tag when it joins the line,
   ``max(V, F[tenant])``, and its tenant's finish ``F[tenant]`` moves on by ``1 / weight``; ``V``
   is the tag of the last order served in the class; the smallest tag goes first. A tenant that
   bursts 10,000 orders tags them 0, 1, 2, …; a tenant arriving a moment later starts at the
   current ``V``, so its orders interleave with the burst instead of waiting behind all of it. A
   tenant with weight 3 starts three jobs for each one of a tenant with weight 1 while both wait,
   and so holds three slots for each of the other's. The turns, not the slots held, decide once
   each holds its whole slots: a share is rarely a whole number of slots (3:1 of 6 slots is 4.5
   and 1.5), and serving the fewest held for its weight at every start kept such a pair at 4 and
   2, two starts to one. Without ``held_of`` the turns alone decide. An order taken out
   (cancelled, spilled, expired) gives its turn back: its tenant's last turn goes, and
   ``F[tenant]`` moves back to where that turn started.
3. **Within a tenant**, by the line's order key: the dispatcher's is when the order joined the
   line, the job's acceptance time (a spilled order's move: ``Order.line_key``), so a tenant's
   jobs start in the order their 202s were given, although the ``requests`` partitions they were
   admitted from interleave by fetch (the job view counts places in that order too).
   Arrival at the line breaks ties.

Tags are not stored: a line rebuilt after a restart re-tags its orders in arrival order, which
gives the same interleaving for tenants that were waiting together.

``push`` says when the line has reached its high mark (pause fetching: the rest of the backlog
waits in Kafka) and ``resume_due`` once, when it has drained to its low mark.

``position_estimate`` is the same rule seen from outside the dispatcher (the API's job view): from
how many orders of each class wait, how many are served before a given one.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from floodgate.errors import ConfigError

PRIORITY_RANK: Mapping[str, int] = {"high": 0, "standard": 1, "low": 2}
"""Served first = lowest rank. Unknown classes (an older order without one) count as standard."""


def priority_rank(priority: str | None) -> int:
    return PRIORITY_RANK.get(priority or "standard", 1)


class Queued(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def priority(self) -> str: ...


Q = TypeVar("Q", bound=Queued)


@dataclass(frozen=True, slots=True, order=True)
class _Tag:
    rank: int
    start: float
    seq: int


_Klass = tuple[int, str]
"""(priority rank, tenant)."""
_Entry = tuple[float, int, str]
"""Within a class: (order key, arrival seq, job id), smallest served first."""


@dataclass(slots=True)
class _Class:
    """One (priority, tenant) class: its fair-share turns and its waiting orders. The k-th turn
    (smallest tag first) serves the k-th order (smallest entry first), so a tenant's orders go
    by the line's order key whatever order they arrived in, and its turns stay where fair
    queueing put them."""

    tags: deque[_Tag] = field(default_factory=deque)
    """Ascending (a tenant's tags only grow; a put-back order's tag is the smallest)."""
    entries: list[_Entry] = field(default_factory=list)
    """A heap; entries of orders taken out since are dropped lazily."""


class FairLine(Generic[Q]):
    """Orders waiting for a slot, served by priority, then weighted fair share, then within a
    tenant by ``order_key`` (arrival when none)."""

    def __init__(self, high: int, weight_of: Callable[[str], float] = lambda tenant: 1.0,
                 order_key: Callable[[Q], float] | None = None,
                 held_of: Callable[[str], int] | None = None, slots: int | None = None) -> None:
        """``high``: the high mark (>= 1). ``weight_of(tenant)``: its share (> 0). ``order_key``:
        what orders one tenant's waiting orders (the dispatcher's: acceptance time); ties, and
        every order without a key, go by arrival here. ``held_of(tenant)``: the slots its jobs
        hold at the provider now (the dispatcher's pool), and ``slots`` how many the line hands
        out: a tenant short of its share's whole slots is served first. None: turns alone decide."""
        if isinstance(high, bool) or not isinstance(high, int) or high < 1:
            raise ConfigError(f"a line's high mark must be an integer >= 1, got {high!r}")
        self.high = high
        self.low = high - max(1, high // 20) if high > 1 else 0
        """Fetch again once the line has drained to here: close to ``high``, so that a tenant
        arriving behind a burst is read (and interleaved) soon, not after half the window."""
        self._weight_of = weight_of
        self._order_key = order_key
        self._held_of = held_of
        self._slots = slots
        self._heap: list[tuple[_Tag, _Klass]] = []
        """Each class's first turn (and stale ones, dropped lazily): which class is served next."""
        self._classes: dict[_Klass, _Class] = {}
        self._items: dict[str, tuple[_Klass, _Entry, Q]] = {}
        self._virtual: dict[int, float] = {}
        """Per priority rank: the start tag of the last order served (``V``)."""
        self._finish: dict[_Klass, float] = {}
        """Per (rank, tenant): where that tenant's next order starts at the earliest (``F``)."""
        self._seq = itertools.count()
        self._paused = False

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._items

    @property
    def paused(self) -> bool:
        """Whether the line reached its high mark and has not yet drained to its low mark."""
        return self._paused

    def push(self, item: Q) -> bool:
        """Queue ``item`` (replacing a waiting order of the same job); True while the line is at or
        above its high mark (pause fetching, or stay paused)."""
        self.take(item.job_id)
        rank = priority_rank(item.priority)
        klass = (rank, item.tenant)
        virtual = self._virtual.get(rank, 0.0)
        start = max(virtual, self._finish.get(klass, virtual))
        weight = self._weight_of(item.tenant)
        self._finish[klass] = start + 1.0 / (weight if weight > 0 else 1.0)
        seq = next(self._seq)
        key = self._order_key(item) if self._order_key is not None else 0.0
        self._put(klass, _Tag(rank, start, seq), (key, seq, item.job_id), item, front=False)
        if len(self._items) >= self.high:
            self._paused = True
            return True
        return False

    def push_front(self, item: Q) -> None:
        """Put back an order that was popped but could not go after all: the next turn of its
        class is its (and the class serves it first, unless an order of its tenant with a
        smaller key came meanwhile)."""
        self.take(item.job_id)
        rank = priority_rank(item.priority)
        seq = -1 - next(self._seq)
        key = self._order_key(item) if self._order_key is not None else 0.0
        self._put((rank, item.tenant), _Tag(rank, self._virtual.get(rank, 0.0), seq), (key, seq, item.job_id),
                  item, front=True)

    def _put(self, klass: _Klass, tag: _Tag, entry: _Entry, item: Q, *, front: bool) -> None:
        klass_line = self._classes.get(klass)
        if klass_line is None:
            klass_line = self._classes[klass] = _Class()
        if front:
            klass_line.tags.appendleft(tag)
        else:
            klass_line.tags.append(tag)
        if klass_line.tags[0] is tag:
            heapq.heappush(self._heap, (tag, klass))
        heapq.heappush(klass_line.entries, entry)
        self._items[item.job_id] = (klass, entry, item)
        if len(klass_line.entries) > 2 * len(klass_line.tags) + 64:  # entries left by take: drop them now
            klass_line.entries = [held[1] for held in self._items.values() if held[0] == klass]
            heapq.heapify(klass_line.entries)
        if len(self._heap) > 2 * len(self._classes) + 64:
            self._heap = [(line.tags[0], k) for k, line in self._classes.items()]
            heapq.heapify(self._heap)

    def _head(self) -> tuple[_Tag, _Klass] | None:
        heap, classes = self._heap, self._classes
        while heap:
            tag, klass = heap[0]
            line = classes.get(klass)
            if line is not None and line.tags and line.tags[0] == tag:
                return tag, klass
            heapq.heappop(heap)  # served, or its class emptied, since: lazily dropped here
        return None

    def _first(self, line: _Class) -> _Entry:
        """The class's first live entry (dropping dead ones on the way)."""
        entries, items = line.entries, self._items
        while True:
            entry = entries[0]
            held = items.get(entry[2])
            if held is not None and held[1] == entry:
                return entry
            heapq.heappop(entries)

    def _choose(self) -> tuple[_Tag, _Klass] | None:
        """The class served next: of the highest priority waiting, a tenant short of its share's
        whole slots (the fewest held for its weight first), else the smallest turn (the head)."""
        head = self._head()
        if head is None or self._held_of is None or self._slots is None or len(self._classes) == 1:
            return head
        rank, held_of, weight_of = head[0].rank, self._held_of, self._weight_of
        rivals = [(klass, line) for klass, line in self._classes.items() if klass[0] == rank]
        if len(rivals) == 1:
            return head
        owed = whole_shares(self._slots, {klass[1]: weight_of(klass[1]) or 1.0 for klass, _ in rivals})
        best: tuple[_Tag, _Klass] | None = None
        best_key: tuple[float, _Tag] | None = None
        for klass, line in rivals:
            tenant = klass[1]
            held = held_of(tenant)
            if held < owed[tenant]:
                key = (held / (weight_of(tenant) or 1.0), line.tags[0])
                if best_key is None or key < best_key:
                    best, best_key = (line.tags[0], klass), key
        return head if best is None else best

    def peek(self) -> Q | None:
        head = self._choose()
        if head is None:
            return None
        return self._items[self._first(self._classes[head[1]])[2]][2]

    def pop(self) -> Q | None:
        head = self._choose()
        if head is None:
            return None
        tag, klass = head
        if self._heap[0] == head:
            heapq.heappop(self._heap)
        # else: the class's heap entry is left stale (its first turn is gone) and dropped lazily.
        line = self._classes[klass]
        line.tags.popleft()
        entry = self._first(line)
        heapq.heappop(line.entries)
        _, _, item = self._items.pop(entry[2])
        if line.tags:
            heapq.heappush(self._heap, (line.tags[0], klass))
        else:
            del self._classes[klass]
        if len(self._heap) > 2 * len(self._classes) + 64:  # stale entries left by the rule above
            self._heap = [(held.tags[0], k) for k, held in self._classes.items()]
            heapq.heapify(self._heap)
        if tag.start > self._virtual.get(tag.rank, 0.0):
            self._virtual[tag.rank] = tag.start
        if not self._items:
            self._compact()
        return item

    def _compact(self) -> None:
        # An empty line forgets every tenant's finish tag: nobody is owed a turn any more, and
        # the tables of tenants seen once do not grow forever.
        self._heap.clear()
        self._classes.clear()
        self._finish.clear()
        self._virtual.clear()

    def resume_due(self) -> bool:
        """True once per pause, when the line has drained to its low mark."""
        if self._paused and len(self._items) <= self.low:
            self._paused = False
            return True
        return False

    def remove(self, doomed: Callable[[Q], bool]) -> list[Q]:
        """Take out every order ``doomed`` says so of (e.g. a cancelled job's); return them. Call
        ``resume_due`` afterwards, as after ``pop``."""
        gone = [job_id for job_id, (_, _, item) in self._items.items() if doomed(item)]
        return [item for job_id in gone if (item := self.take(job_id)) is not None]

    def take(self, job_id: str) -> Q | None:
        """Take out the order of ``job_id``, if it waits here. Its class gives up its last turn:
        the orders behind it move up to the turns before, and its tenant's next order starts at
        that turn again, as if the order taken out had never come."""
        held = self._items.pop(job_id, None)
        if held is None:
            return None
        klass = held[0]
        line = self._classes[klass]
        last = line.tags.pop()
        # Give the turn back to the tenant's finish tag too: with it kept, a tenant whose 50 waiting
        # orders were cancelled (or spilled, or expired) would start its next one 50 turns on, behind
        # every other tenant's backlog. Only ever lowered (a put-back turn's start is ``V`` then,
        # which may be past the finish); the next push starts at ``V`` at the earliest anyway.
        self._finish[klass] = min(self._finish.get(klass, last.start), last.start)
        if not line.tags:
            del self._classes[klass]
        if not self._items:
            self._compact()
        return held[2]

    def clear(self) -> list[Q]:
        """Forget every waiting order (their partition was revoked); return them, served order first."""
        items = self.in_order()
        self._items.clear()
        self._compact()
        self._paused = False
        return items

    def in_order(self) -> list[Q]:
        """The waiting orders in the order they would be served (O(n log n): tests and reports)."""
        by_class: dict[_Klass, list[_Entry]] = {}
        for klass, entry, _ in self._items.values():
            by_class.setdefault(klass, []).append(entry)
        turns: list[tuple[_Tag, _Entry]] = []
        for klass, line in self._classes.items():
            turns.extend(zip(line.tags, sorted(by_class[klass]), strict=True))
        return [self._items[entry[2]][2] for _, entry in sorted(turns)]


@dataclass(frozen=True)
class ClassLoad:
    """How many orders of one (priority, tenant) class wait at a provider."""

    priority: str
    tenant: str
    waiting: int


def whole_shares(slots: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Per tenant, the whole slots of its share of ``slots`` by ``weights`` (rounded down)."""
    total = sum(weights.values())
    return {t: int(slots * w / total + 1e-9) for t, w in weights.items()} if total > 0 else dict.fromkeys(weights, 0)


def position_estimate(priority: str, tenant: str, index: int, classes: Iterable[ClassLoad],
                      weight_of: Callable[[str], float] = lambda tenant: 1.0, *,
                      held: Mapping[str, int] | None = None, limit: int | None = None) -> int:
    """How many waiting orders are served before the order ``index`` (0: the first) of its
    tenant's waiting orders in class ``priority``, by ``FairLine``'s rule: every order of a higher
    class, and of each other tenant of the same class the orders served first. While both wait,
    tenant ``t`` is served ``weight(t) / weight(mine)`` orders for each one of mine, but never more
    than it has waiting; with ``held`` (the slots each tenant's jobs hold at the provider) and the
    provider's ``limit``, a tenant holding less than its share's whole slots (``limit`` split by
    weight among the tenants waiting in the class, rounded down: the slots of a tenant that no
    longer waits come back to them as its jobs end) is first served that deficit."""
    mine = priority_rank(priority)
    my_weight = weight_of(tenant) or 1.0
    loads = list(classes)
    rivals = [load for load in loads if priority_rank(load.priority) == mine and load.tenant != tenant]
    deficit: dict[str, float] = {}
    if held is not None and limit:
        competing = {tenant, *(load.tenant for load in rivals)}
        owed = whole_shares(limit, {t: weight_of(t) or 1.0 for t in competing})
        deficit = {t: float(max(0, owed[t] - held.get(t, 0))) for t in competing}
    mine_owed = deficit.get(tenant, 0.0)
    ahead = index
    for load in loads:
        if priority_rank(load.priority) < mine:
            ahead += load.waiting
    for load in rivals:
        # Fair turns before mine: the rival's deficit first, then orders of `load.tenant` with
        # start tag below my order's (index / my_weight) once my own deficit is served, i.e. the
        # first index * w / my_w + (ties served by arrival: count half a turn) of them.
        share = deficit.get(load.tenant, 0.0) + (index - mine_owed + 0.5) * (weight_of(load.tenant) or 1.0) / my_weight
        ahead += min(load.waiting, max(0, int(share)))
    return ahead


__all__ = ["PRIORITY_RANK", "ClassLoad", "FairLine", "Queued", "position_estimate", "priority_rank", "whole_shares"]
