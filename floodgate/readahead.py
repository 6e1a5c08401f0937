"""How many waiting orders one worker holds in memory, over every provider's fair line. Pure.

While a provider's slots are full, its dispatch partitions read orders ahead into their fair
lines: the line can only interleave what it holds, so a tenant arriving behind another tenant's
burst must be read to be served before the rest of that burst. Each order held costs about a
kilobyte (decoded, with its waiting entry), while an order left in Kafka costs the worker
nothing. ``ReadAhead`` bounds the orders a worker holds in all its lines
(``FLOODGATE_FAIR_WINDOW``), however large the backlog and however it is spread over
providers, so a worker's memory is the same with ten thousand jobs queued as with a million.
The price: fair share reaches over the orders held, so a tenant arriving behind a burst larger
than the window waits until the part of the burst still in Kafka has been read.

A line may always hold its ``floor`` (see ``floor_for``): a provider with a short line keeps
its slots fed while another provider's backlog fills the window. A partition held for the
window is let go once the total has drained to ``low``, a hundredth of the window below it:
fetching resumes in steps rather than on every order started, and in small steps, because a
tenant whose orders sit in Kafka behind a burst that overflowed the window is read only as the
lines drain, one step at a time.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sized

from floodgate.errors import ConfigError

MIN_FLOOR = 64
"""Orders any line may hold, whatever the window: enough to fill a small provider's slots twice."""


def floor_for(slots: int) -> int:
    """Orders a line of a partition with ``slots`` slots may hold even when the window is full:
    every slot that frees has an order waiting for it, and another behind."""
    return max(MIN_FLOOR, 2 * slots)


class ReadAhead:
    def __init__(self, window: int) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"the read-ahead window must be an integer >= 1, got {window!r}")
        self.window = window
        self.low = window - max(1, window // 100) if window > 1 else 0
        self._lines: list[Sized] = []
        self._on_room: list[Callable[[], None]] = []

    def track(self, lines: Iterable[Sized]) -> None:
        """Count ``lines`` (each a line's waiting orders) against the window."""
        self._lines.extend(lines)

    def subscribe(self, on_room: Callable[[], None]) -> None:
        """Call ``on_room()`` whenever the total has drained to ``low`` (``drained``): let go what
        was held for the window."""
        self._on_room.append(on_room)

    def held(self) -> int:
        """Orders held in all tracked lines (a sum over a handful of lines: cheap)."""
        return sum(len(line) for line in self._lines)

    def must_hold(self, in_line: int, floor: int) -> bool:
        """Should a partition whose line holds ``in_line`` orders stop fetching? Only once it holds
        its ``floor`` and the window is full."""
        return in_line >= floor and self.held() >= self.window

    def may_fetch(self, in_line: int, floor: int) -> bool:
        """May a partition held for the window fetch again? Once its line is under its floor, or
        the total has drained to ``low``."""
        return in_line < floor or self.held() <= self.low

    def drained(self) -> None:
        """A line got shorter: if the total is down to ``low``, tell every subscriber."""
        if self._on_room and self.held() <= self.low:
            for on_room in self._on_room:
                on_room()


__all__ = ["MIN_FLOOR", "ReadAhead", "floor_for"]
