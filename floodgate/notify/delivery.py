"""One notification, attempted until it is delivered, fails for good, or runs out of retries; and the
lanes that keep one destination's deliveries from holding up everyone else's.

The schedule is :class:`RetryPolicy`'s; the error decides whether to retry (``retriable``,
``retry_after``), never its type. Waiting is injected so the service can cut a backoff short
when it stops, and tests can run without real time passing.

Each destination (a webhook receiver's ``host:port``, a push platform) has a lane
(:class:`Destinations`, pure; :class:`Lanes` awaits it):

* at most ``per_destination`` attempts at once, well under the service's global cap, while the
  attempts in flight over all destinations are ``burst_until`` or more: a receiver that accepts
  connections and never answers holds only its lane's slots while its attempts time out, instead
  of all of them (one global first-come-first-served queue let a black hole with a few hundred
  results in flight delay a 1 ms receiver by whole timeouts). Below ``burst_until`` a lane may
  run past its cap, so a deployment whose results all go to one receiver is not held to a
  fraction of the service; the slots above ``burst_until`` stay free for the other destinations;
* a circuit breaker: after ``failure_threshold`` failed attempts in a row the destination gets one
  probe every ``open_for`` seconds until one succeeds; its deliveries wait without an attempt and
  without a slot, and give up when their retry budget is spent, as they would have after their
  attempts;
* a count of the deliveries it holds, so the service can tell records of many destinations from
  one destination's backlog (``overflow``: what it holds beyond its ``share``), which only that
  destination is waiting on and which must not pause the fetching of everyone's results.

A delivery waiting out a backoff or waiting for its lane holds no slot; the global slot is taken
only around the attempt itself, after the lane's.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from connectors.notifiers.base import Notification, Notifier
from floodgate.errors import ConfigError, NotificationError
from floodgate.notify.retry import RetryPolicy

log = logging.getLogger(__name__)

Verdict = Literal["delivered", "failed", "neutral"]
"""What an attempt says about its destination: it took the delivery; it failed in a way that
blames it (a retriable error: timeout, refused connection, 5xx, 429); or neither (a permanent
refusal answered at once, our own bug, a cancelled attempt)."""

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_OPEN_FOR = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    attempts: int
    error: Exception | None
    """``None`` when delivered; else the last attempt's error."""
    abandoned: bool = False
    """The wait before a retry was interrupted (the service is stopping)."""


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

    Raises ``ConfigError`` unless ``per_destination``, ``share`` and ``failure_threshold`` are at
    least 1 and ``open_for`` is positive.
    """

    def __init__(self, per_destination: int, share: int, *, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
                 open_for: float = DEFAULT_OPEN_FOR, burst_until: int = 0) -> None:
        """``burst_until``: while fewer attempts than this are in flight over all destinations, a
        lane may run past ``per_destination`` (0: never)."""
        if per_destination < 1 or share < 1 or failure_threshold < 1:
            raise ConfigError("per_destination, share and failure_threshold must be at least 1")
        if not open_for > 0:
            raise ConfigError("open_for must be positive")
        self.per_destination = per_destination
        self.burst_until = burst_until
        self._in_flight = 0
        self.share = share
        self.failure_threshold = failure_threshold
        self.open_for = open_for
        self._lanes: dict[str, _Lane] = {}
        self._overflow = 0

    # --- deliveries held ----------------------------------------------------------------------
    def enter(self, destination: str) -> None:
        """A delivery to ``destination`` begins (held until ``leave``, backoffs included)."""
        lane = self._lanes.setdefault(destination, _Lane())
        lane.deliveries += 1
        if lane.deliveries > self.share:
            self._overflow += 1

    def leave(self, destination: str) -> None:
        """A delivery to ``destination`` ended. The last one takes the lane, breaker and all, with
        it: nothing is left to protect, and a destination that comes back starts afresh."""
        lane = self._lanes.get(destination)
        if lane is None or lane.deliveries == 0:
            raise ValueError(f"no delivery to {destination!r} to leave")
        if lane.deliveries > self.share:
            self._overflow -= 1
        lane.deliveries -= 1
        if lane.deliveries == 0 and lane.attempts == 0:
            del self._lanes[destination]

    @property
    def overflow(self) -> int:
        """Deliveries held beyond their destination's ``share``, summed over destinations."""
        return self._overflow

    def held(self, destination: str) -> int:
        lane = self._lanes.get(destination)
        return 0 if lane is None else lane.deliveries

    # --- attempts -----------------------------------------------------------------------------
    def in_flight(self, destination: str) -> int:
        lane = self._lanes.get(destination)
        return 0 if lane is None else lane.attempts

    def is_open(self, destination: str) -> bool:
        """Whether the breaker is open or half-open (attempts only as probes)."""
        lane = self._lanes.get(destination)
        return lane is not None and lane.open_until is not None

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
    stopping) sends every waiter away empty-handed."""

    def __init__(self, rules: Destinations, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
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


async def deliver(notifier: Notifier, notification: Notification, policy: RetryPolicy, *,
                  semaphore: asyncio.Semaphore, rand: Callable[[], float],
                  wait: Callable[[float], Awaitable[bool]],
                  clock: Callable[[], float] = time.monotonic,
                  lanes: Lanes | None = None, destination: str = "") -> Outcome:
    """Attempt delivery per ``policy``. ``wait(seconds)`` sleeps and returns True to abandon.

    With ``lanes``, each attempt first takes a slot of ``destination``'s lane, waiting at most
    until the retry budget (``max_elapsed`` since the start) is spent, then the global
    ``semaphore``. Neither is held during a backoff, so receivers that are down do not starve
    deliveries to healthy ones. The caller holds the destination (``lanes.rules.enter`` before,
    ``leave`` after) for the whole delivery, so its breaker outlives the backoffs.
    """
    started = clock()
    attempts = 0
    error: Exception | None = None
    while True:
        attempt: Attempt | None = None
        if lanes is not None:
            attempt = await lanes.acquire(destination, policy.max_elapsed - (clock() - started))
            if attempt is None:
                if lanes.closed:
                    return Outcome(attempts, error, abandoned=True)
                # Failing (its breaker open), or slower than its results arrive: either way the
                # budget that bounds how long an offset stays uncommitted is spent.
                return Outcome(attempts, error or NotificationError(
                    f"no attempt within the retry budget: {destination} is failing or slower than its results "
                    "arrive", retriable=True))
        attempts += 1
        verdict: Verdict = "neutral"
        try:
            async with semaphore:
                await notifier.send(notification)
            verdict = "delivered"
            return Outcome(attempts, None)
        except Exception as exc:  # the error's own flags decide; unknown ones are not retried
            error = exc
            if getattr(error, "retriable", False) is True:
                verdict = "failed"
        finally:
            if lanes is not None and attempt is not None:
                lanes.release(attempt, verdict)
        if getattr(error, "retriable", False) is not True:
            return Outcome(attempts, error)
        delay = policy.next_delay(attempts, clock() - started, getattr(error, "retry_after", None), rand())
        if delay is None:
            return Outcome(attempts, error)
        if await wait(delay):
            return Outcome(attempts, error, abandoned=True)


__all__ = ["DEFAULT_FAILURE_THRESHOLD", "DEFAULT_OPEN_FOR", "Attempt", "Destinations", "Lanes", "Outcome",
           "Verdict", "deliver"]
