"""Retry schedule (pure table), destination lanes (pure, then awaited) and the delivery loop with a
scripted notifier and a fake clock."""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.notifiers.base import Notification, NotificationError
from floodgate.errors import ConfigError
from floodgate.notify.delivery import Attempt, Destinations, Lanes, Outcome, Verdict, deliver
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


# --- destinations: one lane each (pure) ---------------------------------------------------------
def test_each_destination_has_its_own_attempt_cap() -> None:
    lanes = Destinations(per_destination=2, share=4)
    taken = [lanes.start("black-hole:443", 0.0) for _ in range(3)]
    assert [a is not None for a in taken] == [True, True, False]
    assert lanes.start("healthy:443", 0.0) is not None  # the full lane next door changes nothing here
    first = taken[0]
    assert first is not None
    lanes.finish(first, 1.0, "neutral")
    assert lanes.start("black-hole:443", 1.0) is not None and lanes.in_flight("black-hole:443") == 2


def test_a_destination_alone_runs_past_its_cap_but_never_into_the_reserve() -> None:
    """A deployment whose results all go to one receiver is not held to a fraction of the service;
    the slots above ``burst_until`` stay free for whoever comes next."""
    lanes = Destinations(per_destination=2, share=4, burst_until=6)
    taken = [lanes.start("only:443", 0.0) for _ in range(7)]
    assert [a is not None for a in taken] == [True] * 6 + [False]
    assert lanes.start("next:443", 0.0) is not None and lanes.start("next:443", 0.0) is not None
    assert lanes.start("next:443", 0.0) is None, "past the burst, each lane holds to its own cap"


def failing(lanes: Destinations, destination: str, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        attempt = lanes.start(destination, now)
        assert attempt is not None
        lanes.finish(attempt, now, "failed")


def test_breaker_opens_after_failures_in_a_row_only() -> None:
    lanes = Destinations(8, 8, failure_threshold=3, open_for=30.0)
    failing(lanes, "d", 2)
    ok = lanes.start("d", 0.0)
    assert ok is not None
    lanes.finish(ok, 0.0, "delivered")  # a success starts the count again
    failing(lanes, "d", 2)
    neutral = lanes.start("d", 0.0)
    assert neutral is not None
    lanes.finish(neutral, 0.0, "neutral")  # a 404 answered at once blames nobody
    assert not lanes.is_open("d")
    attempt = lanes.start("d", 5.0)
    assert attempt is not None
    assert lanes.finish(attempt, 5.0, "failed") is True
    assert lanes.is_open("d") and lanes.start("d", 34.9) is None
    assert lanes.reopens_in("d", 5.0) == 30.0


@pytest.mark.parametrize(("verdict", "open_after", "next_probe_at"), [
    ("delivered", False, None),  # closed: everyone goes
    ("failed", True, 71.0),  # open again for open_for from the probe's end
    ("neutral", True, 41.0),  # still half-open: the next attempt is the probe
])
def test_one_probe_at_a_time_decides(verdict: Verdict, open_after: bool, next_probe_at: float | None) -> None:
    lanes = Destinations(8, 8, failure_threshold=1, open_for=30.0)
    failing(lanes, "d", 1, now=10.0)
    assert lanes.start("d", 39.9) is None
    probe = lanes.start("d", 40.0)
    assert probe is not None and probe.probe
    assert lanes.start("d", 40.0) is None and lanes.reopens_in("d", 40.0) is None  # wait for the probe
    lanes.finish(probe, 41.0, verdict)
    assert lanes.is_open("d") is open_after
    if next_probe_at is None:
        assert [lanes.start("d", 41.0) is not None for _ in range(3)] == [True] * 3
    else:
        if next_probe_at > 41.0:
            assert lanes.start("d", next_probe_at - 0.1) is None
        again = lanes.start("d", next_probe_at)
        assert again is not None and again.probe
        assert lanes.start("d", next_probe_at) is None


def test_answers_from_before_the_breaker_opened_change_nothing() -> None:
    lanes = Destinations(8, 8, failure_threshold=2, open_for=30.0)
    early = [lanes.start("d", 0.0) for _ in range(3)]
    assert all(a is not None for a in early)
    for attempt in early[:2]:
        assert attempt is not None
        lanes.finish(attempt, 1.0, "failed")
    assert lanes.is_open("d")
    late = early[2]
    assert late is not None
    lanes.finish(late, 2.0, "delivered")
    assert lanes.is_open("d") and lanes.reopens_in("d", 2.0) == 29.0


def test_the_last_delivery_takes_the_lane_with_it() -> None:
    lanes = Destinations(8, 8, failure_threshold=1, open_for=30.0)
    lanes.enter("d")
    failing(lanes, "d", 1)
    assert lanes.is_open("d") and lanes.open_breakers == 1  # kept across the delivery's backoff
    lanes.leave("d")
    assert not lanes.is_open("d") and lanes.held("d") == 0 and lanes.open_breakers == 0
    with pytest.raises(ValueError):
        lanes.leave("d")


@given(st.lists(st.tuples(st.sampled_from("ab"),
                          st.sampled_from(["enter", "leave", "start", "delivered", "failed", "neutral"])),
                max_size=300))
def test_open_breakers_is_the_count_of_lanes_whose_breaker_is_open(steps: list[tuple[str, str]]) -> None:
    """The number the breaker gauge reports, kept as a count: it matches the lanes' own state after
    any mix of deliveries held and let go, attempts, verdicts and probes."""
    lanes = Destinations(2, 2, failure_threshold=2, open_for=10.0)
    held = dict.fromkeys("ab", 0)
    running: dict[str, list[Attempt]] = {d: [] for d in "ab"}
    for turn, (destination, step) in enumerate(steps):
        now = turn * 3.0  # a probe is due every few turns
        if step == "enter":
            lanes.enter(destination)
            held[destination] += 1
        elif step == "leave":
            if held[destination]:
                lanes.leave(destination)
                held[destination] -= 1
        elif step == "start":
            attempt = lanes.start(destination, now)
            if attempt is not None:
                running[destination].append(attempt)
        elif running[destination]:
            lanes.finish(running[destination].pop(0), now, cast(Verdict, step))
        assert lanes.open_breakers == sum(lanes.is_open(d) for d in "ab")


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=200), st.integers(1, 5))
def test_overflow_is_what_each_destination_holds_beyond_its_share(steps: list[tuple[str, bool]], share: int) -> None:
    lanes = Destinations(4, share)
    held = dict.fromkeys("abc", 0)
    for destination, entering in steps:
        if entering:
            lanes.enter(destination)
            held[destination] += 1
        elif held[destination]:
            lanes.leave(destination)
            held[destination] -= 1
        assert lanes.overflow == sum(max(0, n - share) for n in held.values())
        assert all(lanes.held(d) == n for d, n in held.items())


