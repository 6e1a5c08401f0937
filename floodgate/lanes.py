"""Lanes: what keeps one destination's slow or failing work from holding up everyone else's.

A destination is whatever fails or hangs as one: a webhook receiver's ``host:port``, a push
platform, the host a provider serves its videos from. Each has a lane (:class:`Destinations`,
pure; :class:`Lanes` awaits it):

* at most ``per_destination`` attempts at once, well under the service's global cap, while the
  attempts in flight over all destinations are ``burst_until`` or more: a destination that accepts
  connections and never answers holds only its lane's slots while its attempts time out, instead
  of all of them (one global first-come-first-served queue let a black hole with a few hundred
  records in flight delay a 1 ms receiver by whole timeouts). Below ``burst_until`` a lane may
  run past its cap, so a deployment whose work all goes to one destination is not held to a
  fraction of the service; the slots above ``burst_until`` stay free for the other destinations;
* a circuit breaker: after ``failure_threshold`` failed attempts in a row the destination gets one
  probe every ``open_for`` seconds until one succeeds; its work waits without an attempt and
  without a slot, and gives up when its retry budget is spent, as it would have after its
  attempts;
* a count of the records it holds, so the service can tell records of many destinations from
  one destination's backlog (``overflow``: what it holds beyond its ``share``), which only that
  destination is waiting on and which must not pause the fetching of everyone's records
  (:func:`fetch_room`); and a bound on that count (``most``: half of the service's
  ``max_held``, the webhooks' ``max_per_destination``, the copier's ``max_per_host``), so one
  destination never holds all of the memory that bounds the fetch. At its bound, while its
  breaker is open, its new records are given up on at once (``sheds``) with what a spent retry
  budget leaves (a dead letter, a copy recorded as given up); while its breaker is closed it is
  taking them, however slowly, and the fetch waits for it (``fetch_waits``) rather than give up
  records it would take, until it is under its bound again or its breaker opens (the service
  wakes its fetch from :class:`Lanes`' ``on_open``: no record ends then).

Used by the outgoing webhooks and pushes (:mod:`floodgate.notify.delivery`) and the video copier
(:mod:`floodgate.videos.copier`): services that may not import each other, so the rules live here,
below both.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from floodgate.errors import ConfigError
from floodgate.netguard import canonical_host

log = logging.getLogger(__name__)

Verdict = Literal["delivered", "failed", "neutral"]
"""What an attempt says about its destination: it took the delivery (or served the copy); it
failed in a way that blames it (a retriable error: timeout, refused connection, 5xx, 429); or
neither (a permanent refusal answered at once, our own bug or our own store's, a cancelled
attempt)."""

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_OPEN_FOR = 30.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """A slot of ``destination``'s lane, from :meth:`Destinations.start`; hand it back to ``finish``."""

    destination: str
    probe: bool
    """The one attempt let through while the breaker is open: its verdict closes or reopens it."""


@dataclass(slots=True)
class _Lane:
    deliveries: int = 0
    attempts: int = 0
    failures: int = 0  # failed attempts in a row
    open_until: float | None = None  # breaker open until then; past it, half-open (one probe at a time)
    probing: bool = False

    def blank(self) -> bool:
        return not (self.deliveries or self.attempts or self.failures or self.open_until is not None)


