"""Retry schedule (pure table) and the delivery loop with a scripted notifier and a fake clock."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.notifiers.base import Notification, NotificationError
from floodgate.errors import ConfigError
from floodgate.notify.delivery import Outcome, deliver
from floodgate.notify.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=8.0, max_elapsed=100.0)


@pytest.mark.parametrize(
    ("attempts", "elapsed", "retry_after", "rand", "expected"),
    [
        (1, 0.0, None, 0.0, 0.5),  # ceiling 1: [0.5, 1]
        (1, 0.0, None, 0.999, 0.9995),
        (2, 0.0, None, 0.0, 1.0),  # ceiling 2
        (3, 0.0, None, 1.0, 4.0),  # ceiling 4
        (4, 0.0, None, 0.5, 6.0),  # ceiling 8 (max_delay)
        (5, 0.0, None, 0.5, None),  # max_attempts reached
        (1, 0.0, 30.0, 0.0, 30.0),  # Retry-After beats a shorter backoff
        (3, 0.0, 0.1, 0.0, 2.0),  # ... but never shortens it
        (1, 99.8, None, 0.0, None),  # would start after max_elapsed
        (1, 0.0, 101.0, 0.0, None),  # Retry-After beyond the budget: give up now
    ],
)
def test_next_delay(attempts: int, elapsed: float, retry_after: float | None, rand: float,
                    expected: float | None) -> None:
    assert POLICY.next_delay(attempts, elapsed, retry_after, rand) == expected


@given(attempts=st.integers(1, 200), rand=st.floats(0, 1, exclude_max=True))
def test_delay_stays_within_half_ceiling_and_max_delay(attempts: int, rand: float) -> None:
    policy = RetryPolicy(max_attempts=1000, base_delay=0.25, max_delay=30.0, max_elapsed=1e9)
    delay = policy.next_delay(attempts, 0.0, None, rand)
    ceiling = min(30.0, 0.25 * 2 ** (attempts - 1))
    assert delay is not None and ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"base_delay": 0}, {"base_delay": 5, "max_delay": 1},
                                 {"max_elapsed": -1}])
def test_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


NOTE = Notification("job_1", 3, "acme", "completed", "kling-2.1", "kling", 1.0, "https://cdn.test/v.mp4", None,
                    1_700_000_000_000, 1_700_000_100_000, "https://hooks.test/x")


class Scripted:
    """Raises the scripted errors in order, then succeeds."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def send(self, notification: Notification) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def retriable(retry_after: float | None = None) -> NotificationError:
    return NotificationError("HTTP 503", retriable=True, retry_after=retry_after, status=503)


async def run(notifier: Scripted, time: FakeTime, policy: RetryPolicy = POLICY) -> Outcome:
    rands: Iterator[float] = iter([0.0] * 100)
    return await deliver(notifier, NOTE, policy, semaphore=asyncio.Semaphore(1), rand=lambda: next(rands),
                         wait=time.wait, clock=time.clock)


async def test_retries_then_delivers() -> None:
    time = FakeTime()
    outcome = await run(Scripted([retriable(), retriable(7.0)]), time)
    assert (outcome.attempts, outcome.error, outcome.abandoned) == (3, None, False)
    assert time.waits == [0.5, 7.0]  # the second wait honours Retry-After


async def test_permanent_error_is_not_retried() -> None:
    error = NotificationError("HTTP 404", retriable=False, status=404)
    outcome = await run(Scripted([error]), FakeTime())
    assert (outcome.attempts, outcome.error) == (1, error)


async def test_unknown_exception_is_not_retried() -> None:
    error = RuntimeError("bug")
    outcome = await run(Scripted([error]), FakeTime())
    assert (outcome.attempts, outcome.error) == (1, error)


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    errors: list[Exception] = [retriable() for _ in range(10)]
    notifier = Scripted(errors)
    outcome = await run(notifier, FakeTime())
    assert outcome.attempts == notifier.calls == POLICY.max_attempts
    assert isinstance(outcome.error, NotificationError) and outcome.error.retriable


async def test_stopping_during_backoff_abandons() -> None:
    async def stop_now(seconds: float) -> bool:
        return True

    outcome = await deliver(Scripted([retriable()]), NOTE, POLICY, semaphore=asyncio.Semaphore(1),
                            rand=lambda: 0.0, wait=stop_now)
    assert (outcome.attempts, outcome.abandoned) == (1, True)


async def test_backoff_does_not_hold_the_concurrency_slot() -> None:
    semaphore = asyncio.Semaphore(1)
    seen_free: list[bool] = []

    async def wait(seconds: float) -> bool:
        seen_free.append(not semaphore.locked())
        return False

    await deliver(Scripted([retriable()]), NOTE, POLICY, semaphore=semaphore, rand=lambda: 0.0, wait=wait)
    assert seen_free == [True]
