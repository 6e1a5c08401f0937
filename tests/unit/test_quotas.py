"""Per-tenant quotas: the rate rule (GCRA) with an injected clock, open-job counting, the queued
quota's reservations, the quota table and its settings, and the refusal's headers."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from floodgate.errors import ConfigError
from floodgate.problems import QUEUED_QUOTA, RATE_QUOTA
from floodgate.quotas import (
    WINDOW,
    JobsByTenant,
    OpenJobs,
    QueuedQuota,
    Quota,
    QuotaTable,
    RateQuota,
    Refusal,
    part_of,
    queued_refusal,
    rate_refusal,
    share,
)
from floodgate.settings import Settings

# --- RateQuota ---------------------------------------------------------------------------


def test_a_burst_of_the_limit_passes_then_one_per_interval() -> None:
    rate = RateQuota()
    assert all(rate.take("a", 6, 100.0) == 0.0 for _ in range(6))
    wait = rate.take("a", 6, 100.0)
    assert wait == pytest.approx(10.0)  # 60 s / 6
    assert rate.take("a", 6, 105.0) == pytest.approx(5.0)  # refused requests consume nothing
    assert rate.take("a", 6, 110.0) == 0.0
    assert rate.take("a", 6, 110.0) == pytest.approx(10.0)


def test_tenants_have_separate_allowances() -> None:
    rate = RateQuota()
    assert rate.take("a", 1, 0.0) == 0.0
    assert rate.take("a", 1, 0.0) > 0
    assert rate.take("b", 1, 0.0) == 0.0


def test_no_limit_always_passes() -> None:
    rate = RateQuota()
    assert all(rate.take("a", 0, 0.0) == 0.0 for _ in range(10_000))


def test_a_clock_that_steps_back_never_gives_more() -> None:
    rate = RateQuota()
    assert rate.take("a", 2, 1000.0) == 0.0
    assert rate.take("a", 2, 1000.0) == 0.0
    assert rate.take("a", 2, 900.0) > 0


def test_the_wait_is_exact() -> None:
    rate = RateQuota()
    for _ in range(3):
        rate.take("a", 3, 0.0)
    wait = rate.take("a", 3, 0.0)
    assert rate.take("a", 3, wait - 1e-6) > 0
    assert rate.take("a", 3, wait) == 0.0


@settings(max_examples=300)
@given(limit=st.integers(1, 50), gaps=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=300),
       window=st.floats(1, 200))
def test_never_more_than_the_limit_plus_the_rate_in_any_window(limit: int, gaps: list[float], window: float) -> None:
    rate = RateQuota()
    now, passed = 0.0, []
    for gap in gaps:
        now += gap
        if rate.take("t", limit, now) == 0.0:
            passed.append(now)
    bound = limit * (1 + window / WINDOW) + 1e-9
    for i, start in enumerate(passed):
        inside = sum(1 for t in passed[i:] if t < start + window)
        assert inside <= bound


@given(limit=st.integers(1, 50), arrivals=st.lists(st.floats(0, 600, allow_nan=False), max_size=200))
def test_a_request_told_to_wait_passes_after_that_wait(limit: int, arrivals: list[float]) -> None:
    rate = RateQuota()
    for now in sorted(arrivals):
        rate.take("t", limit, now)
    end = max(arrivals, default=0.0)
    wait = rate.take("t", limit, end)
    if wait > 0:
        assert rate.take("t", limit, end + wait) == 0.0


# --- OpenJobs and QueuedQuota --------------------------------------------------------------


def test_open_jobs_count_from_first_sight_to_the_first_end() -> None:
    jobs = OpenJobs()
    jobs.observe("j1", "a", "queued", 0)  # the ingress's own, right after its 202
    jobs.observe("j2", "a", "queued", 1)
    jobs.observe("j3", "b", "running", 3)
    assert (jobs.open_for("a"), jobs.open_for("b"), len(jobs)) == (2, 1, 3)
    assert jobs.waiting == 1  # only admitted jobs still queued
    jobs.observe("j1", "a", "queued", 1)
    assert jobs.waiting == 2 and jobs.open_for("a") == 2
    jobs.observe("j1", "a", "submitted", 2)
    assert jobs.waiting == 1
    jobs.observe("j1", "a", "completed", 5)
    jobs.observe("j1", "a", "completed", 6)  # a later version of an ended job changes nothing
    assert jobs.open_for("a") == 1 and jobs.waiting == 1
    jobs.observe("j2", "a", "cancelled", 2)
    jobs.observe("j3", "b", "failed", 4)
    assert (jobs.open_for("a"), jobs.open_for("b"), len(jobs), jobs.waiting) == (0, 0, 0, 0)


def test_a_job_seen_only_ended_never_counts() -> None:
    jobs = OpenJobs()
    jobs.observe("j1", "a", "completed", 4)  # a view rebuilt from the compacted topic
    assert jobs.open_for("a") == 0 and len(jobs) == 0


def test_a_rerouted_job_waits_again() -> None:
    jobs = OpenJobs()
    jobs.observe("j1", "a", "submitted", 2)
    jobs.observe("j1", "a", "queued", 3)
    assert jobs.waiting == 1


@given(st.lists(st.tuples(st.sampled_from(["j1", "j2", "j3", "j4"]), st.sampled_from(["a", "b"]),
                          st.sampled_from(["queued", "submitted", "running", "completed", "failed", "cancelled"])),
                max_size=60))
def test_open_counts_match_a_recount(events: list[tuple[str, str, str]]) -> None:
    jobs = OpenJobs()
    owner: dict[str, str] = {}
    ended: set[str] = set()
    for version, (job_id, tenant, status) in enumerate(events):
        if job_id in ended:
            continue  # the state machine never leaves a terminal state
        jobs.observe(job_id, owner.setdefault(job_id, tenant), status, version)
        if status in ("completed", "failed", "cancelled"):
            ended.add(job_id)
    for tenant in ("a", "b"):
        assert jobs.open_for(tenant) == sum(1 for j, t in owner.items() if t == tenant and j not in ended)


def test_queued_quota_counts_requests_on_their_way() -> None:
    jobs = OpenJobs()
    quota = QueuedQuota(jobs)
    jobs.observe("j1", "a", "queued", 1)
    assert quota.reserve("a", 3) and quota.reserve("a", 3)  # two requests writing concurrently
    assert not quota.reserve("a", 3)
    assert quota.reserve("b", 3)
    quota.settle("a")  # one was refused downstream (a 400): its place frees
    assert quota.reserve("a", 3)
    for _ in range(3):
        quota.settle("a")
    quota.settle("a")  # more settles than reserves never go negative
    assert quota.reserve("a", 2) and not quota.reserve("a", 2)


def test_queued_quota_without_a_limit_never_refuses() -> None:
    quota = QueuedQuota(OpenJobs())
    assert all(quota.reserve("a", 0) for _ in range(1000))


def test_jobs_by_tenant_counts_each_job_once_and_forgets_unknown_ends() -> None:
    jobs = JobsByTenant()
    jobs.add("j1", "a")
    jobs.add("j1", "a")  # a second 202 for one job id (an Idempotency-Key replay) is one job
    jobs.add("j2", "a")
    jobs.add("j3", "b")
    assert (jobs.open_for("a"), jobs.open_for("b"), len(jobs)) == (2, 1, 3)
    jobs.discard("elsewhere")  # the end of a job another process accepted
    jobs.discard("j1")
    jobs.discard("j1")  # a redelivered result
    assert (jobs.open_for("a"), jobs.open_for("b"), len(jobs)) == (1, 1, 2)
    jobs.discard("j3")
    assert jobs.open_for("b") == 0 and len(jobs) == 1


@pytest.mark.parametrize(("limit", "instances", "each"), [(10, 1, 10), (10, 2, 5), (10, 3, 3), (10, 4, 2),
                                                          (2, 3, 1), (1, 1, 1), (5, 0, 5)])
def test_a_share_is_the_limit_divided_rounded_down_but_at_least_one(limit: int, instances: int, each: int) -> None:
    assert share(limit, instances) == each


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_shares_add_up_to_no_more_than_the_limit_unless_each_has_one(limit: int, instances: int) -> None:
    total = share(limit, instances) * instances
    assert total <= limit or share(limit, instances) == 1
    assert share(limit, instances) >= 1


def test_a_shared_queued_quota_holds_this_process_to_its_share() -> None:
    own = JobsByTenant()
    processes = [3]
    quota = QueuedQuota(own, lambda: processes[0])
    for n in range(3):  # 10 ÷ 3 processes: 3 each
        assert quota.reserve("a", 10)
        own.add(f"j{n}", "a")
        quota.settle("a")
    assert not quota.reserve("a", 10)
    processes[0] = 2  # one process stopped: the share grows to 5
    assert quota.reserve("a", 10) and quota.reserve("a", 10)
    assert not quota.reserve("a", 10)
    own.discard("j0")
    assert quota.reserve("a", 10)


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_parts_add_up_to_the_limit_exactly(limit: int, instances: int) -> None:
    parts = [part_of(limit, instances, rank) for rank in range(instances)]
    assert sum(parts) == limit and max(parts) - min(parts) <= 1


class Process:
    """One API process with a job view: its count of open jobs and its queued-jobs quota."""

    def __init__(self, rank: int, instances: int) -> None:
        self.jobs = OpenJobs()
        self.quota = QueuedQuota(self.jobs, lambda: instances, admitted=self.jobs, rank=lambda: rank)

    def post(self, job_id: str, limit: int) -> bool:
        """A request: reserved, then (on a 202) the ingress's own snapshot, version 0, then settled."""
        if not self.quota.reserve("a", limit):
            return False
        self.jobs.observe(job_id, "a", "queued", 0)
        self.quota.settle("a")
        return True