class Destinations:
    """Per destination: attempts in flight against ``per_destination``, a circuit breaker, and the
    deliveries held (``enter``/``leave``) against ``share``. Pure: the caller passes ``now``.

    Raises ``ConfigError`` unless ``per_destination``, ``share``, ``failure_threshold`` and
    ``most`` (when given) are at least 1 and ``open_for`` is positive.
    """

    def __init__(self, per_destination: int, share: int, *, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
                 open_for: float = DEFAULT_OPEN_FOR, burst_until: int = 0, most: int | None = None) -> None:
        """``burst_until``: while fewer attempts than this are in flight over all destinations, a
        lane may run past ``per_destination`` (0: never). ``most``: the deliveries a destination
        holds before it is ``full`` (None: no bound)."""
        if per_destination < 1 or share < 1 or failure_threshold < 1 or (most is not None and most < 1):
            raise ConfigError("per_destination, share, failure_threshold and most must be at least 1")
        if not open_for > 0:
            raise ConfigError("open_for must be positive")
        self.per_destination = per_destination
        self.burst_until = burst_until
        self._in_flight = 0
        self.share = share
        self.failure_threshold = failure_threshold
        self.open_for = open_for
        self.most = most
        self._lanes: dict[str, _Lane] = {}
        self._overflow = 0
        self._open = 0
        self._full: set[str] = set()
        """Destinations holding ``most`` deliveries or more: a few at most (each holds that many)."""

    # --- deliveries held ----------------------------------------------------------------------
    def enter(self, destination: str) -> None:
        """A delivery (or copy) for ``destination`` begins (held until ``leave``, backoffs included)."""
        lane = self._lanes.setdefault(destination, _Lane())
        lane.deliveries += 1
        if lane.deliveries > self.share:
            self._overflow += 1
        if self.most is not None and lane.deliveries >= self.most:
            self._full.add(destination)

    def leave(self, destination: str) -> None:
        """A delivery to ``destination`` ended. The last one takes the lane, breaker and all, with
        it: nothing is left to protect, and a destination that comes back starts afresh."""
        lane = self._lanes.get(destination)
        if lane is None or lane.deliveries == 0:
            raise ValueError(f"no delivery to {destination!r} to leave")
        if lane.deliveries > self.share:
            self._overflow -= 1
        lane.deliveries -= 1
        if self.most is None or lane.deliveries < self.most:
            self._full.discard(destination)
        if lane.deliveries == 0 and lane.attempts == 0:
            if lane.open_until is not None:
                self._open -= 1
            del self._lanes[destination]

    @property
    def overflow(self) -> int:
        """Deliveries held beyond their destination's ``share``, summed over destinations."""
        return self._overflow

    def held(self, destination: str) -> int:
        lane = self._lanes.get(destination)
        return 0 if lane is None else lane.deliveries

    def full(self, destination: str) -> bool:
        """Whether ``destination`` holds its ``most`` deliveries (never without a bound)."""
        return destination in self._full

    def waits(self, destination: str) -> bool:
        """Whether a new delivery for ``destination`` is to wait before it is held: it is ``full``
        and its breaker is closed, so its deliveries are being made, however slowly."""
        return destination in self._full and not self.is_open(destination)

    def sheds(self, destination: str) -> bool:
        """Whether a new delivery for ``destination`` is to be given up on at once, without being
        held: it is ``full`` and its breaker is open, so the delivery would wait without an attempt
        and give up with its retry budget, holding memory the others' deliveries need meanwhile."""
        return destination in self._full and self.is_open(destination)

    @property
    def fetch_waits(self) -> bool:
        """Whether the fetch is to wait: a destination is ``full`` with its breaker closed, so its
        deliveries are being made, however slowly; waiting for it until it has room again (or its
        breaker opens) keeps it within its bound without giving up deliveries it would take.
        Only ``leave`` and a breaker opening in ``finish`` turn it false."""
        return any(self.waits(destination) for destination in self._full)

    # --- attempts -----------------------------------------------------------------------------
    def in_flight(self, destination: str) -> int:
        lane = self._lanes.get(destination)
        return 0 if lane is None else lane.attempts

    def is_open(self, destination: str) -> bool:
        """Whether the breaker is open or half-open (attempts only as probes)."""
        lane = self._lanes.get(destination)
        return lane is not None and lane.open_until is not None

    @property
    def open_breakers(self) -> int:
        """Destinations whose breaker is open or half-open now (kept as a count, not computed, so
        a metrics scrape reads one number however many destinations there are)."""
        return self._open

    def start(self, destination: str, now: float) -> Attempt | None:
        """Take a slot for an attempt at ``now``, or None: the lane is full, or its breaker is open
        (or half-open with its probe under way)."""
        lane = self._lanes.setdefault(destination, _Lane())
        if lane.attempts >= self.per_destination and self._in_flight >= self.burst_until:
            return None
        probe = False
        if lane.open_until is not None:
            if lane.probing or now < lane.open_until:
                return None
            lane.probing = probe = True
        lane.attempts += 1
        self._in_flight += 1
        return Attempt(destination, probe)

    def finish(self, attempt: Attempt, now: float, verdict: Verdict) -> bool:
        """Give ``attempt``'s slot back with what it showed; True if this opened the breaker."""
        lane = self._lanes.get(attempt.destination)
        if lane is None or lane.attempts == 0:
            raise ValueError(f"no attempt to {attempt.destination!r} in flight")
        lane.attempts -= 1
        self._in_flight -= 1
        opened = False
        if attempt.probe:
            lane.probing = False
            if verdict == "delivered":
                lane.failures, lane.open_until = 0, None
                self._open -= 1
            elif verdict == "failed":
                lane.open_until = now + self.open_for
            # neutral: still half-open, the next attempt is the probe
        elif lane.open_until is None:
            if verdict == "delivered":
                lane.failures = 0
            elif verdict == "failed":
                lane.failures += 1
                if lane.failures >= self.failure_threshold:
                    lane.open_until, opened = now + self.open_for, True
                    self._open += 1
        # else: an attempt sent before the breaker opened; its answer is older than the failures
        # that opened it and proves nothing either way.
        if lane.blank():
            del self._lanes[attempt.destination]
        return opened

    def reopens_in(self, destination: str, now: float) -> float | None:
        """Seconds until the breaker lets a probe try; None when what to wait for is an attempt
        ending (breaker closed, half-open with a probe or a full lane under way)."""
        lane = self._lanes.get(destination)
        if lane is None or lane.open_until is None or lane.probing or lane.open_until <= now:
            return None
        return lane.open_until - now


