"""The pure parts of issue 9's bench rows: pairing completions with the next submissions, the
backlog window, records and hops per job, 2 workers over 1, CPU per request, the CPU split for
pinning, and the rows' judgements."""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate.bench import affinity, cost, limits, markdown, probes, stats, targets
from floodgate.bench.accept import cpu_ms_per_request
from floodgate.bench.handover import backlog_end, handovers, utilisation


# -- handover pairing -----------------------------------------------------------------------
def test_each_completion_takes_the_first_later_submission_once() -> None:
    # Two initial submissions (0.0, 0.1), then each completion frees a slot for the next one.
    created = [0.0, 0.1, 1.010, 1.020, 1.600]
    done = [1.000, 1.005, 1.590]
    assert handovers(done, created) == pytest.approx([10.0, 15.0, 10.0])


def test_submissions_before_a_completion_are_not_its_successor_and_unpaired_tails_stop() -> None:
    assert handovers([2.0, 3.0], [0.0, 1.0, 2.5]) == pytest.approx([500.0])  # 3.0 has no later submission
    assert handovers([], [1.0]) == [] and handovers([1.0], []) == []


def test_only_completions_up_to_the_backlog_end_count() -> None:
    created = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert backlog_end(created, 0.6) == 2.0 and backlog_end(created, 1.0) == 4.0
    assert backlog_end([], 0.8) == -math.inf
    assert handovers([0.5, 1.5, 2.5, 3.5], created, until=backlog_end(created, 0.6)) == pytest.approx([500.0, 500.0])


@given(st.lists(st.floats(0, 100), max_size=40), st.lists(st.floats(0, 100), max_size=40))
def test_pairs_are_never_negative_and_never_more_than_either_side(done: list[float], created: list[float]) -> None:
    gaps = handovers(done, created)
    assert all(g >= 0 for g in gaps)
    assert len(gaps) <= min(len(done), len(created))


def test_utilisation_is_busy_slot_seconds_over_offered() -> None:
    jobs: list[dict[str, Any]] = [{"created_at": 0.0, "completed_at": 1.0}, {"created_at": 0.0, "completed_at": 2.0},
            {"created_at": 1.0, "completed_at": 2.0}, {"created_at": 2.0, "completed_at": None}]
    assert utilisation(jobs, 2) == pytest.approx(4.0 / (2 * 2.0))
    assert math.isnan(utilisation([], 2))


# -- cost, ratio, CPU ---------------------------------------------------------------------------
def test_records_and_hops_per_job_between_snapshots() -> None:
    before = cost.Snapshot({"requests": 10, "notifications": 40}, {"admission": 10.0})
    after = cost.Snapshot({"requests": 20, "notifications": 80, "app-inflight-wan-changelog": 20},
                          {"admission": 20.0, "webhooks": 20.0})
    out = cost.summary(before, after, 10)
    assert out["records_written"] == 70 and out["records_per_job"] == 7.0
    assert out["records_per_job_by_topic"] == {"app-inflight-wan-changelog": 2.0, "notifications": 4.0,
                                               "requests": 1.0}
    assert out["hops_per_job"] == 3.0 and out["hops_per_job_by_agent"] == {"admission": 1.0, "webhooks": 2.0}
    assert math.isnan(cost.per_job({"a": 1}, 0))
    assert cost.delta({"a": 5, "b": 1}, {"a": 5}) == {"b": 1}


def test_the_waiting_entries_of_orders_that_waited_are_counted_apart() -> None:
    before = cost.Snapshot({"requests": 0, "app-inflight-kling-changelog": 0}, {}, parked=5.0)
    # 10 jobs: a slot taken, its provider job id and its release each, and 4 orders that waited first.
    after = cost.Snapshot({"requests": 10, "app-inflight-kling-changelog": 34}, {}, parked=9.0)
    out = cost.summary(before, after, 10)
    assert out["records_per_job"] == pytest.approx(4.4) and out["orders_waited"] == 4.0
    assert out["records_per_job_not_waiting"] == pytest.approx(4.0)


def test_scaling_ratio_and_cpu_per_request() -> None:
    assert stats.ratio(170.0, 100.0) == pytest.approx(1.7)
    assert math.isnan(stats.ratio(170.0, 0.0))
    assert cpu_ms_per_request(8.0, 20_000) == pytest.approx(0.4)
    assert math.isnan(cpu_ms_per_request(1.0, 0))


