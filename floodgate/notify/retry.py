"""When to try a failed delivery again: exponential backoff with jitter, bounded. Pure."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for webhook deliveries.

    The n-th retry waits a random time in ``[c/2, c]`` with ``c = min(max_delay, base_delay·2^(n-1))``
    ("equal jitter": spreads a burst of failures without ever retrying immediately), or longer
    if the receiver sent ``Retry-After``. Gives up after ``max_attempts`` attempts or when the
    next attempt would start more than ``max_elapsed`` seconds after the first. The defaults
    bound one delivery to ~10 minutes: its offset cannot be committed until then.
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 60.0
    max_elapsed: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.base_delay <= self.max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if self.max_elapsed < 0:
            raise ValueError("max_elapsed must not be negative")

    def next_delay(self, attempts: int, elapsed: float, retry_after: float | None, rand: float) -> float | None:
        """Seconds to wait before attempt ``attempts + 1``, or ``None`` to give up.

        ``attempts``: attempts made so far (≥ 1); ``elapsed``: seconds since the first began;
        ``rand``: uniform in ``[0, 1)``, injected for reproducible tests.
        """
        if attempts >= self.max_attempts:
            return None
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempts - 1, 62))
        delay = ceiling / 2 + ceiling / 2 * rand
        if retry_after is not None:
            delay = max(delay, retry_after)
        if elapsed + delay > self.max_elapsed:
            return None
        return delay


__all__ = ["RetryPolicy"]
