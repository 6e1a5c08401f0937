from __future__ import annotations

import math
import random
from email.utils import formatdate
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.errors import ConfigError
from floodgate.throttle import (
    MAX_RETRY_AFTER,
    Backoff,
    BreakerState,
    CircuitBreaker,
    SlotPool,
    TokenBucket,
    parse_retry_after,
    partition_bucket,
    partition_share,
    retry_delay,
)

# --- partition_share ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "partitions", "shares"),
    [
        (1, 1, [1]),
        (8, 1, [8]),
        (8, 4, [2, 2, 2, 2]),
        (10, 4, [3, 3, 2, 2]),
        (7, 3, [3, 2, 2]),
        (5, 5, [1, 1, 1, 1, 1]),
    ],
)
def test_partition_share_table(limit: int, partitions: int, shares: list[int]) -> None:
    assert [partition_share(limit, partitions, p) for p in range(partitions)] == shares


@pytest.mark.parametrize(
    ("limit", "partitions", "partition", "match"),
    [
        (3, 4, 0, "some partition would get no slot"),
        (0, 1, 0, "limit"),
        (-1, 1, 0, "limit"),
        (4, 0, 0, "partitions"),
        (4, 2, 2, "partition must be in"),
        (4, 2, -1, "partition must be in"),
        (True, 1, 0, "limit"),
        (4.0, 2, 0, "limit"),
    ],
)
def test_partition_share_rejects(limit: Any, partitions: int, partition: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        partition_share(limit, partitions, partition)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(n, 10_000), st.just(n))))
def test_partition_shares_sum_to_the_limit_and_are_even(case: tuple[int, int]) -> None:
    limit, partitions = case
    shares = [partition_share(limit, partitions, p) for p in range(partitions)]
    assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1
    assert min(shares) >= 1


def test_slot_pool_counts_and_answers_membership_without_copying() -> None:
    pool = SlotPool(3)
    pool.try_acquire("a"), pool.try_acquire("b")
    assert "a" in pool and "z" not in pool and len(pool) == 2


# --- SlotPool -------------------------------------------------------------------------


def test_slot_pool_admits_up_to_capacity() -> None:
    pool = SlotPool(2)
    assert [pool.try_acquire(j) for j in ("a", "b", "c")] == [True, True, False]
    assert pool.held == frozenset({"a", "b"})
    assert pool.free == 0


def test_acquire_is_idempotent_for_a_held_job_even_when_full() -> None:
    pool = SlotPool(1)
    assert pool.try_acquire("a") and pool.try_acquire("a")
    assert pool.held == frozenset({"a"})


def test_release_frees_once() -> None:
    pool = SlotPool(1)
    pool.try_acquire("a")
    assert pool.release("a") is True
    assert pool.release("a") is False
    assert pool.release("never") is False
    assert pool.free == 1 and pool.try_acquire("b")


def test_rebuild_over_capacity_blocks_until_enough_release() -> None:
    pool = SlotPool(2)
    pool.try_acquire("old")
    pool.rebuild(["a", "b", "c", "d"])
    assert pool.held == frozenset("abcd") and pool.free == 0
    assert not pool.try_acquire("new")
    pool.release("a")
    pool.release("b")
    assert not pool.try_acquire("new")  # 2 held == capacity
    pool.release("c")
    assert pool.try_acquire("new")


@pytest.mark.parametrize("capacity", [-1, 1.5, None])
def test_slot_pool_rejects_bad_capacity(capacity: Any) -> None:
    with pytest.raises(ConfigError):
        SlotPool(capacity)


ops = st.lists(st.tuples(st.sampled_from(["acquire", "release"]), st.sampled_from("abcdefgh")), max_size=60)


@given(capacity=st.integers(0, 5), ops=ops)
def test_slot_pool_never_exceeds_capacity_and_matches_a_model(capacity: int, ops: list[tuple[str, str]]) -> None:
    pool, model = SlotPool(capacity), set[str]()
    for op, job in ops:
        if op == "acquire":
            expected = job in model or len(model) < capacity
            if expected:
                model.add(job)
            assert pool.try_acquire(job) == expected
        else:
            assert pool.release(job) == (job in model)
            model.discard(job)
        assert pool.held == model
        assert len(pool.held) <= capacity
        assert pool.free == capacity - len(model)


