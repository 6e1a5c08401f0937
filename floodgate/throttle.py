"""Rate and concurrency rules for provider submissions. Pure: every clock is a ``now`` argument.

* ``partition_share`` / ``SlotPool``: a provider's concurrency limit split across
  dispatch partitions, and the in-flight accounting of one partition.
* ``TokenBucket`` / ``partition_bucket``: a requests-per-second limit, and one dispatch
  partition's share of a provider's.
* ``parse_retry_after`` / ``Backoff`` / ``retry_delay``: when to try again.
* ``CircuitBreaker``: when to stop sending to a provider and fall back.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from floodgate.errors import ConfigError

MAX_RETRY_AFTER = 600.0
"""Upper bound on a provider's Retry-After: a misconfigured provider must not park a job for a day."""


def _int_at_least(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def partition_share(limit: int, partitions: int, partition: int) -> int:
    """This partition's share of ``limit``; shares over all partitions sum to ``limit`` and differ by at most one.

    Raises ``ConfigError`` if ``limit`` or ``partitions`` is not a positive integer,
    if ``partition`` is out of range, or if ``partitions > limit`` (some partition
    would get a share of 0 and its jobs would never be submitted).
    """
    _int_at_least("limit", limit)
    _int_at_least("partitions", partitions)
    if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < partitions:
        raise ConfigError(f"partition must be in [0, {partitions}), got {partition!r}")
    if partitions > limit:
        raise ConfigError(
            f"{partitions} partitions cannot share a concurrency limit of {limit}: "
            "some partition would get no slot; raise the limit or use fewer partitions"
        )
    base, extra = divmod(limit, partitions)
    return base + (1 if partition < extra else 0)


class SlotPool:
    """In-flight jobs of one partition against its capacity, and how many each tenant holds (the
    fair line serves the tenant holding the least for its weight first). Not thread-safe; one
    agent owns it."""

    def __init__(self, capacity: int) -> None:
        """Raises ``ConfigError`` if ``capacity`` is not an integer >= 0."""
        self._capacity = _int_at_least("capacity", capacity, minimum=0)
        self._held: dict[str, str] = {}
        """Job id → the tenant it was taken for."""
        self._by_tenant: Counter[str] = Counter()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    @property
    def free(self) -> int:
        """Slots available now; 0 (never negative) while over capacity after a rebuild."""
        return max(0, self._capacity - len(self._held))

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def tenant_of(self, job_id: str) -> str | None:
        """The tenant ``job_id``'s slot was taken for; None if it holds none here."""
        return self._held.get(job_id)

    def held_by(self, tenant: str) -> int:
        """Slots ``tenant``'s jobs hold here."""
        return self._by_tenant[tenant]

    def try_acquire(self, job_id: str, tenant: str = "") -> bool:
        """Take a slot for ``job_id`` (of ``tenant``). True if it holds one now, including when it
        already did (redelivery)."""
        if job_id in self._held:
            return True
        if len(self._held) >= self._capacity:
            return False
        self._held[job_id] = tenant
        self._by_tenant[tenant] += 1
        return True

    def release(self, job_id: str) -> bool:
        """Give back ``job_id``'s slot. False if it held none, so a duplicate completion frees nothing."""
        tenant = self._held.pop(job_id, None)
        if tenant is None:
            return False
        self._by_tenant[tenant] -= 1
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        return True

    def rebuild(self, held: Iterable[str | tuple[str, str]]) -> None:
        """Replace the held set after a restart or rebalance, from the jobs known to be in flight:
        job ids, or (job id, tenant) pairs.

        All of them are kept even beyond capacity: they are already running at the
        provider, so forgetting them would overshoot the real limit.
        """
        self._held = dict((item, "") if isinstance(item, str) else item for item in held)
        self._by_tenant = Counter(self._held.values())


class TokenBucket:
    """Requests-per-second limit with reservation semantics.

    ``take`` always consumes a token, possibly one that only exists in the
    future, and says how long to wait for it. Callers that honour the wait never
    exceed ``burst + rate * T`` requests in any window of ``T`` seconds.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        """Raises ``ConfigError`` unless ``rate > 0`` and ``burst >= 1`` (both finite)."""
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"rate must be a positive number, got {rate!r}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ConfigError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last: float | None = None

    def take(self, now: float) -> float:
        """Reserve one token; return the seconds to wait before using it (0.0 if available now)."""
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        assert self._last is not None
        return -self._tokens / self.rate + max(0.0, self._last - now)

    def take_now(self, now: float, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens, only those the bucket holds at ``now`` (nothing in
        advance); returns how many. For a caller that puts off what it may not do now, rather
        than waiting for it."""
        self._refill(now)
        granted = max(0, min(wanted, math.floor(self._tokens)))
        self._tokens -= granted
        return granted

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
        elif now > self._last:
            # A clock that steps backwards neither refills nor rewinds the bucket.
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now


def partition_bucket(rate: float, partitions: int) -> TokenBucket:
    """One dispatch partition's bucket of a provider's ``rate`` requests per second.

    A partition belongs to one worker at a time, so the buckets of all partitions, each with
    ``rate / partitions``, add up to ``rate`` whatever the number of workers (a bucket per worker
    would give each of N workers the whole rate). The provider's bucket size, ``max(1, rate)``,
    is split the same way but never below one token (a bucket must hold a request), so in any
    window of ``T`` seconds the partitions together send at most
    ``partitions * max(1, max(1, rate) / partitions) + rate * T`` requests.

    Raises ``ConfigError`` unless ``rate > 0`` and ``partitions >= 1``.
    """
    _int_at_least("partitions", partitions)
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number, got {rate!r}")
    return TokenBucket(rate / partitions, max(1.0, max(1.0, rate) / partitions))


_MONTHS = {
    m: i
    for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)
}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)"
# RFC 9110 §5.6.7: IMF-fixdate, plus the obsolete rfc850 and asctime forms a recipient must accept.
_IMF = re.compile(rf"{_DAY}, (?P<d>\d\d) {_MON} (?P<y>\d{{4}}) {_TIME} GMT", re.ASCII)
_RFC850 = re.compile(rf"{_LONG_DAY}, (?P<d>\d\d)-{_MON}-(?P<y>\d\d) {_TIME} GMT", re.ASCII)
_ASCTIME = re.compile(rf"{_DAY} {_MON} (?P<d>[ \d]\d) {_TIME} (?P<y>\d{{4}})", re.ASCII)
_DELTA = re.compile(r"\d+(?:\.\d+)?", re.ASCII)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait according to a Retry-After header value, measured from ``now`` (epoch seconds).

    Accepts delta-seconds (leniently also with a fraction, which some providers
    send) and HTTP-dates in all three RFC 9110 forms; the weekday is not
    cross-checked. A date in the past gives 0.0. Returns None for None or for
    anything unparseable; never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA.fullmatch(text):
        return float(text)
    when = _http_date(text, now)
    return None if when is None else max(0.0, when - now)


