"""What a submitter does after a failed provider call: retry (after how long), reroute to the
next provider in the model's chain, or fail the job. Pure: asks the error, not its type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from floodgate.errors import FloodgateError
from floodgate.throttle import Backoff, retry_delay

Action = Literal["retry", "reroute", "fail"]


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class SubmitPolicy:
    max_unavailable_retries: int = 3
    """Consecutive outage-type failures (5xx, connection) before giving up on this provider."""
    max_rate_limited_wait: float = 600.0
    """Seconds of 429s after which a job moves on to a fallback provider, if it has one."""
    max_outage_wait: float = 10.0
    """An outage announced to last longer than this (Retry-After) sends the job to its fallback
    at once instead of waiting it out."""


def decide(error: FloodgateError, *, failures: int, waited: float, has_fallback: bool,
           breaker_open: bool, policy: SubmitPolicy, backoff: Backoff) -> Decision:
    """``failures`` counts earlier retriable failures of this submission (0 on the first);
    ``waited`` is the seconds already spent retrying it."""
    reason = f"{type(error).__name__}: {error}"
    if not error.retriable:
        if error.reroute and has_fallback:
            return Decision("reroute", reason=reason)
        return Decision("fail", reason=reason)
    if error.reroute:  # an outage: retry a little, then move on
        long_outage = (error.retry_after or 0.0) > policy.max_outage_wait
        if has_fallback and (breaker_open or long_outage or failures + 1 >= policy.max_unavailable_retries):
            return Decision("reroute", reason=reason)
        if not has_fallback and failures + 1 >= policy.max_unavailable_retries * 10:
            return Decision("fail", reason=reason)
        return Decision("retry", delay=retry_delay(failures, error.retry_after, backoff), reason=reason)
    # Rate limited: the provider is healthy but full; the job waits its turn.
    if has_fallback and waited >= policy.max_rate_limited_wait:
        return Decision("reroute", reason=reason)
    return Decision("retry", delay=retry_delay(failures, error.retry_after, backoff), reason=reason)