def test_the_api_gets_the_second_cpu_and_the_others_the_rest() -> None:
    assert affinity.split({0, 1}) == ({1}, {0})
    assert affinity.split([3, 0, 2, 1]) == ({1}, {0, 2, 3})
    assert affinity.split({0}) is None


# -- rows ---------------------------------------------------------------------------------------
def _pipeline(per: float = 11.5, hops: float = 4.8, ratio: float = 1.7, jobs: int = 10_000) -> dict[str, Any]:
    scaling = {"ratio": ratio, "steady_ratio": ratio, "jobs_per_s": 170.0 * ratio / 1.7, "workers": 2, "jobs": jobs,
               "results_missing": 0, "stalled": False}
    return {"completed": jobs, "jobs": jobs, "workers": 1, "jobs_per_s": 100.0, "stalled": False,
            "records_per_job": per, "records_per_job_by_topic": {"requests": 1.0, "notifications": 4.0},
            "hops_per_job": hops, "hops_per_job_by_agent": {"webhooks": 2.0}, "scaling": scaling}


def _handover(p99: float = 20.0, per: float = 12.5) -> dict[str, Any]:
    return {"handover_ms": {"count": 500, "p50": 8.0, "p99": p99}, "completed": 1000, "utilisation": 0.95,
            "rejected_429": 0, "config": {"limit": 5, "jobs": 1000}, "records_per_job": per, "hops_per_job": 5.0,
            "timed_out": False}


def test_records_per_job_needs_both_bars() -> None:
    ok = {"pipeline": _pipeline(), "handover": _handover()}
    assert targets.records_per_job(ok)["status"] == targets.MET
    # 12.4 in all, of which 0.4 per job are the waiting entries of orders that waited: 12.0 is the bar's figure.
    mixed = {**_pipeline(per=12.4), "records_per_job_not_waiting": 12.0, "orders_waited": 4_000.0}
    row = targets.records_per_job({**ok, "pipeline": mixed})
    assert row["status"] == targets.MET and "12.00 per job whose order found a free slot" in row["measured"]
    too_many = {**_pipeline(per=12.9), "records_per_job_not_waiting": 12.5, "orders_waited": 4_000.0}
    assert targets.records_per_job({**ok, "pipeline": too_many})["status"] == targets.NOT_MET
    assert targets.records_per_job({**ok, "handover": _handover(per=13.5)})["status"] == targets.NOT_MET
    assert targets.records_per_job({**ok, "pipeline": _pipeline(per=14.0)})["status"] == targets.NOT_MET
    alone = targets.records_per_job({"pipeline": _pipeline(), "handover": {"error": "boom"}})
    assert alone["status"] == targets.NOT_MEASURED and "boom" in alone["measured"]


def test_hops_row_and_missing_metrics() -> None:
    assert targets.hops_per_job({"pipeline": _pipeline(hops=4.9)})["status"] == targets.MET
    assert targets.hops_per_job({"pipeline": _pipeline(hops=6.0)})["status"] == targets.NOT_MET
    assert targets.hops_per_job({"pipeline": _pipeline(hops=0.0)})["status"] == targets.NOT_MEASURED


def test_scaling_row() -> None:
    assert targets.scaling({"pipeline": _pipeline(ratio=1.7)})["status"] == targets.MET
    assert targets.scaling({"pipeline": _pipeline(ratio=1.2)})["status"] == targets.NOT_MET
    assert targets.scaling({"pipeline": _pipeline(jobs=150)})["status"] == targets.NOT_MEASURED
    failed = {**_pipeline(), "scaling": {"error": "RuntimeError: no broker"}}
    row = targets.scaling({"pipeline": failed})
    assert row["status"] == targets.NOT_MEASURED and "no broker" in row["measured"]


def test_handover_row() -> None:
    assert targets.handover({"handover": _handover(p99=25.0)})["status"] == targets.MET
    assert targets.handover({"handover": _handover(p99=85.0)})["status"] == targets.NOT_MET
    assert targets.handover({})["status"] == targets.NOT_MEASURED


def _block(p99: float, rate: float = 1000.0, **extra: Any) -> dict[str, Any]:
    return {"offered_rate": rate, "latency_ms": {"p50": p99 / 3, "p99": p99}, "errors": {}, "accepted": 20_000,
            "offered": 20_000, **extra}


