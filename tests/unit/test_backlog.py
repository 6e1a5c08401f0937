"""The backlog guard's rules (lag, drain rate, verdict) and the ingress's admission checks, with a
probe and a clock of the test's own: no Kafka."""
from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from floodgate.api.admission import QUEUED_RETRY_AFTER, Admission
from floodgate.api.backlog import BacklogMonitor
from floodgate.backlog import (
    BacklogGuard,
    DrainRate,
    LineWait,
    estimated_wait,
    lag,
    line_drain_rate,
    line_waits,
    model_wait,
)
from floodgate.instances import Roster
from floodgate.metrics import ApiMetrics
from floodgate.problems import BACKLOG, QUEUED_QUOTA, RATE_QUOTA
from floodgate.quotas import JobsByTenant, OpenJobs, Quota, QuotaTable
from floodgate.routing import RoutingTable
from floodgate.spillover import FRESH_FOR, LineReport

# --- lag ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("end", "committed", "low", "expected"), [
    (10, 4, 0, 6), (10, None, 0, 10), (10, -1001, 3, 7), (10, 2, 5, 5), (10, 12, 0, 0), (0, None, 0, 0)])
def test_lag(end: int, committed: int | None, low: int, expected: int) -> None:
    assert lag(end, committed, low) == expected


def test_a_group_known_to_have_read_past_its_commit_lags_only_behind_what_it_read() -> None:
    assert lag(10, 4, 0, read_to=7) == 3  # read to 7, committed 4: three records unread
    assert lag(10, 8, 0, read_to=7) == 2  # a commit past what is known read counts as it is
    assert lag(10, None, 0, read_to=10) == 0


def test_open_jobs_keep_how_far_each_requests_partition_was_read_to_admit_them() -> None:
    jobs = OpenJobs()
    jobs.admitted({0: 4, 1: 9})
    jobs.admitted({0: 2, 1: 12})  # an older job's later change names its older request: no step back
    assert jobs.admitted_to == {0: 5, 1: 13}


# --- DrainRate -----------------------------------------------------------------------------------


def test_drain_rate_over_the_window() -> None:
    drain = DrainRate(window=60.0, min_span=5.0)
    assert drain.per_second() is None
    drain.sample(0.0, 100)
    drain.sample(2.0, 104)
    assert drain.per_second() is None  # two seconds say too little
    drain.sample(10.0, 120)
    assert drain.per_second() == pytest.approx(2.0)
    for t in range(11, 200):
        drain.sample(float(t), 120 + 5 * (t - 10))
    assert drain.per_second() == pytest.approx(5.0)  # the early, slower minute has left the window


def test_nothing_finished_is_an_unknown_rate_not_zero() -> None:
    drain = DrainRate(window=60.0, min_span=5.0)
    for t in range(0, 100, 5):
        drain.sample(float(t), 7)
    assert drain.per_second() is None
    assert estimated_wait(1000, drain.per_second()) is None


def test_a_count_that_goes_back_starts_over_and_a_still_clock_adds_nothing() -> None:
    drain = DrainRate(window=60.0, min_span=5.0)
    drain.sample(0.0, 100)
    drain.sample(10.0, 110)
    drain.sample(10.0, 500)  # the clock did not move
    assert drain.per_second() == pytest.approx(1.0)
    drain.sample(20.0, 3)  # the topic was recreated
    assert drain.per_second() is None


@given(st.lists(st.tuples(st.floats(0.1, 30), st.integers(0, 50)), min_size=1, max_size=200))
def test_the_rate_is_never_negative_and_the_window_is_bounded(steps: list[tuple[float, int]]) -> None:
    drain = DrainRate(window=60.0, min_span=5.0)
    now, total = 0.0, 0
    for gap, finished in steps:
        now, total = now + gap, total + finished
        drain.sample(now, total)
        rate = drain.per_second()
        assert rate is None or rate > 0
        assert len(drain._samples) <= 2 + int(60 / 0.1) + 1


def test_the_backlog_drains_at_the_pace_of_the_full_lines() -> None:
    now = 1_000.0
    reports = [LineReport("kling", 0, free_slots=0, waiting=40, start_rate=0.05, at=now),
               LineReport("kling", 1, free_slots=0, waiting=35, start_rate=0.04, at=now - 1),
               LineReport("wan", 0, free_slots=3, waiting=0, start_rate=0.5, at=now),  # room: no backlog there
               LineReport("veo", 0, free_slots=0, waiting=9, start_rate=None, at=now),  # pace not known yet
               LineReport("sora", 0, free_slots=0, waiting=9, start_rate=9.0, at=now - FRESH_FOR - 1)]  # stale
    assert line_drain_rate(reports, now) == pytest.approx(0.09)
    assert line_drain_rate(reports[2:], now) is None, "no full line with a known pace: the finished count decides"
    assert line_drain_rate([], now) is None