@pytest.mark.parametrize("bad", [{"per_destination": 0}, {"share": 0}, {"failure_threshold": 0}, {"open_for": 0.0}])
def test_destinations_reject_nonsense(bad: dict[str, float]) -> None:
    args: dict[str, float] = {"per_destination": 1, "share": 1} | bad
    with pytest.raises(ConfigError):
        Destinations(**args)  # type: ignore[arg-type]


# --- lanes, awaited -----------------------------------------------------------------------------
async def until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Let the other tasks run until ``condition`` holds; fails after ``turns`` turns of the loop."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_lanes_tell_each_opening_of_a_breaker_once() -> None:
    opened: list[None] = []
    lanes = Lanes(Destinations(8, 8, failure_threshold=2, open_for=30.0), on_open=lambda: opened.append(None))
    attempts = [await lanes.acquire("d", 1.0) for _ in range(3)]
    for attempt in attempts:  # the third answered after the second opened the breaker: no news
        assert attempt is not None
        lanes.release(attempt, "failed")
    assert len(opened) == 1 and lanes.rules.open_breakers == 1
    failed = await lanes.acquire("e", 1.0)
    assert failed is not None
    lanes.release(failed, "failed")
    assert len(opened) == 1 and lanes.rules.open_breakers == 1  # one failure is not enough


async def test_a_freed_slot_goes_to_the_first_in_line() -> None:
    lanes = Lanes(Destinations(1, 8))
    first = await lanes.acquire("d", 60.0)
    assert first is not None
    waiting = [asyncio.create_task(lanes.acquire("d", 60.0)) for _ in range(3)]
    await until(lambda: lanes.waiting("d") == 3)  # in line in this order
    lanes.release(first, "delivered")
    got = await asyncio.wait_for(waiting[0], 5.0)
    assert got is not None and not waiting[1].done()
    lanes.close()
    assert await asyncio.wait_for(asyncio.gather(*waiting[1:]), 5.0) == [None, None]
    assert lanes.closed and await lanes.acquire("other", 60.0) is None


async def test_waiting_for_a_lane_ends_with_the_budget() -> None:
    lanes = Lanes(Destinations(1, 8))
    assert await lanes.acquire("d", 60.0) is not None
    assert await asyncio.wait_for(lanes.acquire("d", 0.01), 5.0) is None
    assert not lanes.closed


async def test_a_waiter_cancelled_after_the_hand_over_gives_the_slot_back() -> None:
    rules = Destinations(1, 8)
    lanes = Lanes(rules)
    held = await lanes.acquire("d", 60.0)
    assert held is not None
    waiter = asyncio.create_task(lanes.acquire("d", 60.0))
    await until(lambda: lanes.waiting("d") == 1)
    lanes.release(held, "delivered")  # handed to the waiter, which has not run yet ...
    waiter.cancel()  # ... and never will
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert rules.in_flight("d") == 0


async def test_a_slot_freed_by_one_lane_goes_to_another_lane_waiting_past_its_cap() -> None:
    lanes = Lanes(Destinations(1, 8, burst_until=2))
    first, second = await lanes.acquire("a", 60.0), await lanes.acquire("b", 60.0)
    assert first is not None and second is not None
    waiter = asyncio.create_task(lanes.acquire("b", 60.0))  # b is at its cap and the burst is used
    await until(lambda: lanes.waiting("b") == 1)
    lanes.release(first, "delivered")  # a's slot: below the burst again, so b may run a second
    got = await asyncio.wait_for(waiter, 5.0)
    assert got is not None and got.destination == "b"


