import random

import pytest

from floodgate.errors import ProviderGone, ProviderRejected, ProviderUnavailable, RateLimited
from floodgate.submit_policy import SubmitPolicy, decide
from floodgate.throttle import Backoff

POLICY = SubmitPolicy(max_unavailable_retries=3, max_rate_limited_wait=60)
BACKOFF = Backoff(base=0.5, factor=2, cap=8, jitter="none", rng=random.Random(1))


@pytest.mark.parametrize(
    "error, failures, waited, fallback, breaker_open, action",
    [
        (RateLimited("429", retry_after=3), 0, 0, True, False, "retry"),
        (RateLimited("429", retry_after=3), 5, 59, True, False, "retry"),
        (RateLimited("429", retry_after=3), 5, 60, True, False, "reroute"),
        (RateLimited("429", retry_after=3), 50, 6000, False, False, "retry"),
        (ProviderUnavailable("503"), 0, 0, True, False, "retry"),
        (ProviderUnavailable("503"), 2, 0, True, False, "reroute"),
        (ProviderUnavailable("503"), 0, 0, True, True, "reroute"),
        (ProviderUnavailable("503", retry_after=300), 0, 0, True, False, "reroute"),
        (ProviderUnavailable("503", retry_after=5), 0, 0, True, False, "retry"),
        (ProviderUnavailable("503", retry_after=300), 0, 0, False, False, "retry"),
        (ProviderUnavailable("503"), 2, 0, False, True, "retry"),
        (ProviderUnavailable("503"), 29, 0, False, False, "fail"),
        (ProviderGone("410"), 0, 0, True, False, "reroute"),
        (ProviderGone("410"), 0, 0, False, False, "fail"),
        (ProviderRejected("400"), 0, 0, True, False, "fail"),
    ],
)
def test_decisions(error, failures, waited, fallback, breaker_open, action):
    d = decide(error, failures=failures, waited=waited, has_fallback=fallback, breaker_open=breaker_open,
               policy=POLICY, backoff=BACKOFF)
    assert d.action == action
    assert type(error).__name__ in d.reason


def test_retry_after_wins_over_backoff():
    d = decide(RateLimited("429", retry_after=7), failures=0, waited=0, has_fallback=False,
               breaker_open=False, policy=POLICY, backoff=BACKOFF)
    assert d.delay == 7


def test_backoff_used_without_retry_after():
    d = decide(ProviderUnavailable("503"), failures=1, waited=0, has_fallback=False,
               breaker_open=False, policy=POLICY, backoff=BACKOFF)
    assert d.delay == BACKOFF.delay(1)