def test_estimated_wait() -> None:
    assert estimated_wait(100, 4.0) == 25.0
    assert estimated_wait(100, None) is None
    assert estimated_wait(100, 0.0) is None


# --- BacklogGuard --------------------------------------------------------------------------------


def test_no_bound_never_sheds() -> None:
    guard = BacklogGuard()
    assert not guard.enabled
    assert guard.verdict(10**9, 10**9, 0.001) is None


def test_depth_bound() -> None:
    guard = BacklogGuard(max_depth=100)
    assert guard.verdict(99, None, None) is None
    refusal = guard.verdict(120, None, 2.0)
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.type_) == (503, "backlog", BACKLOG)
    assert refusal.retry_after == pytest.approx(21 / 2.0)  # until the depth is back under the bound
    assert "120 jobs queued" in refusal.detail and "100" in refusal.detail


def test_wait_bound() -> None:
    guard = BacklogGuard(max_wait=300.0)
    assert guard.verdict(10_000, None, None) is None  # no drain seen: the wait is unknown, not infinite
    assert guard.verdict(500, 250.0, 2.0) is None
    refusal = guard.verdict(700, 350.0, 2.0)
    assert refusal is not None and refusal.retry_after == pytest.approx(50.5)
    assert "estimated wait of 350s" in refusal.detail


def test_unknown_figures_fail_open() -> None:
    assert BacklogGuard(max_depth=1, max_wait=1.0).verdict(None, None, None) is None


@given(depth=st.integers(0, 10**6), rate=st.one_of(st.none(), st.floats(1e-3, 1e3)))
def test_retry_after_stays_in_its_bounds(depth: int, rate: float | None) -> None:
    guard = BacklogGuard(max_depth=10, max_wait=60.0, min_retry_after=1.0, max_retry_after=300.0)
    refusal = guard.verdict(depth, estimated_wait(depth, rate), rate)
    assert (refusal is None) == (depth < 10 and (rate is None or depth / rate < 60.0))
    if refusal is not None:
        assert 1.0 <= refusal.retry_after <= 300.0 and math.isfinite(refusal.retry_after)


# --- BacklogMonitor and Admission, with a probe of the test's own --------------------------------------


class FakeProbe:
    def __init__(self) -> None:
        self._depth: int | None = 0
        self.rate: float | None = None
        self.lines: dict[str, LineWait] = {}
        self.fail = False
        self.closed = False

    def line_waits(self) -> dict[str, LineWait]:
        return self.lines

    async def refresh(self) -> None:
        if self.fail:
            self._depth = None
            raise RuntimeError("broker down")

    def depth(self) -> int | None:
        return self._depth

    def drain_rate(self) -> float | None:
        return self.rate

    def estimated_wait(self) -> float | None:
        return estimated_wait(self._depth or 0, self.rate)

    def close(self) -> None:
        self.closed = True


async def test_monitor_keeps_the_verdict_and_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe()
    monitor = BacklogMonitor(probe, BacklogGuard(max_depth=5), interval=3600)
    await monitor.refresh_once()
    assert monitor.refusal is None and monitor.refreshed.is_set()
    probe._depth = 5
    await monitor.refresh_once()
    assert monitor.refusal is not None and monitor.refusal.status == 503
    probe.fail = True
    with caplog.at_level(logging.WARNING):
        await monitor.refresh_once()
        await monitor.refresh_once()
    assert monitor.refusal is None
    assert sum("backlog figures unknown" in r.message for r in caplog.records) == 1  # once per outage
    monitor.start()
    await monitor.stop()
    assert probe.closed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admission_order_and_counting() -> None:
    jobs = OpenJobs()
    clock = Clock()
    table = QuotaTable(Quota(per_minute=2, queued=2), {"big": Quota(per_minute=0, queued=0)})
    admission = Admission(table, jobs, clock=clock)
    assert admission.check("a") is None
    jobs.observe("j1", "a", "queued", 0)  # its 202's put_local
    admission.settle("a")
    assert admission.check("a") is None  # second job: still writing
    refused = admission.check("a")
    assert refused is not None and refused.type_ == QUEUED_QUOTA and refused.limit == 2
    assert refused.retry_after == QUEUED_RETRY_AFTER
    admission.settle("a")  # the second was a 400 after all
    jobs.observe("j1", "a", "completed", 4)
    refused = admission.check("a")  # the queued quota passes; two requests this minute already
    assert refused is not None and refused.type_ == RATE_QUOTA and refused.retry_after == pytest.approx(30.0)
    clock.now += 30.0
    assert admission.check("a") is None
    admission.settle("a")
    assert all(admission.check("big") is None for _ in range(100))  # its own quota: no limit


