"""How long to keep retrying a failed delivery, on the shared backoff schedule. Pure."""
from __future__ import annotations

from dataclasses import dataclass, field

from floodgate.errors import ConfigError
from floodgate.throttle import Backoff


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry budget of a webhook delivery.

    The n-th retry waits as :class:`~floodgate.throttle.Backoff` with equal jitter says: a random
    time in ``[c/2, c]`` with ``c = min(max_delay, base_delay·2^(n-1))`` (spreads a burst of
    failures without ever retrying immediately), or longer if the receiver sent ``Retry-After``.
    Gives up after ``max_attempts`` attempts or when the next attempt would start more than
    ``max_elapsed`` seconds after the first (a delivery waiting for its destination's lane gives up
    then too, :func:`~floodgate.notify.delivery.deliver`). The defaults bound one delivery to ~10
    minutes: its offset cannot be committed until then. Raises ``ConfigError`` for values that
    make no sense.
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 60.0
    max_elapsed: float = 600.0
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.max_elapsed < 0:
            raise ConfigError("max_elapsed must not be negative")
        object.__setattr__(self, "_backoff", Backoff(self.base_delay, 2.0, self.max_delay, "equal"))

    def next_delay(self, attempts: int, elapsed: float, retry_after: float | None, rand: float) -> float | None:
        """Seconds to wait before attempt ``attempts + 1``, or ``None`` to give up.

        ``attempts``: attempts made so far (≥ 1); ``elapsed``: seconds since the first began;
        ``rand``: uniform in ``[0, 1)``, injected for reproducible tests.
        """
        if attempts >= self.max_attempts:
            return None
        delay = self._backoff.delay(attempts - 1, rand)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if elapsed + delay > self.max_elapsed:
            return None
        return delay


__all__ = ["RetryPolicy"]