# --- TokenBucket ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "times", "waits"),
    [
        (1.0, 1, [0, 0, 0], [0, 1, 2]),
        (2.0, 1, [0, 0, 0], [0, 0.5, 1.0]),
        (1.0, 3, [0, 0, 0, 0], [0, 0, 0, 1]),
        (1.0, 1, [0, 1, 2], [0, 0, 0]),
        (1.0, 2, [0, 0, 10, 10, 10], [0, 0, 0, 0, 1]),  # refill is capped at burst
        (1.0, 1, [0, 0, 0.5], [0, 1, 1.5]),  # reservations queue up
        (1.0, 1, [10, 5], [0, 6]),  # a clock stepping back does not refill
    ],
)
def test_token_bucket_table(rate: float, burst: float, times: list[float], waits: list[float]) -> None:
    bucket = TokenBucket(rate, burst)
    assert [bucket.take(t) for t in times] == pytest.approx(waits)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (1, 0.5), (1, math.nan)])
def test_token_bucket_rejects(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst)


def most_in_a_window(grants: list[float], window: float) -> int:
    """The most of ``grants`` (times) that fall in any window of ``window`` seconds."""
    ordered = sorted(grants)
    return max((sum(1 for g in ordered[i:] if g <= start + window) for i, start in enumerate(ordered)), default=0)


@given(
    rate=st.floats(0.1, 50),
    burst=st.integers(1, 10),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=80),
    window=st.floats(0.01, 10),
)
def test_honoured_reservations_never_exceed_burst_plus_rate_in_any_window(
    rate: float, burst: int, gaps: list[float], window: float
) -> None:
    bucket, now, grants = TokenBucket(rate, burst), 0.0, []
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0
        grants.append(now + wait)
    assert most_in_a_window(grants, window) <= burst + rate * window + 1e-6


@given(
    rate=st.floats(0.1, 50),
    burst=st.integers(1, 10),
    asks=st.lists(st.tuples(st.floats(0, 2), st.integers(0, 20)), min_size=1, max_size=80),
    window=st.floats(0.01, 10),
)
def test_taking_only_what_is_there_never_exceeds_burst_plus_rate_in_any_window(
    rate: float, burst: int, asks: list[tuple[float, int]], window: float
) -> None:
    bucket, now, grants = TokenBucket(rate, burst), 0.0, []
    for gap, wanted in asks:
        now += gap
        granted = bucket.take_now(now, wanted)
        assert 0 <= granted <= wanted
        grants += [now] * granted
    assert most_in_a_window(grants, window) <= burst + rate * window + 1e-6


def test_take_now_grants_whole_tokens_held_now_and_never_borrows() -> None:
    bucket = TokenBucket(2.0, 3.0)
    assert bucket.take_now(0.0, 5) == 3, "a full bucket: its size"
    assert bucket.take_now(0.4, 5) == 0, "0.8 of a token is not a call"
    assert bucket.take_now(1.0, 5) == 2
    assert bucket.take(1.0) == pytest.approx(0.5), "nothing was borrowed: the next token is half a second away"
    assert bucket.take_now(1.2, 1) == 0, "a reservation made by take is paid for first"


# --- partition_bucket -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "partitions", "share", "size"),
    [
        (10.0, 1, 10.0, 10.0),  # one partition: the provider's own bucket
        (10.0, 2, 5.0, 5.0),
        (9.0, 4, 2.25, 2.25),
        (2.0, 4, 0.5, 1.0),  # a bucket holds at least one request
        (0.5, 1, 0.5, 1.0),
        (0.5, 3, 0.5 / 3, 1.0),
    ],
)
def test_partition_bucket_table(rate: float, partitions: int, share: float, size: float) -> None:
    bucket = partition_bucket(rate, partitions)
    assert (bucket.rate, bucket.burst) == pytest.approx((share, size))