def test_pinned_accept_cpu_and_realtime_spike_rows() -> None:
    accept = {"fixed": _block(150.0, api_cpu_ms_per_request=0.35, api_cpu_s=7.0),
              "pinned": _block(40.0, api_cpus=[1], other_cpus=[0], api_cpu_ms_per_request=0.3)}
    assert targets.accept_pinned({"accept": accept})["status"] == targets.MET
    assert "unpinned: p99 150.0" in targets.accept_pinned({"accept": accept})["measured"]
    skipped = targets.accept_pinned({"accept": {**accept, "pinned": {"skipped": "one CPU"}}})
    assert skipped["status"] == targets.NOT_MEASURED
    assert targets.api_cpu({"accept": accept})["status"] == targets.MET
    slow = {**accept, "fixed": _block(150.0, api_cpu_ms_per_request=0.8, api_cpu_s=16.0)}
    assert targets.api_cpu({"accept": slow})["status"] == targets.NOT_MET
    small = {**accept, "fixed": _block(20.0, rate=200.0, api_cpu_ms_per_request=0.3, api_cpu_s=0.1)}
    assert targets.api_cpu({"accept": small})["status"] == targets.NOT_MEASURED

    spike = {"accept_ms": {"p99": 1200.0}, "config": {"plan": {"compression": 50, "spike_wall_rate_per_s": 4167}},
             "realtime": _block(30.0, rate=83.3, seconds=60.0)}
    row = targets.spike_realtime({"spike": spike})
    assert row["status"] == targets.MET and "p99 1200.0" in row["measured"]
    short = {**spike, "realtime": _block(30.0, rate=83.3, seconds=1.0)}
    assert targets.spike_realtime({"spike": short})["status"] == targets.NOT_MEASURED
    assert targets.spike_realtime({"spike": {**spike, "realtime": {"error": "x"}}})["status"] == targets.NOT_MEASURED


def test_stall_row_counts_watchdog_firings_of_both_runs() -> None:
    before = cost.Snapshot({}, {}, stalled=1.0)
    assert cost.summary(before, cost.Snapshot({}, {}, stalled=3.0), 10)["stalled_partitions"] == 2.0
    quiet = {"pipeline": {"stalled_partitions": 0.0}, "handover": {"stalled_partitions": 0.0}}
    assert targets.stalls(quiet)["status"] == targets.MET
    fired = {"pipeline": {"stalled_partitions": 0.0}, "handover": {"stalled_partitions": 1.0}}
    row = targets.stalls(fired)
    assert row["status"] == targets.NOT_MET and "handover 1" in row["measured"]
    assert targets.stalls({"pipeline": {"error": "boom"}})["status"] == targets.NOT_MEASURED


def test_the_yielding_worker_run_is_told_beside_the_pinned_row_and_never_decides_it() -> None:
    pinned = _block(180.0, api_cpus=[1], other_cpus=[0], api_cpu_ms_per_request=0.5)
    yielding = _block(30.0, api_cpus=[1], other_cpus=[0], worker_nice=10, worker_nice_restored=True,
                      cpu_cores={"worker-0": 0.31, "broker": 0.52, "api": 0.5})
    accept = {"fixed": _block(150.0, api_cpu_ms_per_request=0.5, api_cpu_s=10.0), "pinned": pinned,
              "yielding": yielding}
    row = targets.accept_pinned({"accept": accept})
    assert row["status"] == targets.NOT_MET  # the default deployment's pinned p99 (180 ms) decides
    assert "worker at niceness 10 (FLOODGATE_WORKER_NICE): p99 30.0 ms" in row["measured"]
    text = dict(limits.limits({"accept": accept}, 2))["HTTP accept latency / max rate"]
    assert "niceness 10: p99 30.0 ms, the worker using 0.31 cores and the broker 0.52" in text
    assert "could not be put back" not in text
    stuck = {**accept, "yielding": {**yielding, "worker_nice_restored": False}}
    assert "could not be put back" in dict(limits.limits({"accept": stuck}, 2))["HTTP accept latency / max rate"]
    without = targets.accept_pinned({"accept": {**accept, "yielding": {"skipped": "one CPU"}}})
    assert "niceness" not in without["measured"] and without["status"] == targets.NOT_MET


