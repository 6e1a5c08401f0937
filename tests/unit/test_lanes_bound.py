"""A destination's bound on the deliveries it holds (``Destinations(most=...)``): pure, no loop.

At its bound a destination is ``full``; then its breaker decides: open, its new deliveries are
given up on at once (``sheds``); closed, the fetch waits for it (``fetch_waits``)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.errors import ConfigError
from floodgate.lanes import Attempt, Destinations, Verdict

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


VERDICTS: dict[str, Verdict] = {"delivered": "delivered", "failed": "failed", "neutral": "neutral"}
STEPS = st.lists(st.tuples(st.sampled_from([HOLE, OTHER]),
                           st.sampled_from(["enter", "enter", "leave", "start", *VERDICTS, "later"])),
                 min_size=30, max_size=60)
"""Long enough to fill a bound and open a breaker in most examples (entering twice as likely)."""


@given(st.integers(1, 3), STEPS)
def test_the_bound_follows_the_deliveries_held_and_only_a_leave_or_an_opening_lets_the_fetch_go_on(
        most: int, steps: list[tuple[str, str]]) -> None:
    """Any sequence of deliveries and attempts: ``full`` is exactly "holds ``most`` or more" and
    ``sheds`` exactly "full and its breaker open", what the webhooks and the video copier act on;
    and ``fetch_waits`` turns false only when a delivery leaves or a breaker opens, the two events
    that wake a service's waiting fetch (a record ending, ``Lanes``' ``on_open``)."""
    rules = Destinations(1, 1, failure_threshold=1, open_for=1.0, most=most)
    attempts: list[Attempt] = []
    now = 0.0
    for destination, step in steps:
        waited = rules.fetch_waits
        woken = False
        if step == "enter":
            rules.enter(destination)
        elif step == "leave" and rules.held(destination):
            rules.leave(destination)
            woken = True
        elif step == "start" and (attempt := rules.start(destination, now)) is not None:
            attempts.append(attempt)
        elif step in VERDICTS and attempts:
            woken = rules.finish(attempts.pop(0), now, VERDICTS[step])
        elif step == "later":
            now += 0.6  # past open_for every other one: a probe gets its turn
        for each in (HOLE, OTHER):
            assert rules.full(each) == (rules.held(each) >= most)
            assert rules.sheds(each) == (rules.full(each) and rules.is_open(each))
        assert rules.fetch_waits == any(rules.full(each) and not rules.is_open(each) for each in (HOLE, OTHER))
        if waited and not rules.fetch_waits:
            assert woken, f"the fetch would wait for nothing after {step} of {destination}"