@pytest.mark.parametrize(("rate", "partitions"), [(0, 1), (-2.0, 2), (math.inf, 2), (math.nan, 1), (True, 1),
                                                   (5.0, 0), (5.0, 1.5)])
def test_partition_bucket_rejects(rate: Any, partitions: Any) -> None:
    with pytest.raises(ConfigError):
        partition_bucket(rate, partitions)


@given(rate=st.floats(0.1, 100), partitions=st.integers(1, 64))
def test_partition_rates_add_up_to_the_provider_rate(rate: float, partitions: int) -> None:
    buckets = [partition_bucket(rate, partitions) for _ in range(partitions)]
    assert math.fsum(b.rate for b in buckets) == pytest.approx(rate)
    # The sizes add up to the provider's bucket size unless each is raised to one request.
    total = math.fsum(b.burst for b in buckets)
    assert total == pytest.approx(max(max(1.0, rate), float(partitions)))


@given(
    rate=st.floats(0.5, 40),
    partitions=st.integers(1, 8),
    arrivals=st.lists(st.tuples(st.integers(0, 7), st.floats(0, 0.5)), min_size=1, max_size=150),
    window=st.floats(0.05, 8),
)
def test_partitions_together_keep_the_provider_rate_in_any_window(
    rate: float, partitions: int, arrivals: list[tuple[int, float]], window: float
) -> None:
    """Each partition's owner (any worker) honours its own bucket; the provider sees the sum."""
    buckets = [partition_bucket(rate, partitions) for _ in range(partitions)]
    now, grants = 0.0, []
    for partition, gap in arrivals:
        now += gap
        grants.append(now + buckets[partition % partitions].take(now))
    allowance = math.fsum(b.burst for b in buckets)
    assert most_in_a_window(grants, window) <= allowance + rate * window + 1e-6


def test_a_bucket_per_worker_would_double_the_rate_and_a_bucket_per_partition_does_not() -> None:
    """Two workers, one partition each, both flooded for 10 s: the provider's 5/s must hold."""
    def sent_in_ten_seconds(buckets: list[TokenBucket]) -> int:
        sent = 0
        for bucket in buckets:
            waits = [bucket.take(0.0) for _ in range(200)]
            sent += sum(1 for w in waits if w <= 10.0)
        return sent

    assert sent_in_ten_seconds([TokenBucket(5.0, 5.0), TokenBucket(5.0, 5.0)]) > 100  # the old way: 10/s
    assert sent_in_ten_seconds([partition_bucket(5.0, 2), partition_bucket(5.0, 2)]) <= 5 + 5.0 * 10


# --- Retry-After ----------------------------------------------------------------------

NOW = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Sun, 06 Nov 1994 08:50:37 GMT", 60.0),
        ("Sun, 06 Nov 1994 08:48:37 GMT", 0.0),  # in the past: no wait, never negative
        ("Sunday, 06-Nov-94 08:51:37 GMT", 120.0),  # obsolete rfc850
        ("Sun Nov  6 08:52:37 1994", 180.0),  # obsolete asctime
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 1994 08:49:37 -0000", None),  # not an HTTP-date: the caller's backoff applies
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ("06 Nov 1994 08:49:37 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_last_century() -> None:
    now_2026 = 1790000000.0  # 2026-09-21
    assert parse_retry_after("Thursday, 01-Oct-26 00:00:00 GMT", now_2026) == pytest.approx(1790812800.0 - now_2026)
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now_2026) == 0.0  # 1994, not 2094


@given(target=st.integers(0, 4_000_000_000), now=st.integers(0, 4_000_000_000))
def test_imf_fixdate_round_trips(target: int, now: int) -> None:
    header = formatdate(target, usegmt=True)
    assert parse_retry_after(header, float(now)) == max(0.0, float(target - now))


# Near-valid garbage finds more than arbitrary unicode, and avoids building hypothesis' charmap (seconds, cold).
HEADER_CHARS = st.sampled_from(list("0123456789 ,:-.+eE\tSunMonTueWedFriSatJaFebMrApyJlgOcNvDGT\u0663\u00a0"))