def _http_date(text: str, now: float) -> float | None:
    for pattern in (_IMF, _RFC850, _ASCTIME):
        match = pattern.fullmatch(text)
        if match:
            break
    else:
        return None
    year = int(match["y"])
    if pattern is _RFC850:
        # RFC 9110: a two-digit year more than 50 years in the future means the most recent past such year.
        this_year = datetime.fromtimestamp(now, UTC).year if math.isfinite(now) else 1970
        year += this_year - this_year % 100
        if year > this_year + 50:
            year -= 100
    try:
        when = datetime(
            year, _MONTHS[match["mon"]], int(match["d"]), int(match["h"]), int(match["m"]), int(match["s"]), tzinfo=UTC
        )
    except ValueError:
        return None
    return when.timestamp()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff, the one retry schedule: ceiling ``c = min(cap, base * factor**attempt)``.

    ``jitter`` picks the wait under that ceiling: ``"none"`` waits ``c``; ``"full"`` a uniform
    time in ``[0, c]`` (spreads retries most); ``"equal"`` a uniform time in ``[c/2, c]`` (spreads
    them without ever retrying at once).

    Raises ``ConfigError`` unless ``0 < base <= cap``, ``factor >= 1`` and ``jitter`` is one of those.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: Literal["full", "equal", "none"] = "full"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ConfigError(f"base must be positive, got {self.base!r}")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ConfigError(f"cap must be >= base, got {self.cap!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigError(f"factor must be >= 1, got {self.factor!r}")
        if self.jitter not in ("full", "equal", "none"):
            raise ConfigError(f"jitter must be 'full', 'equal' or 'none', got {self.jitter!r}")

    def delay(self, attempt: int, rand: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = the first retry).

        ``rand``, uniform in ``[0, 1)``, replaces a draw from ``rng`` (for callers that inject
        their randomness). Raises ``ValueError`` if ``attempt`` is negative.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            ceiling = min(self.cap, self.base * self.factor**attempt)
        except OverflowError:  # float ** int raises rather than returning inf
            ceiling = self.cap
        if self.jitter == "none":
            return ceiling
        u = self.rng.random() if rand is None else rand
        if self.jitter == "full":
            return ceiling * u
        return ceiling / 2 + ceiling / 2 * u


def retry_delay(
    attempt: int, retry_after: float | None, backoff: Backoff, max_retry_after: float = MAX_RETRY_AFTER
) -> float:
    """Seconds before retrying: the provider's Retry-After when it gave a usable one, else the backoff.

    Retry-After is clamped to ``[0, max_retry_after]``; NaN counts as not given.
    Raises ``ValueError`` if ``attempt`` is negative.
    """
    if retry_after is not None and not math.isnan(retry_after):
        return min(max(0.0, retry_after), max_retry_after)
    return backoff.delay(attempt)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops traffic to a provider after ``failure_threshold`` consecutive failures.

    Open for ``reset_after`` seconds, then half-open: one probe goes through; its
    success closes the breaker, its failure opens it again. A probe that never
    reports back is presumed lost after another ``reset_after``, and a new one is allowed.
    """

    def __init__(self, failure_threshold: int, reset_after: float) -> None:
        """Raises ``ConfigError`` unless ``failure_threshold >= 1`` and ``reset_after > 0``."""
        self.failure_threshold = _int_at_least("failure_threshold", failure_threshold)
        if not (math.isfinite(reset_after) and reset_after > 0):
            raise ConfigError(f"reset_after must be positive, got {reset_after!r}")
        self.reset_after = float(reset_after)
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_at: float | None = None

    def state(self, now: float) -> BreakerState:
        """The state at ``now``; a query, it changes nothing."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at >= self.reset_after:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self, now: float) -> bool:
        """May a request go to the provider at ``now``? In half-open, True once per probe."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probe_at is not None and now - self._probe_at < self.reset_after:
            return False
        self._probe_at = now
        return True

    def record_success(self) -> None:
        """A request succeeded. Closes a half-open breaker; ignored while open (a late answer proves nothing)."""
        if self._opened_at is not None and self._probe_at is None:
            return
        self._failures = 0
        self._opened_at = None
        self._probe_at = None

    def record_failure(self, now: float) -> None:
        """A request failed at ``now`` (in a way that blames the provider, e.g. 5xx or timeout)."""
        if self._opened_at is not None:
            if self._probe_at is not None:
                self._opened_at, self._probe_at = now, None
            # Failures of requests sent before the breaker opened must not keep it open longer.
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._opened_at = now


__all__ = [
    "MAX_RETRY_AFTER",
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "SlotPool",
    "TokenBucket",
    "parse_retry_after",
    "partition_bucket",
    "partition_share",
    "retry_delay",
]