def test_processes_sharing_a_job_view_hold_a_tenant_to_its_limit_before_any_job_is_admitted() -> None:
    """Until a worker admits a job only the process that answered its 202 knows of it: each
    process holding the whole limit let a tenant spread over two have twice its limit."""
    one, two = Process(0, 2), Process(1, 2)
    accepted = [job for n in range(20) if (one, two)[n % 2].post(job := f"j{n}", 5)]
    assert len(accepted) == 5, accepted
    for job in accepted:  # admitted: every process's view has them now
        for process in (one, two):
            process.jobs.observe(job, "a", "queued", 1)
    assert not one.post("late-1", 5) and not two.post("late-2", 5), "at the limit everywhere"
    for process in (one, two):
        process.jobs.observe(accepted[0], "a", "completed", 2)
    assert not two.post("x", 5), "one place free: rank 0's part"
    assert one.post("y", 5)


def test_one_process_with_a_job_view_has_the_whole_limit() -> None:
    alone = Process(0, 1)
    assert sum(alone.post(f"j{n}", 5) for n in range(8)) == 5


# --- QuotaTable and settings ----------------------------------------------------------------


def test_overrides_keep_the_defaults_other_limit() -> None:
    table = QuotaTable.build(Quota(per_minute=60, queued=100), {"acme": "600"}, {"beta": "0"})
    assert table.for_tenant("acme") == Quota(600, 100)
    assert table.for_tenant("beta") == Quota(60, 0)
    assert table.for_tenant("other") == Quota(60, 100)
    assert table.limits_rate and table.limits_queued