# --- deliveries in lanes ------------------------------------------------------------------------
class BlackHole:
    """Accepts every attempt to ``hole`` and answers none until ``answer`` is set; others at once."""

    def __init__(self, hole: str) -> None:
        self.hole = hole
        self.answer = asyncio.Event()
        self.hanging = 0
        self.most_hanging = 0
        self.delivered: list[str] = []

    async def send(self, notification: Notification) -> None:
        if notification.webhook_url == self.hole:
            self.hanging += 1
            self.most_hanging = max(self.most_hanging, self.hanging)
            try:
                await self.answer.wait()
            finally:
                self.hanging -= 1
            raise NotificationError("webhook delivery failed: TimeoutError", retriable=True)
        self.delivered.append(notification.job_id)


async def test_a_black_hole_holds_only_its_lane_and_a_healthy_receiver_is_served_at_once() -> None:
    """The review's scenario, scaled down: 4 global slots, 40 results for a receiver that never
    answers. The healthy receiver's result goes out before any of the black hole's attempts ends."""
    hole, healthy = "https://hole.test/hook", "https://healthy.test/hook"
    notifier = BlackHole(hole)
    semaphore = asyncio.Semaphore(4)
    lanes = Lanes(Destinations(per_destination=1, share=4))

    async def one(job_id: str, url: str) -> Outcome:
        destination = url.split("/")[2]
        lanes.rules.enter(destination)
        try:
            return await deliver(notifier, dataclasses.replace(NOTE, job_id=job_id, webhook_url=url), POLICY,
                                 semaphore=semaphore, rand=lambda: 0.0, wait=FakeTime().wait, lanes=lanes,
                                 destination=destination)
        finally:
            lanes.rules.leave(destination)

    stuck = [asyncio.create_task(one(f"hole-{i}", hole)) for i in range(40)]
    await until(lambda: notifier.hanging == 1 and lanes.waiting("hole.test") == 39)  # all ahead of it
    outcome = await asyncio.wait_for(one("job-ok", healthy), 5.0)
    assert (outcome.attempts, outcome.error) == (1, None) and notifier.delivered == ["job-ok"]
    assert notifier.hanging == 1 and notifier.most_hanging == 1 and not any(t.done() for t in stuck)
    assert lanes.rules.held("hole.test") == 40 and lanes.rules.overflow == 36
    lanes.close()
    notifier.answer.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*stuck), 5.0)
    assert all(o.abandoned for o in outcomes) and lanes.rules.held("hole.test") == 0


async def test_waiting_for_the_lane_holds_no_global_slot() -> None:
    semaphore = asyncio.Semaphore(1)
    lanes = Lanes(Destinations(1, 8))
    busy = await lanes.acquire("hooks.test", 60.0)
    assert busy is not None
    waiting = asyncio.create_task(deliver(Scripted([]), NOTE, POLICY, semaphore=semaphore, rand=lambda: 0.0,
                                          wait=FakeTime().wait, lanes=lanes, destination="hooks.test"))
    await until(lambda: lanes.waiting("hooks.test") == 1)
    assert not semaphore.locked()
    lanes.release(busy, "delivered")
    assert (await asyncio.wait_for(waiting, 5.0)).error is None


async def test_a_destination_failing_every_attempt_is_tried_less_often() -> None:
    """With the breaker open the delivery waits without attempts and gives up with its budget."""
    policy = RetryPolicy(max_attempts=50, base_delay=0.001, max_delay=0.001, max_elapsed=0.05)
    notifier = Scripted([retriable() for _ in range(50)])
    lanes = Lanes(Destinations(8, 8, failure_threshold=3, open_for=60.0))
    lanes.rules.enter("hooks.test")
    outcome = await asyncio.wait_for(deliver(notifier, NOTE, policy, semaphore=asyncio.Semaphore(1),
                                             rand=lambda: 0.0, wait=FakeTime().wait, lanes=lanes,
                                             destination="hooks.test"), 5.0)
    assert notifier.calls == outcome.attempts == 3
    assert isinstance(outcome.error, NotificationError) and outcome.error.status == 503
    assert not outcome.abandoned


async def test_no_attempt_within_the_budget_is_a_retriable_failure() -> None:
    policy = RetryPolicy(max_elapsed=0.01)
    lanes = Lanes(Destinations(1, 8))
    assert await lanes.acquire("hooks.test", 60.0) is not None
    outcome = await asyncio.wait_for(deliver(Scripted([]), NOTE, policy, semaphore=asyncio.Semaphore(1),
                                             rand=lambda: 0.0, wait=FakeTime().wait, lanes=lanes,
                                             destination="hooks.test"), 5.0)
    assert outcome.attempts == 0 and isinstance(outcome.error, NotificationError)
    assert outcome.error.retriable and "hooks.test is failing" in str(outcome.error)