VALID_DATES = st.sampled_from(["Sun, 06 Nov 1994 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"])


@given(st.text(HEADER_CHARS, max_size=40) | VALID_DATES)
def test_parse_retry_after_never_raises_or_goes_negative(value: str) -> None:
    got = parse_retry_after(value, NOW)
    assert got is None or got >= 0


# --- Backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0), (100_000, 10.0)],
)
def test_backoff_without_jitter(attempt: int, expected: float) -> None:
    assert Backoff(0.5, 2.0, 10.0, "none").delay(attempt) == expected


def test_backoff_with_full_jitter_is_reproducible_with_a_seeded_rng() -> None:
    a = [Backoff(1, 2, 30, "full", random.Random(7)).delay(n) for n in range(6)]
    b = [Backoff(1, 2, 30, "full", random.Random(7)).delay(n) for n in range(6)]
    assert a == b and len(set(a)) == 6


@given(attempt=st.integers(0, 10_000), seed=st.integers(), base=st.floats(0.01, 5), factor=st.floats(1, 4))
def test_full_jitter_stays_under_the_exponential_ceiling(attempt: int, seed: int, base: float, factor: float) -> None:
    cap = base * 20
    plain = Backoff(base, factor, cap, "none").delay(attempt)
    jittered = Backoff(base, factor, cap, "full", random.Random(seed)).delay(attempt)
    assert 0 <= jittered <= plain <= cap
    assert plain == pytest.approx(min(cap, base * math.exp(min(attempt * math.log(factor), 700))))


@given(attempt=st.integers(0, 10_000), rand=st.floats(0, 1, exclude_max=True))
def test_equal_jitter_stays_between_half_the_ceiling_and_the_ceiling(attempt: int, rand: float) -> None:
    plain = Backoff(0.25, 2, 30, "none").delay(attempt)
    assert plain / 2 <= Backoff(0.25, 2, 30, "equal").delay(attempt, rand) <= plain


def test_injected_rand_replaces_the_rng() -> None:
    assert Backoff(1, 2, 30, "full").delay(2, 0.5) == 2.0
    assert Backoff(1, 2, 30, "equal").delay(2, 0.5) == 3.0
    assert Backoff(1, 2, 30, "none").delay(2, 0.5) == 4.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": -1}, {"factor": 0.5}, {"cap": 0.1, "base": 1}, {"jitter": "half"}, {"cap": math.inf}],
)
def test_backoff_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kwargs)


def test_backoff_rejects_negative_attempt() -> None:
    with pytest.raises(ValueError):
        Backoff().delay(-1)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 4.0),
        (30.0, 30.0),
        (0.0, 0.0),  # "retry now" from the provider wins over our backoff
        (-3.0, 0.0),
        (10_000.0, MAX_RETRY_AFTER),
        (math.inf, MAX_RETRY_AFTER),
        (math.nan, 4.0),
    ],
)
def test_retry_delay(retry_after: float | None, expected: float) -> None:
    assert retry_delay(3, retry_after, Backoff(0.5, 2, 60, "none")) == expected


def test_retry_delay_custom_cap() -> None:
    assert retry_delay(0, 100.0, Backoff(), max_retry_after=5.0) == 5.0


# --- CircuitBreaker -------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_only() -> None:
    cb = CircuitBreaker(failure_threshold=3, reset_after=10)
    cb.record_failure(0)
    cb.record_failure(1)
    cb.record_success()  # breaks the streak
    cb.record_failure(2)
    cb.record_failure(3)
    assert cb.state(3) is BreakerState.CLOSED and cb.allow(3)
    cb.record_failure(4)
    assert cb.state(4) is BreakerState.OPEN and not cb.allow(4)