METRICS = """# HELP floodgate_api_event_loop_lag_seconds ...
floodgate_api_event_loop_lag_seconds_bucket{{le="0.001"}} {a}
floodgate_api_event_loop_lag_seconds_bucket{{le="0.1"}} {b}
floodgate_api_event_loop_lag_seconds_bucket{{le="1.0"}} {c}
floodgate_api_event_loop_lag_seconds_bucket{{le="5.0"}} {d}
floodgate_api_event_loop_lag_seconds_bucket{{le="+Inf"}} {e}
floodgate_api_event_loop_lag_seconds_count {e}
"""


def test_the_api_loop_lag_between_two_scrapes_counts_only_the_probes_in_between() -> None:
    before = probes.loop_lag_buckets(METRICS.format(a=50, b=60, c=60, d=60, e=60))
    assert before == {0.001: 50.0, 0.1: 60.0, 1.0: 60.0, 5.0: 60.0, math.inf: 60.0}
    # 200 probes in between: 190 within 1 ms, 5 within 100 ms, 4 within 1 s, 1 within 5 s.
    after = probes.loop_lag_buckets(METRICS.format(a=240, b=255, c=259, d=260, e=260))
    lag = probes.loop_lag_between(before, after)
    assert lag == {"probes": 200, "over_100ms": 5, "p99_le_ms": 1000.0, "worst_le_ms": 5000.0,
                   "last_bucket_ms": 5000.0}
    stuck = probes.loop_lag_between(before, probes.loop_lag_buckets(METRICS.format(a=50, b=60, c=60, d=60, e=62)))
    assert stuck["worst_le_ms"] is None and stuck["over_100ms"] == 2  # past the last bucket: no infinity in JSON
    assert probes.loop_lag_between(before, before)["probes"] == 0
    assert probes.loop_lag_between({}, {})["p99_le_ms"] is None
    gc_text = ('floodgate_api_gc_pause_seconds_bucket{generation="0",le="0.001"} 900.0\n'
               'floodgate_api_gc_pause_seconds_bucket{generation="2",le="0.001"} 1.0\n'
               'floodgate_api_gc_pause_seconds_bucket{generation="2",le="+Inf"} 3.0\n')
    assert probes.full_gc_buckets(gc_text) == {0.001: 1.0, math.inf: 3.0}
    assert probes.full_gc_buckets(gc_text, "worker") == {}  # another process's series
    worker = METRICS.replace("floodgate_api_", "floodgate_worker_")
    assert probes.loop_lag_buckets(worker.format(a=1, b=2, c=3, d=4, e=5), "worker")[math.inf] == 5.0
    assert probes.loop_lag_buckets(worker.format(a=1, b=2, c=3, d=4, e=5)) == {}


def test_two_workers_histograms_add_up_bucket_by_bucket() -> None:
    one, two = {0.001: 5.0, 0.1: 9.0, math.inf: 10.0}, {0.001: 1.0, 0.1: 1.0, math.inf: 4.0}
    both = probes.summed([one, two])
    assert both == {0.001: 6.0, 0.1: 10.0, math.inf: 14.0}
    assert probes.loop_lag_between({}, both)["over_100ms"] == 4  # one's 1 and two's 3
    assert probes.summed([]) == {}


