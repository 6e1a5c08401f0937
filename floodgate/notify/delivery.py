"""One notification, attempted until it is delivered, fails for good, or runs out of retries, in
the lane of its destination.

The schedule is :class:`RetryPolicy`'s; the error decides whether to retry (``retriable``,
``retry_after``), never its type. Waiting is injected so the service can cut a backoff short
when it stops, and tests can run without real time passing.

Each destination (a webhook receiver's ``host:port``, a push platform) has a lane
(:mod:`floodgate.lanes`, shared with the video copier: per-destination attempts with a burst, a
circuit breaker, and the deliveries it holds), so one destination's black hole never holds up
the deliveries to the others. A delivery waiting out a backoff or waiting for its lane holds no
slot; the global slot is taken only around the attempt itself, after the lane's.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from connectors.notifiers.base import Notification, Notifier
from floodgate.errors import NotificationError
from floodgate.lanes import DEFAULT_FAILURE_THRESHOLD, DEFAULT_OPEN_FOR, Attempt, Destinations, Lanes, Verdict
from floodgate.notify.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class Outcome:
    attempts: int
    error: Exception | None
    """``None`` when delivered; else the last attempt's error."""
    abandoned: bool = False
    """The wait before a retry was interrupted (the service is stopping)."""


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