def test_half_open_lets_exactly_one_probe_through() -> None:
    cb = CircuitBreaker(1, reset_after=10)
    cb.record_failure(0)
    assert not cb.allow(9.99)
    assert cb.state(10) is BreakerState.HALF_OPEN
    assert cb.allow(10) is True
    assert cb.allow(10.5) is False
    cb.record_success()
    assert cb.state(11) is BreakerState.CLOSED and cb.allow(11) and cb.allow(11)


def test_failed_probe_reopens_for_a_full_period() -> None:
    cb = CircuitBreaker(1, reset_after=10)
    cb.record_failure(0)
    assert cb.allow(12)
    cb.record_failure(13)
    assert cb.state(22.9) is BreakerState.OPEN and not cb.allow(22.9)
    assert cb.allow(23)


def test_lost_probe_is_replaced_after_reset_after() -> None:
    cb = CircuitBreaker(1, reset_after=10)
    cb.record_failure(0)
    assert cb.allow(10)
    assert not cb.allow(19.9)
    assert cb.allow(20)


def test_late_results_while_open_do_not_move_the_breaker() -> None:
    cb = CircuitBreaker(1, reset_after=10)
    cb.record_failure(0)
    cb.record_failure(9)  # a request sent before the outage fails late: the window is not extended
    assert cb.state(10) is BreakerState.HALF_OPEN
    cb.record_success()  # a late success is not a probe
    assert cb.state(10) is BreakerState.HALF_OPEN


def test_state_is_a_pure_query() -> None:
    cb = CircuitBreaker(1, reset_after=10)
    cb.record_failure(0)
    for _ in range(3):
        assert cb.state(15) is BreakerState.HALF_OPEN
    assert cb.allow(15)


@pytest.mark.parametrize(("threshold", "reset_after"), [(0, 1), (1.5, 1), (1, 0), (1, -1), (1, math.nan)])
def test_breaker_rejects(threshold: Any, reset_after: float) -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(threshold, reset_after)


@given(
    threshold=st.integers(1, 4),
    steps=st.lists(st.tuples(st.floats(0, 8), st.sampled_from(["ok", "fail"])), max_size=40),
)
def test_breaker_probes_at_most_once_per_period_and_lets_traffic_through_when_closed(
    threshold: int, steps: list[tuple[float, str]]
) -> None:
    cb, now = CircuitBreaker(threshold, reset_after=5), 0.0
    for gap, outcome in steps:
        now += gap
        before = cb.state(now)
        allowed = cb.allow(now)
        if before is BreakerState.CLOSED:
            assert allowed
        if before is BreakerState.OPEN:
            assert not allowed
        if allowed and before is BreakerState.HALF_OPEN:
            assert not cb.allow(now)  # a second caller at the same instant is refused
        if allowed:
            cb.record_success() if outcome == "ok" else cb.record_failure(now)
        if allowed and outcome == "ok":
            assert cb.state(now) is BreakerState.CLOSED
        if allowed and outcome == "fail" and before is BreakerState.HALF_OPEN:
            assert cb.state(now) is BreakerState.OPEN


def test_a_pool_counts_the_slots_each_tenant_holds() -> None:
    pool = SlotPool(3)
    assert pool.try_acquire("j1", "a") and pool.try_acquire("j2", "a") and pool.try_acquire("j3", "b")
    assert not pool.try_acquire("j4", "b")  # full: b's count does not move
    assert (pool.held_by("a"), pool.held_by("b"), pool.held_by("c")) == (2, 1, 0)
    assert pool.try_acquire("j1", "a") and pool.held_by("a") == 2  # a redelivery counts once
    assert pool.release("j1") and not pool.release("j1")
    assert pool.held_by("a") == 1 and pool.tenant_of("j2") == "a" and pool.tenant_of("j1") is None
    pool.rebuild([("k1", "c"), ("k2", "c"), ("k3", "a"), ("k4", "b")])  # after a restart: over capacity
    assert (pool.held_by("a"), pool.held_by("b"), pool.held_by("c"), pool.free) == (1, 1, 2, 0)
    pool.rebuild(["k1"])  # job ids alone: held, by no tenant in particular
    assert len(pool) == 1 and pool.held_by("c") == 0