class Lanes:
    """:class:`Destinations`, awaited: ``acquire`` waits, in arrival order per destination, for a
    slot of its lane; ``release`` hands the slot to the next in line. ``close`` (the service is
    stopping) sends every waiter away empty-handed. ``on_open`` is called (no arguments: a metric
    counts openings by service, never by destination) each time a breaker opens."""

    def __init__(self, rules: Destinations, *, clock: Callable[[], float] = time.monotonic,
                 on_open: Callable[[], None] | None = None) -> None:
        self.rules = rules
        self._clock = clock
        self._on_open = on_open
        self._queues: dict[str, deque[asyncio.Future[Attempt | None]]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def waiting(self, destination: str) -> int:
        """Deliveries in line for a slot of ``destination``'s lane."""
        return sum(not slot.done() for slot in self._queues.get(destination, ()))

    async def acquire(self, destination: str, timeout: float) -> Attempt | None:
        """A slot of ``destination``'s lane; None when ``timeout`` seconds pass first or the lanes
        close. A free slot is taken even when ``timeout`` is spent."""
        if self._closed:
            return None
        queue = self._queues.setdefault(destination, deque())
        slot: asyncio.Future[Attempt | None] = asyncio.get_running_loop().create_future()
        queue.append(slot)
        deadline = self._clock() + timeout
        try:
            self._hand_over(destination)
            while not slot.done():
                now = self._clock()
                if now >= deadline:
                    return None
                reopens = self.rules.reopens_in(destination, now)
                await asyncio.wait((slot,), timeout=deadline - now if reopens is None else min(deadline - now, reopens))
                if not slot.done():
                    self._hand_over(destination)  # the breaker may let a probe through by now
            return slot.result()
        except BaseException:
            # Cancelled just after a slot was handed over: give it back, or the lane stays one short.
            if slot.done() and not slot.cancelled() and (attempt := slot.result()) is not None:
                self.release(attempt, "neutral")
            raise
        finally:
            if not slot.done():
                slot.cancel()  # left in the queue; skipped when it reaches the head
            while queue and queue[0].done():
                queue.popleft()
            if not queue and self._queues.get(destination) is queue:
                del self._queues[destination]

    def release(self, attempt: Attempt, verdict: Verdict) -> None:
        if self.rules.finish(attempt, self._clock(), verdict):
            log.warning("destination %s failed %d attempts in a row: one attempt every %.0fs until one succeeds",
                        attempt.destination, self.rules.failure_threshold, self.rules.open_for)
            if self._on_open is not None:
                self._on_open()
        self._hand_over(attempt.destination)
        if self.rules.burst_until:
            # The slot freed may be what another lane, past its own cap, waits for (a burst).
            for destination in [d for d in self._queues if d != attempt.destination]:
                self._hand_over(destination)

    def close(self) -> None:
        self._closed = True
        for queue in self._queues.values():
            for slot in queue:
                if not slot.done():
                    slot.set_result(None)
        self._queues.clear()

    def _hand_over(self, destination: str) -> None:
        queue = self._queues.get(destination)
        if not queue:
            return
        now = self._clock()
        while queue:
            if queue[0].done():
                queue.popleft()
                continue
            attempt = self.rules.start(destination, now)
            if attempt is None:
                return
            queue.popleft().set_result(attempt)


def url_destination(url: str) -> str:
    """The lane of a URL: its host (as a connector resolves it) and port, e.g.
    ``hooks.example.com:443``; every path on one server shares it. A URL that does not parse is a
    lane of its own (its request fails at once)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    host = canonical_host(parts.hostname or "")
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return f"{host}:{port}"


def fetch_room(held: int, overflow: int, max_pending: int, max_held: int) -> int:
    """How many more records to fetch: ``held`` records are in memory, ``overflow`` of them beyond
    their destination's share. Those count toward ``max_held`` only, so one destination's backlog
    never pauses the fetching of the others' records; ``max_held`` still bounds the memory."""
    return min(max_pending - (held - overflow), max_held - held)


__all__ = ["DEFAULT_FAILURE_THRESHOLD", "DEFAULT_OPEN_FOR", "Attempt", "Destinations", "Lanes", "Verdict",
           "fetch_room", "url_destination"]
