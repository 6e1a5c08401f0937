"""Spillover by capacity: when a model's line is long, its waiting jobs go to an equivalent model
with spare capacity. Pure: clocks are arguments.

Every dispatcher reports, once a second, how each of its dispatch partitions stands
(``LineReport``: free slots, orders waiting, the rate at which orders start). Every worker reads
every report (``streams.lines``), so a provider's dispatcher knows whether another provider has
room, whichever worker holds it.

A waiting order spills when all of these hold:

* its model names equivalents (``RoutingTable.spillover``) and it has not spilled before (it goes
  once, never back and forth);
* its estimated wait here, ``(place in line + 1) ÷ start rate``, exceeds the model's
  ``max_wait_s``;
* an equivalent model's first available provider reported, within ``FRESH_FOR`` seconds, more
  free slots than orders waiting (``spare``); each spill uses one of those, so one report never
  sends more orders than the room it showed.

The order is then a new attempt of its job at that provider, for the equivalent model: the
job's view says which model serves it and why.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from floodgate.errors import ValidationError
from floodgate.routing import RoutingTable, Target, chain_for

FRESH_FOR = 5.0
"""Seconds a line report counts: older ones say nothing about the provider's room now."""
RATE_WINDOW = 60.0
"""Seconds of starts a start rate is measured over."""


@dataclass(frozen=True)
class LineReport:
    """How one dispatch partition of a provider stood at ``at`` (epoch seconds)."""

    provider: str
    partition: int
    free_slots: int
    waiting: int
    start_rate: float | None
    at: float

    @property
    def spare(self) -> int:
        return max(0, self.free_slots - self.waiting)

    def encode(self) -> bytes:
        return orjson.dumps({"provider": self.provider, "partition": self.partition, "free_slots": self.free_slots,
                             "waiting": self.waiting, "start_rate": self.start_rate, "at": self.at})

    @classmethod
    def decode(cls, raw: bytes) -> LineReport:
        """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for bytes that are not a report."""
        doc = orjson.loads(raw)
        rate = doc.get("start_rate")
        return cls(provider=str(doc["provider"]), partition=int(doc["partition"]), free_slots=int(doc["free_slots"]),
                   waiting=int(doc["waiting"]), start_rate=None if rate is None else float(rate), at=float(doc["at"]))


class StartRate:
    """Orders started per second at one dispatch partition, over the last ``RATE_WINDOW`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._starts: deque[float] = deque()

    def add(self, now: float) -> None:
        self._starts.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._starts and self._starts[0] < now - self.window:
            self._starts.popleft()

    def rate(self, now: float, *, at_least: int = 3) -> float | None:
        """Starts per second, or None before ``at_least`` starts were seen in the window."""
        self._trim(now)
        if len(self._starts) < at_least:
            return None
        return len(self._starts) / max(now - self._starts[0], 1.0)


def estimated_wait(place: int, start_rate: float | None) -> float | None:
    """Seconds until the order at ``place`` (0: next) starts, or None while the rate is unknown."""
    if not start_rate:
        return None
    return (place + 1) / start_rate


def spare_by_provider(reports: Iterable[LineReport], now: float) -> dict[str, int]:
    """Per provider, the spare room its fresh reports show (summed over its partitions)."""
    out: dict[str, int] = {}
    for report in reports:
        if now - report.at <= FRESH_FOR:
            out[report.provider] = out.get(report.provider, 0) + report.spare
    return out


@dataclass(frozen=True)
class Spill:
    model: str
    target: Target
    reason: str


def spill_to(routing: RoutingTable, model: str, wait: float | None, here: str, room: Mapping[str, int],
             when: datetime) -> Spill | None:
    """Where an order of ``model`` waiting ``wait`` seconds at provider ``here`` should go, or None
    to stay. ``room``: spare slots per provider (``spare_by_provider``, less what was spilled since)."""
    rule = routing.spillover.get(model)
    if rule is None or wait is None or wait <= rule.max_wait_s:
        return None
    for other in rule.equivalents:
        try:
            chain = chain_for(routing, other, when)
        except ValidationError:  # every provider of that model is retired or disabled
            continue
        target = chain[0]
        if target.provider != here and room.get(target.provider, 0) > 0:
            reason = (f"spilled from {model} at {here}: about {wait:.0f}s to wait there (max_wait_s "
                      f"{rule.max_wait_s:.0f}), {other} at {target.provider} had free slots")
            return Spill(other, target, reason)
    return None


__all__ = ["FRESH_FOR", "LineReport", "Spill", "StartRate", "estimated_wait", "spare_by_provider", "spill_to"]