def test_the_notify_limits_say_what_each_loop_saw() -> None:
    worker = {"probes": 400, "over_100ms": 3, "p99_le_ms": 250.0, "worst_le_ms": 500.0, "last_bucket_ms": 5000.0}
    api = {"probes": 400, "over_100ms": 0, "p99_le_ms": 5.0, "worst_le_ms": 25.0, "last_bucket_ms": 5000.0}
    gc = {"probes": 2, "over_100ms": 1, "p99_le_ms": 250.0, "worst_le_ms": 250.0, "last_bucket_ms": 5000.0}
    notify = {"latency_ms": {"p50": 10.0, "p99": 300.0}, "hops_ms": {}, "cpu_cores": {"worker": 0.5},
              "worker_loop_lag": worker, "worker_full_gc": gc, "api_loop_lag": api}
    text = dict(limits.limits({"notify": notify}, 2))["Notification latency"]
    assert ("one event loop (the worker's event loop: 3 of 400 probes woke over 100 ms late, p99 ≤ 250 ms, "
            "worst ≤ 500 ms; full collections: 2, the longest ≤ 250 ms)") in text
    assert "the API's loop (the API's event loop: 0 of 400 probes woke over 100 ms late" in text
    quiet = dict(limits.limits({"notify": {**notify, "worker_loop_lag": {}, "api_loop_lag": {}}}, 2))
    assert "probes woke" not in quiet["Notification latency"]
    assert "Notification latency, the pipeline at its max" not in quiet
    hops = {"jobs agent: webhook record → job change (notification)": {"p50": 58.0, "p99": 272.0}}
    at_max = {**notify, "hops_ms": hops, "pipeline": {"results_per_s_during": 231.0}}
    told = dict(limits.limits({"notify": {**notify, "at_max": at_max}}, 2))
    busy = told["Notification latency, the pipeline at its max"]
    assert busy.startswith("The same hops with 231 results/s of the pipeline's jobs beside the measured ones: "
                           "jobs agent: webhook record → job change (notification) p50 58.0 / p99 272.0 ms.")
    assert "Meanwhile (the worker's event loop: 3 of 400 probes" in busy
    assert "the bridge wrote up to" not in busy  # a run from before the bench counted them
    convoy = {"window_ms": 250, "most": 310, "per_s_mean": 442.5}
    told = dict(limits.limits({"notify": {**notify, "at_max": {**at_max, "webhook_convoy": convoy}}}, 2))
    assert ("the bridge wrote up to 310 webhook records in 250 ms (1,240/s), against 442/s on average over the run."
            in told["Notification latency, the pipeline at its max"])


def test_the_accept_limits_say_what_the_api_loop_saw_in_each_run() -> None:
    lag = {"probes": 200, "over_100ms": 5, "p99_le_ms": 1000.0, "worst_le_ms": None, "last_bucket_ms": 5000.0}
    quiet = {"probes": 100, "over_100ms": 0, "p99_le_ms": 1.0, "worst_le_ms": 10.0, "last_bucket_ms": 5000.0}
    full = {"probes": 1, "over_100ms": 1, "p99_le_ms": 1000.0, "worst_le_ms": 1000.0, "last_bucket_ms": 5000.0}
    accept = {"fixed": _block(150.0, api_loop_lag=quiet),
              "fixed_no_worker": _block(1100.0, api_loop_lag=lag, api_full_gc=full)}
    text = dict(limits.limits({"accept": accept}, 2))["HTTP accept latency / max rate"]
    assert "0 of 100 probes woke over 100 ms late, p99 ≤ 1 ms, worst ≤ 10 ms" in text
    assert "p99 1,100.0 ms (the API's event loop: 5 of 200 probes woke over 100 ms late, p99 ≤ 1,000 ms, " \
           "worst over 5,000.0 ms; full collections: 1, the longest ≤ 1,000 ms)" in text
    assert "probes woke" not in dict(limits.limits({"accept": {"fixed": _block(150.0)}}, 2))[
        "HTTP accept latency / max rate"]


