"""Spillover by capacity: when a model's line is long, its waiting jobs go to an equivalent model
with spare capacity. Pure: clocks are arguments.

Every dispatcher reports, once a second, how each of its dispatch partitions stands
(``LineReport``: free slots, orders waiting, the rate at which orders start: ``floodgate.pace``,
from the partition's own slots taken and given back). Every worker reads
every report (``streams.lines``), so a provider's dispatcher knows whether another provider has
room, whichever worker holds it.

A waiting order spills when all of these hold:

* its model names equivalents (``RoutingTable.spillover``) and it has not spilled before (it goes
  once, never back and forth);
* its estimated wait here, ``(place in line + 1) ÷ start rate``, exceeds the model's
  ``max_wait_s``;
* an equivalent model's first available provider has room for it (``Room.takes``): by its
  reports of the last ``FRESH_FOR`` seconds, a slot free for it, or a place in its line that
  starts within ``max_wait_s``. Counting the short line too keeps the equivalent's slots fed
  between two reports: with free slots alone, a slot freed there stays idle until the next report
  and spill reach it. Each spill takes a place, so one report never sends more orders than the
  room it showed; a moved order waits less there than ``max_wait_s``, and it would have waited
  more than that here.

The order is then a new attempt of its job at that provider, for the equivalent model: the
job's view says which model serves it and why.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from floodgate.errors import ValidationError
from floodgate.pace import estimated_wait
from floodgate.routing import RoutingTable, Target, chain_for

FRESH_FOR = 5.0
"""Seconds a line report counts: older ones say nothing about the provider's room now."""


@dataclass(frozen=True)
class LineReport:
    """How one dispatch partition of a provider stood at ``at`` (epoch seconds)."""

    provider: str
    partition: int
    free_slots: int
    waiting: int
    start_rate: float | None
    at: float

    def encode(self) -> bytes:
        return orjson.dumps({"provider": self.provider, "partition": self.partition, "free_slots": self.free_slots,
                             "waiting": self.waiting, "start_rate": self.start_rate, "at": self.at})

    @classmethod
    def decode(cls, raw: bytes) -> LineReport:
        """Raises ``ValueError`` for bytes that are not a report: not JSON, JSON but not an object
        (``null``, a number, a string, a list), or an object with a field missing or of the wrong
        type. Readers skip such a record: anyone can write to ``lines``."""
        doc = orjson.loads(raw)  # orjson.JSONDecodeError is a ValueError
        if not isinstance(doc, dict):
            raise ValueError(f"a line report is a JSON object, not {type(doc).__name__}")
        provider, rate = doc.get("provider"), doc.get("start_rate")
        if not isinstance(provider, str) or not provider:
            raise ValueError(f"a line report's provider is a non-empty string, not {provider!r}")
        return cls(provider=provider, partition=_whole(doc, "partition"), free_slots=_whole(doc, "free_slots"),
                   waiting=_whole(doc, "waiting"), start_rate=None if rate is None else _number(doc, "start_rate"),
                   at=_number(doc, "at"))


def _whole(doc: Mapping[str, object], name: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a line report's {name} is an integer, not {value!r}")
    return value


def _number(doc: Mapping[str, object], name: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a line report's {name} is a number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Room:
    """How a provider stands by its fresh reports, summed over its partitions: free slots, orders
    waiting (with those spilled to it since), and the rate its orders start at."""

    free_slots: int
    waiting: int
    start_rate: float | None

    def wait(self) -> float | None:
        """Seconds an order sent now would wait for its slot: 0 if one is free for it, None if
        unknown (no start rate yet)."""
        ahead = self.waiting - self.free_slots
        if ahead < 0:
            return 0.0
        return estimated_wait(ahead, self.start_rate)

    def takes(self, max_wait_s: float) -> bool:
        wait = self.wait()
        return wait is not None and wait <= max_wait_s

    def took_one(self) -> Room:
        return Room(self.free_slots, self.waiting + 1, self.start_rate)


def room_by_provider(reports: Iterable[LineReport], now: float) -> dict[str, Room]:
    """Per provider, how its fresh reports say it stands (summed over its partitions)."""
    out: dict[str, Room] = {}
    for report in reports:
        if now - report.at > FRESH_FOR:
            continue
        held = out.get(report.provider)
        if held is None:
            out[report.provider] = Room(report.free_slots, report.waiting, report.start_rate)
            continue
        rates = [rate for rate in (held.start_rate, report.start_rate) if rate is not None]
        out[report.provider] = Room(held.free_slots + report.free_slots, held.waiting + report.waiting,
                                    sum(rates) if rates else None)
    return out


@dataclass(frozen=True)
class Spill:
    model: str
    target: Target
    reason: str


def spill_to(routing: RoutingTable, model: str, wait: float | None, here: str, room: Mapping[str, Room],
             when: datetime) -> Spill | None:
    """Where an order of ``model`` waiting ``wait`` seconds at provider ``here`` should go, or None
    to stay. ``room``: how each provider stands (``room_by_provider``, with what was spilled since)."""
    rule = routing.spillover.get(model)
    if rule is None or wait is None or wait <= rule.max_wait_s:
        return None
    for other in rule.equivalents:
        try:
            chain = chain_for(routing, other, when)
        except ValidationError:  # every provider of that model is retired or disabled
            continue
        target = chain[0]
        there = room.get(target.provider)
        if target.provider != here and there is not None and there.takes(rule.max_wait_s):
            reason = (f"spilled from {model} at {here}: about {wait:.0f}s to wait there (max_wait_s "
                      f"{rule.max_wait_s:.0f}), {other} at {target.provider} had room")
            return Spill(other, target, reason)
    return None


__all__ = ["FRESH_FOR", "LineReport", "Room", "Spill", "estimated_wait", "room_by_provider", "spill_to"]
