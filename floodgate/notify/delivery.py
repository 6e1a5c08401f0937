"""One notification, attempted until it is delivered, fails for good, or runs out of retries.

The schedule is :class:`RetryPolicy`'s; the error decides whether to retry (``retriable``,
``retry_after``), never its type. Waiting is injected so the service can cut a backoff short
when it stops, and tests can run without real time passing.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from connectors.notifiers.base import Notification, Notifier
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
                  clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Attempt delivery per ``policy``. ``wait(seconds)`` sleeps and returns True to abandon.

    The semaphore is held only during an attempt, not during backoff, so receivers that are
    down do not starve deliveries to healthy ones.
    """
    started = clock()
    attempts = 0
    while True:
        attempts += 1
        try:
            async with semaphore:
                await notifier.send(notification)
            return Outcome(attempts, None)
        except Exception as exc:  # the error's own flags decide; unknown ones are not retried
            error = exc
        if getattr(error, "retriable", False) is not True:
            return Outcome(attempts, error)
        delay = policy.next_delay(attempts, clock() - started, getattr(error, "retry_after", None), rand())
        if delay is None:
            return Outcome(attempts, error)
        if await wait(delay):
            return Outcome(attempts, error, abandoned=True)


__all__ = ["Outcome", "deliver"]