def test_a_rate_refusal_gives_back_its_queued_place() -> None:
    jobs = OpenJobs()
    admission = Admission(QuotaTable(Quota(per_minute=1, queued=1)), jobs, clock=Clock())
    assert admission.check("a") is None
    admission.settle("a")  # answered (a 400): no job
    refused = admission.check("a")  # the queued quota has room; the rate does not
    assert refused is not None and refused.type_ == RATE_QUOTA
    assert admission.queued is not None and admission.queued.reserve("a", 1)  # nothing was left reserved


async def test_the_backlog_refuses_first_and_sets_the_queued_retry() -> None:
    probe = FakeProbe()
    probe._depth, probe.rate = 10, 0.5
    monitor = BacklogMonitor(probe, BacklogGuard(max_depth=10))
    await monitor.refresh_once()
    admission = Admission(QuotaTable(Quota(queued=1)), OpenJobs(), monitor, clock=Clock())
    refused = admission.check("a")
    assert refused is not None and refused.type_ == BACKLOG
    probe._depth = 0
    await monitor.refresh_once()
    assert admission.check("a") is None
    refused = admission.check("a")
    assert refused is not None and refused.type_ == QUEUED_QUOTA and refused.retry_after == 2.0  # 1 / 0.5


# --- the wait bound per line -------------------------------------------------------------------

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def report(provider: str, partition: int, free: int, rate: float | None, at: float = 100.0) -> LineReport:
    return LineReport(provider=provider, partition=partition, free_slots=free, waiting=0, start_rate=rate, at=at)


def test_a_line_waits_its_jobs_at_the_pace_of_its_full_partitions() -> None:
    reports = [report("kling", 0, 0, 0.5), report("kling", 1, 0, 1.5), report("kling", 2, 2, 9.0),
               report("wan", 0, 3, None), report("veo", 0, 0, None),
               report("old", 0, 0, 1.0, at=100.0 - FRESH_FOR - 1)]
    waits = line_waits({"kling": 100, "wan": 40, "veo": 5, "old": 7}, reports, now=100.0)
    assert waits["kling"] == LineWait("kling", 50.0, 100, 2.0)  # 100 jobs at the full partitions' 2/s
    assert waits["wan"] == LineWait("wan", 0.0, 40, None)  # a slot free in every partition: starts at once
    assert "veo" not in waits and "old" not in waits  # no pace yet; no fresh report: unknown


def routes(spillover: dict | None = None) -> RoutingTable:
    return RoutingTable.from_dict({
        "providers": {"kling": {"kind": "sim", "concurrency_limit": 10},
                      "wan": {"kind": "sim", "concurrency_limit": 5},
                      "veo": {"kind": "sim", "concurrency_limit": 5}},
        "routes": {"kling-2.1": [{"provider": "kling"}, {"provider": "wan"}],
                   "wan-2.6": [{"provider": "wan"}], "veo-3": [{"provider": "veo"}]},
        "spillover": spillover or {},
    })


def test_a_model_waits_in_its_first_providers_line_or_where_it_would_spill() -> None:
    waits = {"kling": LineWait("kling", 600.0, 1200, 2.0), "wan": LineWait("wan", 4.0, 8, 2.0),
             "veo": LineWait("veo", 1.0, 1, 1.0)}
    plain = routes()
    assert model_wait(plain, "kling-2.1", waits, NOW) == waits["kling"]  # the chain's next is fallback, not room
    assert model_wait(plain, "wan-2.6", waits, NOW) == waits["wan"]
    spilling = routes({"kling-2.1": {"equivalents": ["wan-2.6", "veo-3"], "max_wait_s": 30}})
    assert model_wait(spilling, "kling-2.1", waits, NOW) == waits["veo"]  # the shortest equivalent line
    short = {**waits, "kling": LineWait("kling", 20.0, 40, 2.0)}
    assert model_wait(spilling, "kling-2.1", short, NOW) == short["kling"]  # under max_wait_s: it stays
    assert model_wait(spilling, "kling-2.1", {"wan": waits["wan"]}, NOW) is None  # its own line unknown
    assert model_wait(plain, "nope", waits, NOW) is None


def test_the_wait_bound_sheds_only_past_it_and_says_when_to_come_back() -> None:
    guard = BacklogGuard(max_wait=60.0)
    assert guard.line_verdict("wan-2.6", LineWait("wan", 59.0, 118, 2.0)) is None
    assert guard.line_verdict("wan-2.6", None) is None  # unknown never sheds
    refused = guard.line_verdict("kling-2.1", LineWait("kling", 90.0, 180, 2.0))
    assert refused is not None and refused.status == 503 and refused.type_ == BACKLOG
    assert refused.retry_after == pytest.approx(30.5)  # back under the bound, plus one start
    assert refused.detail is not None and "kling-2.1" in refused.detail and "kling" in refused.detail
    assert BacklogGuard(max_depth=10).line_verdict("kling-2.1", LineWait("kling", 1e6, 10, 1.0)) is None


