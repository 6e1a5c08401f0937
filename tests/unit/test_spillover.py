"""Spillover by capacity: the routing table's rules, line reports, start rates and the choice."""
from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from floodgate.errors import ConfigError
from floodgate.routing import RoutingTable
from floodgate.spillover import LineReport, Room, estimated_wait, room_by_provider, spill_to

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def table(spillover: dict | None = None, **providers: dict) -> RoutingTable:
    return RoutingTable.from_dict({
        "providers": {"kling": {"kind": "sim", "concurrency_limit": 10},
                      "wan": {"kind": "sim", "concurrency_limit": 5},
                      "veo": {"kind": "sim", "concurrency_limit": 5, "enabled": False}, **providers},
        "routes": {"kling-2.1": [{"provider": "kling"}, {"provider": "wan"}],
                   "wan-2.6": [{"provider": "wan"}],
                   "veo-3": [{"provider": "veo"}]},
        "spillover": spillover if spillover is not None else {
            "kling-2.1": {"equivalents": ["veo-3", "wan-2.6"], "max_wait_s": 30}},
    })


@pytest.mark.parametrize(("rules", "message"), [
    ({"nope": {"equivalents": ["wan-2.6"], "max_wait_s": 3}}, "spillover.nope: not a routed model"),
    ({"kling-2.1": {"equivalents": ["kling-2.1"], "max_wait_s": 3}}, "equivalents[0]"),
    ({"kling-2.1": {"equivalents": [], "max_wait_s": 3}}, "non-empty list"),
    ({"kling-2.1": {"equivalents": ["wan-2.6"], "max_wait_s": 0}}, "max_wait_s"),
    ({"kling-2.1": {"equivalents": ["wan-2.6"]}}, "max_wait_s: missing"),
])
def test_bad_rules_are_refused_naming_the_place(rules: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        table(rules)


FREE = Room(free_slots=2, waiting=0, start_rate=None)


def test_a_long_wait_spills_to_the_first_equivalent_with_room() -> None:
    routing = table()
    room = {"wan": FREE, "kling": Room(5, 0, None)}
    spill = spill_to(routing, "kling-2.1", 45.0, "kling", room, NOW)
    assert spill is not None and spill.model == "wan-2.6" and spill.target.provider == "wan"  # veo is disabled
    assert "45s" in spill.reason and "max_wait_s 30" in spill.reason


@pytest.mark.parametrize(("model", "wait", "room"), [
    ("kling-2.1", 29.0, {"wan": FREE}),                   # short enough: stays
    ("kling-2.1", None, {"wan": FREE}),                   # rate unknown: stays
    ("kling-2.1", 90.0, {"wan": Room(0, 0, None)}),       # no slot free, rate unknown there
    ("kling-2.1", 90.0, {"wan": Room(0, 30, 1.0)}),       # 31 s to wait there, past max_wait_s 30
    ("kling-2.1", 90.0, {}),                              # no fresh report
    ("wan-2.6", 900.0, {"kling": Room(9, 0, None)}),      # no rule for this model
])
def test_orders_stay_unless_all_conditions_hold(model: str, wait: float | None, room: dict[str, Room]) -> None:
    assert spill_to(table(), model, wait, "kling", room, NOW) is None


def test_a_short_line_at_the_equivalent_is_room_too() -> None:
    """No slot free at wan, but an order sent there starts within max_wait_s: it goes (wan's slots
    are fed between reports instead of idling until the next one)."""
    there = Room(free_slots=0, waiting=28, start_rate=1.0)  # 29 s to wait there
    assert there.wait() == pytest.approx(29.0) and there.takes(30.0)
    spill = spill_to(table(), "kling-2.1", 45.0, "kling", {"wan": there}, NOW)
    assert spill is not None and spill.target.provider == "wan"
    assert not there.took_one().took_one().takes(30.0), "each spill takes a place: 31 s is past it"
    assert Room(3, 1, None).wait() == 0.0 and Room(3, 3, None).wait() is None


def test_room_counts_fresh_reports_only_and_sums_partitions() -> None:
    reports = [LineReport("wan", 0, free_slots=3, waiting=1, start_rate=1.0, at=100.0),
               LineReport("wan", 1, free_slots=2, waiting=0, start_rate=0.5, at=101.0),
               LineReport("veo", 0, free_slots=0, waiting=4, start_rate=None, at=101.0),
               LineReport("kling", 0, free_slots=9, waiting=0, start_rate=None, at=90.0)]
    assert room_by_provider(reports, now=102.0) == {"wan": Room(5, 1, 1.5), "veo": Room(0, 4, None)}
    assert LineReport.decode(reports[0].encode()) == reports[0]


GOOD = {"provider": "wan", "partition": 0, "free_slots": 2, "waiting": 1, "start_rate": None, "at": 100.0}


@pytest.mark.parametrize("raw", [
    b"null", b"5", b'"wan"', b"[1]",  # JSON, but not an object
    b"{", b"",                        # not JSON
    orjson.dumps({k: v for k, v in GOOD.items() if k != "at"}),
    orjson.dumps({**GOOD, "provider": None}),
    orjson.dumps({**GOOD, "provider": ""}),
    orjson.dumps({**GOOD, "partition": "0"}),
    orjson.dumps({**GOOD, "free_slots": True}),
    orjson.dumps({**GOOD, "waiting": 1.5}),
    orjson.dumps({**GOOD, "start_rate": "fast"}),
    orjson.dumps({**GOOD, "at": [100.0]}),
], ids=["null", "number", "string", "list", "truncated", "empty", "no-at", "provider-null", "provider-empty",
        "partition-string", "free-slots-bool", "waiting-float", "rate-string", "at-list"])
def test_anything_but_a_report_is_refused_with_a_value_error(raw: bytes) -> None:
    """Readers of ``lines`` skip what raises ValueError: nothing else may come out of a bad record."""
    with pytest.raises(ValueError):
        LineReport.decode(raw)


def test_a_report_decodes_with_or_without_a_start_rate() -> None:
    assert LineReport.decode(orjson.dumps(GOOD)) == LineReport("wan", 0, 2, 1, None, 100.0)
    assert LineReport.decode(orjson.dumps({**GOOD, "start_rate": 2, "at": 7})) == LineReport("wan", 0, 2, 1, 2.0, 7.0)


def test_estimated_wait_is_places_over_the_start_rate() -> None:
    assert estimated_wait(9, 2.0) == 5.0 and estimated_wait(0, 0.5) == 2.0
    assert estimated_wait(9, None) is None and estimated_wait(9, 0.0) is None