def test_an_empty_table_limits_nothing() -> None:
    table = QuotaTable()
    assert not table.limits_rate and not table.limits_queued


def test_one_override_is_enough_to_limit() -> None:
    assert QuotaTable.build(Quota(), {}, {"acme": "5"}).limits_queued


@pytest.mark.parametrize("bad", ["x", "-1", "1.5"])
def test_bad_override_numbers_are_named(bad: str) -> None:
    with pytest.raises(ConfigError, match="WHERE_RATE"):
        QuotaTable.build(Quota(), {"acme": bad}, {}, where=("WHERE_RATE", "WHERE_QUEUED"))


def test_settings_parse_quotas_like_other_tenant_maps() -> None:
    settings = Settings.from_env({
        "FLOODGATE_API_KEYS": "k1=acme,k2=beta",
        "FLOODGATE_TENANT_RATE_LIMIT": "120", "FLOODGATE_TENANT_RATE_LIMITS": "acme=6000, beta=0",
        "FLOODGATE_TENANT_QUEUED_LIMIT": "50", "FLOODGATE_TENANT_QUEUED_LIMITS": "beta=5"})
    table = settings.quota_table
    assert table.for_tenant("acme") == Quota(6000, 50)
    assert table.for_tenant("beta") == Quota(0, 5)
    assert table.for_tenant("default") == Quota(120, 50)
    open_api = Settings.from_env({"FLOODGATE_TENANT_QUEUED_LIMITS": "default=3"})
    assert open_api.quota_table.for_tenant("default") == Quota(0, 3)


