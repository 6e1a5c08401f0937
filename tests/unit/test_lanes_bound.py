"""A destination's bound on the deliveries it holds (``Destinations(most=...)``): pure, no loop.

At its bound a destination is ``full``; then its breaker decides: open, its new deliveries are
given up on at once (``sheds``); closed, the fetch waits for it (``fetch_waits``)."""
from __future__ import annotations

import pytest

from floodgate.errors import ConfigError
from floodgate.lanes import Destinations

HOLE, OTHER = "hole.example.com:443", "ok.example.com:443"


def opened(rules: Destinations, destination: str, now: float = 0.0) -> None:
    """``destination``'s breaker opened: ``failure_threshold`` failed attempts in a row."""
    for _ in range(rules.failure_threshold):
        attempt = rules.start(destination, now)
        assert attempt is not None
        rules.finish(attempt, now, "failed")
    assert rules.is_open(destination)


@pytest.mark.parametrize(("held", "breaker_open", "full", "sheds", "fetch_waits"), [
    (0, False, False, False, False),
    (2, False, False, False, False),
    (2, True, False, False, False),  # failing, but under its bound: its deliveries wait in its lane
    (3, False, True, False, True),  # at its bound and taking deliveries: the fetch waits for it
    (3, True, True, True, False),  # at its bound and failing: its new deliveries are given up on
    (5, False, True, False, True),  # past it (a batch fetched before it was full)
    (5, True, True, True, False),
])
def test_at_its_bound_the_breaker_decides(held: int, breaker_open: bool, full: bool, sheds: bool,
                                          fetch_waits: bool) -> None:
    rules = Destinations(2, 1, failure_threshold=2, most=3)
    for _ in range(held):
        rules.enter(HOLE)
    rules.enter(OTHER)
    if breaker_open:
        opened(rules, HOLE)
    assert (rules.full(HOLE), rules.sheds(HOLE), rules.fetch_waits) == (full, sheds, fetch_waits)
    assert not rules.full(OTHER) and not rules.sheds(OTHER)  # another destination's bound is its own


def test_leaving_under_the_bound_lets_the_fetch_go_on() -> None:
    rules = Destinations(2, 1, most=2)
    rules.enter(HOLE)
    rules.enter(HOLE)
    assert rules.fetch_waits
    rules.leave(HOLE)
    assert not rules.full(HOLE) and not rules.fetch_waits
    rules.leave(HOLE)
    assert rules.held(HOLE) == 0 and not rules.full(HOLE)


def test_a_breaker_closing_again_makes_the_fetch_wait_again() -> None:
    rules = Destinations(2, 1, failure_threshold=1, open_for=5.0, most=1)
    rules.enter(HOLE)
    opened(rules, HOLE)
    assert rules.sheds(HOLE) and not rules.fetch_waits
    probe = rules.start(HOLE, 5.0)
    assert probe is not None and probe.probe
    assert rules.sheds(HOLE)  # half-open: still failing until the probe says otherwise
    rules.finish(probe, 5.0, "delivered")
    assert not rules.sheds(HOLE) and rules.fetch_waits


def test_without_a_bound_nothing_is_full() -> None:
    rules = Destinations(2, 1, failure_threshold=1)
    for _ in range(1000):
        rules.enter(HOLE)
    opened(rules, HOLE)
    assert not rules.full(HOLE) and not rules.sheds(HOLE) and not rules.fetch_waits


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="most"):
        Destinations(2, 1, most=0)