@contextlib.contextmanager
def _waiting_threads(nice: int = 0) -> Iterator[tuple[int, list[int]]]:
    """A child process at niceness ``nice`` with three threads beside its main one, all waiting:
    its pid and thread ids. What renices a process must reach all of them, not only the main one."""
    code = (f"import os, threading, time\nos.nice({nice})\n"
            "[threading.Thread(target=time.sleep, args=(30,), daemon=True).start() for _ in range(3)]\n"
            "print('up', flush=True)\ntime.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 4
        yield child.pid, tids
    finally:
        child.kill()
        child.wait()


def _nice(tids: list[int]) -> dict[int, int]:
    return {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in tids}


def test_reniced_lowers_every_thread_for_the_block_and_puts_each_back() -> None:
    with _waiting_threads() as (pid, tids):
        before = _nice(tids)
        wanted = min(19, max(before.values()) + 5)
        with affinity.reniced(pid, wanted) as state:
            assert set(_nice(tids).values()) == {wanted}
        after = _nice(tids)
        if os.geteuid() == 0:
            assert state["restored"] and after == before
        else:  # only root may lower a niceness: the block says so
            assert not state["restored"] and set(after.values()) == {wanted}


def test_hastened_puts_every_thread_first_for_the_block_and_each_back() -> None:
    # The load generator goes first in the pinned runs. The child starts above the niceness asked
    # for, so the block has something to lower.
    with _waiting_threads(nice=3) as (pid, tids):
        before = _nice(tids)
        wanted = min(before.values()) - 2
        with affinity.hastened(pid, wanted) as state:
            during = _nice(tids)
        assert _nice(tids) == before
        if os.geteuid() == 0:
            assert state["applied"] and set(during.values()) == {wanted}
        else:  # only root may lower a niceness: the block runs as it was, and says so
            assert not state["applied"] and during == before
        with affinity.hastened(pid, max(before.values()) + 1) as state:  # never made to yield
            assert state["applied"] and _nice(tids) == before


def test_hastened_puts_a_thread_started_during_the_block_back_too() -> None:
    # The bench's own process goes first; threads it starts meanwhile (an executor's) inherit that.
    before = os.getpriority(os.PRIO_PROCESS, 0)
    release = threading.Event()
    late: list[int] = []
    started = threading.Event()

    def waiting() -> None:
        late.append(threading.get_native_id())
        started.set()
        release.wait(30)

    thread = None
    try:
        with affinity.hastened(os.getpid(), before - 2) as state:
            thread = threading.Thread(target=waiting, daemon=True)
            thread.start()
            assert started.wait(30)
            inherited = os.getpriority(os.PRIO_PROCESS, late[0])
        after = os.getpriority(os.PRIO_PROCESS, late[0])
    finally:
        release.set()
        if thread is not None:
            thread.join(30)
    if os.geteuid() == 0:
        assert state["applied"] and inherited == before - 2 and after == before
    else:
        assert not state["applied"] and inherited == after == before
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_the_pinned_row_tells_the_load_generators_lag_and_whether_it_went_first() -> None:
    pinned = _block(40.0, api_cpus=[1], other_cpus=[0], api_cpu_ms_per_request=0.3,
                    generator_lag_ms={"p50": 0.5, "p99": 3.2}, generator_nice=-10)
    accept = {"fixed": _block(150.0, api_cpu_ms_per_request=0.35, api_cpu_s=7.0), "pinned": pinned}
    row = targets.accept_pinned({"accept": accept})
    assert "(the load generator at niceness -10; its lag p99 3.2 ms)" in row["measured"]
    assert "API on CPU [1], everything else on [0], the load generator first there (niceness -10); " \
           "load generator lag p99 3.2 ms" in markdown._pinned(pinned)
    not_root = {**pinned, "generator_nice": None}
    row = targets.accept_pinned({"accept": {**accept, "pinned": not_root}})
    assert "(the load generator not put first (that needs root); its lag p99 3.2 ms)" in row["measured"]
    assert "first there" not in markdown._pinned(not_root)


def test_the_pipeline_limits_name_the_machine_when_every_core_is_in_use() -> None:
    full = {**_pipeline(), "jobs_per_s": 200.0, "config": {"limit": 500},
            "cpu_cores": {"simulator": 0.25, "api": 0.6, "worker-0": 0.57, "broker": 0.44}}
    text = dict(limits.limits({"pipeline": full}, 2))["Pipeline jobs/s"]
    assert text.startswith("The machine's CPU: every process together used 1.86 of its 2 cores, the worker 0.57; "
                           "the API's share, 3.0 ms per job, includes")
    roomy = dict(limits.limits({"pipeline": full}, 8))["Pipeline jobs/s"]
    assert roomy.startswith("Not CPU: the worker used 0.57 cores")
    starved = {**full, "cpu_cores": {**full["cpu_cores"], "worker-0": 0.64}}  # 1.93 of 2: not the worker's cap
    assert dict(limits.limits({"pipeline": starved}, 2))["Pipeline jobs/s"].startswith("The machine's CPU")
    assert dict(limits.limits({"pipeline": starved}, 4))["Pipeline jobs/s"].startswith("Mostly the worker's CPU")
    busy = {**full, "cpu_cores": {**full["cpu_cores"], "worker-0": 0.9}}
    assert dict(limits.limits({"pipeline": busy}, 2))["Pipeline jobs/s"].startswith("CPU: the worker used a whole")
    def share(store: str) -> str:
        return dict(limits.limits({"pipeline": {**full, "video_store": store}}, 2))["Pipeline jobs/s"]

    assert "webhooks through the bridge and copying each job's video into the store (the local store:" in share("local")
    assert "the bridge and copying each job's video into the store;" in share("s3")
    assert "copying" not in share("off")  # a run without copies does not claim them


def test_stalls_between_two_readings_name_the_process() -> None:
    before = ({0.01: 10.0, math.inf: 10.0}, {0.1: 1.0, math.inf: 1.0})
    after = ({0.01: 15.0, math.inf: 20.0}, {0.1: 1.0, math.inf: 3.0})
    change = probes.stalls_between(before, after, "worker")
    assert set(change) == {"worker_loop_lag", "worker_full_gc"}
    assert change["worker_loop_lag"] == probes.loop_lag_between(before[0], after[0])
    assert change["worker_full_gc"]["probes"] == 2 and change["worker_full_gc"]["over_100ms"] == 2
    assert set(probes.stalls_between(before, after)) == {"api_loop_lag", "api_full_gc"}


def test_the_ingress_only_process_is_told_beside_the_api_rows_and_never_decides_them() -> None:
    fixed = _block(150.0, api_cpu_ms_per_request=0.6, api_cpu_s=12.0, cpu_cores={"api": 0.6})
    pinned = _block(300.0, api_cpus=[1], other_cpus=[0], api_cpu_ms_per_request=0.55)
    ingress = {"fixed": _block(95.0, api_cpu_ms_per_request=0.35, api_cpu_s=7.0),
               "pinned": _block(45.0, api_cpus=[1], other_cpus=[0], api_cpu_ms_per_request=0.38)}
    accept = {"fixed": fixed, "pinned": pinned, "ingress": ingress}
    cpu = targets.api_cpu({"accept": accept})
    assert cpu["status"] == targets.NOT_MET  # the stack's API, every role in one process (0.6 ms), decides
    assert "ingress-only API process (`--roles ingress`)" in cpu["measured"]
    assert "0.350 ms (pinned 0.380 ms)" in cpu["measured"]
    row = targets.accept_pinned({"accept": accept})
    assert row["status"] == targets.NOT_MET
    assert "an ingress-only API process pinned alike: p99 45.0 ms" in row["measured"]
    text = dict(limits.limits({"accept": {**accept, "fixed_no_worker": {}}}, 2))["HTTP accept latency / max rate"]
    assert "the ingress role alone" in text and "0.350 ms of its CPU per 202" in text
    assert "the other 0.250 ms per 202 of its 0.600 on its other roles" in text
    assert "pinned alone on CPU [1]: p99 45.0 ms" in text
    assert "sent to an ingress-only API process beside the stack's, p99 95.0 ms" in targets.accept_p99(
        {"accept": accept})["measured"]
    without = targets.api_cpu({"accept": {"fixed": fixed, "pinned": pinned}})
    assert "ingress-only" not in without["measured"]
    assert "ingress role alone" not in dict(limits.limits({"accept": {"fixed": fixed, "pinned": pinned,
                                                                      "fixed_no_worker": {}}}, 2))[
        "HTTP accept latency / max rate"]


def _notify(p99: float) -> dict[str, Any]:
    return {"latency_ms": {"p50": p99 / 3, "p99": p99, "count": 500}, "config": {"rate": 50.0}}


def test_the_notification_row_at_the_pipelines_max_has_its_own_bar_and_names_the_load_beside() -> None:
    beside = {"results_per_s_during": 240.0, "jobs": 4_000, "stalled": False, "steady_jobs_per_s": 250.0}
    row = targets.notification_at_max({"notify": {**_notify(20.0), "at_max": {**_notify(90.0), "pipeline": beside}}})
    assert row["status"] == targets.MET and "240 results/s" in row["measured"] and "idle p99 20.0" in row["measured"]
    slow = {"notify": {**_notify(20.0), "at_max": {**_notify(140.0), "pipeline": beside}}}
    assert targets.notification_at_max(slow)["status"] == targets.NOT_MET
    stalled = {"notify": {**_notify(20.0), "at_max": {**_notify(40.0), "pipeline": {**beside, "stalled": True}}}}
    assert targets.notification_at_max(stalled)["status"] == targets.NOT_MEASURED
    assert targets.notification_at_max({"notify": _notify(20.0)})["status"] == targets.NOT_MEASURED
    failed = {"notify": {**_notify(20.0), "at_max": {"error": "the pipeline stalled before 500 results"}}}
    assert targets.notification_at_max(failed)["measured"] == "the pipeline stalled before 500 results"
