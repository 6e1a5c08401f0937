"""The worker's read-ahead window over every provider's fair line: pure rules, no Kafka."""
from __future__ import annotations

import pytest

from floodgate.errors import ConfigError
from floodgate.readahead import MIN_FLOOR, ReadAhead, floor_for


class Line(list[int]):
    """Stands for a fair line: only its length counts."""


def test_a_partition_is_held_only_once_the_window_is_full_and_its_line_holds_its_floor() -> None:
    window = ReadAhead(100)
    a, b = Line(range(90)), Line(range(9))
    window.track([a, b])
    assert not window.must_hold(len(a), floor=64), "99 held: room left"
    b.append(0)
    assert window.must_hold(len(a), floor=64), "100 held and a's line is past its floor"
    assert not window.must_hold(len(b), floor=64), "b's line is under its floor: it may always read"


def test_a_held_partition_fetches_again_once_the_total_drained_to_the_low_mark() -> None:
    window = ReadAhead(1000)
    line = Line(range(1000))
    window.track([line])
    assert window.low == 990, "a hundredth of the window below it"
    told: list[int] = []
    window.subscribe(lambda: told.append(len(line)))
    del line[-9:]
    window.drained()
    assert not window.may_fetch(len(line), floor=64) and told == [], "991: still above the low mark"
    del line[-1:]
    window.drained()
    assert window.may_fetch(len(line), floor=64) and told == [990]


def test_floors_and_bad_windows() -> None:
    assert floor_for(3) == MIN_FLOOR and floor_for(500) == 1000
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigError):
            ReadAhead(bad)  # type: ignore[arg-type]