@pytest.mark.parametrize(("env", "named"), [
    ({"FLOODGATE_TENANT_RATE_LIMITS": "acme"}, "FLOODGATE_TENANT_RATE_LIMITS"),
    ({"FLOODGATE_TENANT_QUEUED_LIMITS": "acme=lots"}, "FLOODGATE_TENANT_QUEUED_LIMITS"),
    ({"FLOODGATE_TENANT_RATE_LIMIT": "-5"}, "FLOODGATE_TENANT_RATE_LIMIT"),
    ({"FLOODGATE_BACKLOG_MAX_WAIT": "-1"}, "FLOODGATE_BACKLOG_MAX_WAIT"),
    ({"FLOODGATE_BACKLOG_REFRESH": "0"}, "FLOODGATE_BACKLOG_REFRESH"),
    ({"FLOODGATE_API_KEYS": "k1=acme", "FLOODGATE_TENANT_RATE_LIMITS": "acmee=5"}, "acmee"),
    ({"FLOODGATE_TENANT_QUEUED_LIMITS": "acme=5"}, "acme"),  # without keys the only tenant is 'default'
])
def test_bad_quota_settings_fail_at_start(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


# --- Refusal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    assert rate_refusal(5, seconds).retry_after_header == header


def test_refusals_name_their_quota_and_limit() -> None:
    rate = rate_refusal(60, 3.0)
    queued = queued_refusal(10, 5.0)
    assert (rate.status, rate.reason, rate.type_, rate.limit) == (429, "quota", RATE_QUOTA, 60)
    assert "60 job requests per minute" in rate.detail
    assert (queued.status, queued.type_, queued.limit) == (429, QUEUED_QUOTA, 10)
    assert "10 jobs" in queued.detail
    assert isinstance(rate, Refusal)


# --- The job view feeds OpenJobs -------------------------------------------------------------------


def _snap(job_id: str, version: int, status: str, tenant: str = "acme") -> dict[str, object]:
    return {"job_id": job_id, "tenant": tenant, "status": status, "version": version}


def test_the_job_view_keeps_count_through_eviction_and_redelivery() -> None:
    from floodgate.api.view import JobView

    view = JobView(max_jobs=2)  # no spill: evicted snapshots are gone, counts are not
    for i in range(5):
        view.apply(_snap(f"j{i}", 0, "queued"))
    assert len(view) == 2 and view.open_jobs.open_for("acme") == 5
    view.apply(_snap("j0", 1, "queued"))
    view.apply(_snap("j0", 1, "queued"))  # redelivered: not newer, not counted again
    assert view.open_jobs.waiting == 1
    view.apply(_snap("j0", 4, "completed"))
    view.apply(_snap("j1", 3, "failed"))
    view.apply(_snap("j9", 2, "running", tenant="globex"))
    assert view.open_jobs.open_for("acme") == 3 and view.open_jobs.open_for("globex") == 1
    assert view.open_jobs.waiting == 0