async def test_a_long_line_sheds_its_own_models_jobs_and_no_others() -> None:
    """kling's line is ten minutes long, wan's has room: jobs for wan are accepted, kling's are
    told when to come back; the whole backlog's wait (a long one) does not shed wan's."""
    probe = FakeProbe()
    probe._depth, probe.rate = 1208, 2.0  # a global wait of 604 s
    probe.lines = {"kling": LineWait("kling", 600.0, 1200, 2.0), "wan": LineWait("wan", 0.0, 8, None)}
    monitor = BacklogMonitor(probe, BacklogGuard(max_depth=100_000, max_wait=120.0), routing=routes(),
                             clock=lambda: NOW)
    await monitor.refresh_once()
    assert monitor.refusal is None  # the depth bound is not reached, and the wait is the lines'
    refused = monitor.refusal_for("kling-2.1")
    assert refused is not None and refused.retry_after == pytest.approx(300.0)
    assert monitor.refusal_for("wan-2.6") is None and monitor.refusal_for("veo-3") is None
    admission = Admission(QuotaTable(Quota()), OpenJobs(), monitor, clock=Clock())
    assert admission.check("a") is None and admission.check_model("wan-2.6") is None
    assert admission.check_model("kling-2.1") is refused
    # While no line's wait is known, the whole backlog's stands in, for every model.
    probe.lines = {}
    await monitor.refresh_once()
    assert monitor.refusal is not None and "604s" in (monitor.refusal.detail or "")
    assert monitor.refusal_for("kling-2.1") is None


async def test_the_line_wait_gauge_shows_only_the_lines_known_now() -> None:
    registry = CollectorRegistry()
    probe = FakeProbe()
    probe.lines = {"kling": LineWait("kling", 600.0, 1200, 2.0), "wan": LineWait("wan", 0.0, 8, None)}
    monitor = BacklogMonitor(probe, BacklogGuard(max_wait=120.0), ApiMetrics(registry), routing=routes(),
                             clock=lambda: NOW)
    await monitor.refresh_once()

    def shown(provider: str) -> float | None:
        return registry.get_sample_value("floodgate_backlog_line_wait_seconds", {"provider": provider})

    assert shown("kling") == 600.0 and shown("wan") == 0.0
    probe.lines = {"wan": LineWait("wan", 3.0, 6, 2.0)}  # kling's reports stopped
    await monitor.refresh_once()
    assert shown("kling") is None and shown("wan") == 3.0


def test_without_a_view_or_its_own_count_the_queued_quota_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        admission = Admission(QuotaTable(Quota(queued=1)), None, clock=Clock())
    assert admission.queued is None
    assert any("not enforced" in r.message for r in caplog.records)
    assert all(admission.check("a") is None for _ in range(10))


def test_without_a_view_the_queued_quota_counts_this_process_s_own_jobs_until_they_end() -> None:
    own = JobsByTenant()
    roster = Roster("me")
    admission = Admission(QuotaTable(Quota(queued=4)), None, clock=Clock(), roster=roster, own_jobs=own)
    assert admission.queued is not None
    roster.live = 2  # two processes take requests: 2 each
    for n in range(2):
        assert admission.check("a") is None
        admission.accepted(f"j{n}", "a")
        admission.settle("a")
    refused = admission.check("a")
    assert refused is not None and refused.status == 429 and refused.type_ == QUEUED_QUOTA and refused.limit == 4
    assert admission.check("b") is None  # another tenant's count is its own
    admission.settle("b")
    own.discard("j1")  # its result was read
    assert admission.check("a") is None


def test_without_a_view_only_limited_tenants_jobs_are_held() -> None:
    own = JobsByTenant()
    table = QuotaTable(Quota(), {"trial": Quota(queued=2)})
    admission = Admission(table, None, clock=Clock(), own_jobs=own)
    admission.accepted("j1", "trial")
    admission.accepted("j2", "acme")  # no queued limit: nothing to count it against
    assert (own.open_for("trial"), own.open_for("acme"), len(own)) == (1, 0, 1)


def test_with_a_view_the_queued_quota_ignores_its_own_count() -> None:
    jobs, own = OpenJobs(), JobsByTenant()
    admission = Admission(QuotaTable(Quota(queued=1)), jobs, clock=Clock(), own_jobs=own)
    assert admission.own_jobs is None  # the view counts every job; the accept path adds nothing
    admission.accepted("j1", "a")
    assert len(own) == 0
