"""The API processes sharing the tenants' rate quotas: heartbeats, the roster that counts them,
and each process's share of a quota (``RateQuota`` with ``instances``); no broker."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.api.admission import Admission
from floodgate.errors import ConfigError
from floodgate.instances import TTL_BEATS, Heartbeat, Roster
from floodgate.quotas import WINDOW, Quota, QuotaTable, RateQuota
from floodgate.settings import Settings

# --- Heartbeat -----------------------------------------------------------------------------


def test_a_heartbeat_reads_back_as_written() -> None:
    beat = Heartbeat("host-1-42-ab", 1_700_000_000_123, 2.0, gone=False)
    assert Heartbeat.decode(beat.encode()) == beat
    assert Heartbeat.decode(Heartbeat("x", 5, 0.5, gone=True).encode()).gone


@pytest.mark.parametrize("raw, field", [
    (b"not json", "JSON"),
    (b"[]", "object"),
    (b'{"instance": "", "at_ms": 1, "interval": 2.0, "gone": false}', "instance"),
    (b'{"instance": "a", "at_ms": "1", "interval": 2.0, "gone": false}', "at_ms"),
    (b'{"instance": "a", "at_ms": true, "interval": 2.0, "gone": false}', "at_ms"),
    (b'{"instance": "a", "at_ms": 1, "interval": 0, "gone": false}', "interval"),
    (b'{"instance": "a", "at_ms": 1, "interval": 2.0, "gone": "no"}', "gone"),
])
def test_a_malformed_heartbeat_is_refused_naming_what_is_wrong(raw: bytes, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Heartbeat.decode(raw)


# --- Roster --------------------------------------------------------------------------------

WALL = 1_700_000_000_000


def beat(instance: str, at_ms: int = WALL, interval: float = 2.0, gone: bool = False) -> Heartbeat:
    return Heartbeat(instance, at_ms, interval, gone)


def test_a_process_alone_counts_itself() -> None:
    roster = Roster("me")
    assert roster.live == 1 and roster.refresh(0.0) == 1
    roster.heard(beat("me"), 0.0, WALL)  # its own beat, read back
    assert roster.live == 1
    with pytest.raises(ConfigError):
        Roster("")


def test_others_count_while_they_beat_and_stop_counting_a_time_to_live_after_their_last() -> None:
    roster = Roster("me")
    roster.heard(beat("b"), 100.0, WALL)
    roster.heard(beat("c"), 100.0, WALL)
    assert roster.live == 3 and roster.others() == ["b", "c"]
    ttl = TTL_BEATS * 2.0
    roster.heard(beat("b", WALL + 4000), 104.0, WALL + 4000)  # b beats on, c has crashed
    assert roster.refresh(100.0 + ttl) == 3, "within c's time to live"
    assert roster.refresh(100.0 + ttl + 0.01) == 2 and roster.others() == ["b"]
    assert roster.refresh(104.0 + ttl + 0.01) == 1


def test_a_process_s_rank_is_its_place_among_the_live_ids() -> None:
    roster = Roster("m")
    assert roster.rank == 0
    roster.heard(beat("z"), 0.0, WALL)
    roster.heard(beat("a"), 0.0, WALL)
    assert (roster.live, roster.rank) == (3, 1), "a, m, z"
    roster.heard(beat("a", gone=True), 0.5, WALL + 500)
    assert (roster.live, roster.rank) == (2, 0)


def test_a_process_that_says_it_is_gone_stops_counting_at_once() -> None:
    roster = Roster("me")
    roster.heard(beat("b"), 0.0, WALL)
    assert roster.live == 2
    roster.heard(beat("b", gone=True), 0.5, WALL + 500)
    assert roster.live == 1


def test_a_beat_already_past_its_time_to_live_when_read_says_nothing() -> None:
    """Read back at start from the topic's last minute: a process that stopped beating 7 s ago
    (time to live 6 s) is not counted, one that beat 5 s ago is, until its time runs out."""
    roster = Roster("me")
    roster.heard(beat("dead", WALL - 7000), 50.0, WALL)
    roster.heard(beat("alive", WALL - 5000), 50.0, WALL)
    assert roster.others() == ["alive"]


def test_the_time_to_live_follows_each_process_s_own_interval() -> None:
    roster = Roster("me")
    roster.heard(beat("slow", interval=10.0), 0.0, WALL)
    assert roster.refresh(29.9) == 2 and roster.refresh(30.1) == 1


# --- RateQuota's share ---------------------------------------------------------------------


def test_one_instance_is_the_whole_quota() -> None:
    shared, alone = RateQuota(), RateQuota()
    for t in [0.0, 0.0, 0.0, 1.0, 9.0, 10.0, 10.0, 31.0]:
        assert shared.take("a", 6, t, 1) == alone.take("a", 6, t)


def test_each_of_three_processes_takes_a_third_burst_then_a_third_pace() -> None:
    rate = RateQuota()
    assert [rate.take("a", 30, 0.0, 3) for _ in range(11)][:10] == [0.0] * 10
    assert rate.take("a", 30, 0.0, 3) == pytest.approx(6.0)  # 60 s × 3 / 30
    assert rate.take("a", 30, 6.0, 3) == 0.0


def test_a_share_under_one_request_a_minute_still_lets_one_through_per_interval() -> None:
    """2 a minute over 4 processes: each lets one request through every 120 s, so together they
    never exceed one every 30 s on average, and none refuses for ever."""
    rate = RateQuota()
    assert rate.take("a", 2, 0.0, 4) == 0.0
    assert rate.take("a", 2, 1.0, 4) == pytest.approx(119.0)
    assert rate.take("a", 2, 120.0, 4) == 0.0


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(1, 600), instances=st.integers(1, 8), rate_per_s=st.floats(0.5, 200.0),
       seconds=st.floats(1.0, 300.0))
def test_processes_fed_in_turn_admit_no_more_than_the_limit_together(limit: int, instances: int,
                                                                     rate_per_s: float, seconds: float) -> None:
    """A balancer that hands requests to the processes in turn: however fast the tenant sends,
    together they admit at most what one process with the whole quota would (``limit × (1 + T /
    60)`` in ``T`` seconds), plus, for a share under one request, one per process."""
    processes = [RateQuota() for _ in range(instances)]
    admitted, turn = 0, itertools.cycle(processes)
    for n in range(int(rate_per_s * seconds)):
        admitted += next(turn).take("a", limit, n / rate_per_s, instances) == 0.0
    bound = limit * (1 + seconds / WINDOW)
    assert admitted <= bound + (instances if limit < instances else 0) + instances  # + one each at the edge


def test_admission_divides_by_the_processes_its_roster_counts() -> None:
    roster = Roster("me")
    admission = Admission(QuotaTable(Quota(per_minute=4)), None, clock=lambda: 0.0, roster=roster)
    roster.heard(beat("b"), 0.0, WALL)
    outcomes = [admission.check("acme") for _ in range(3)]
    assert [o is None for o in outcomes] == [True, True, False], "two of four: the other process has two"
    assert outcomes[2] is not None and outcomes[2].status == 429 and outcomes[2].limit == 4
    alone = Admission(QuotaTable(Quota(per_minute=4)), None, clock=lambda: 0.0)
    assert [alone.check("acme") is None for _ in range(5)] == [True] * 4 + [False]


def test_quota_scope_and_heartbeat_are_checked() -> None:
    assert Settings().quota_scope == "cluster"
    with pytest.raises(ConfigError, match="QUOTA_SCOPE"):
        Settings(quota_scope="global").validate()
    with pytest.raises(ConfigError, match="INSTANCE_HEARTBEAT"):
        Settings(instance_heartbeat=0).validate()
