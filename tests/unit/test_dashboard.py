"""The dashboard's figures: samples of several processes summed, counter resets, quantiles from
buckets as histogram_quantile computes them, rates between readings, file_sd targets."""
from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from floodgate.dashboard import History, bucket_quantile, increase, read, targets_from_file_sd
from floodgate.metrics import ApiMetrics, WorkerMetrics


def scrape(registry: CollectorRegistry) -> list[Sample]:
    """What a dashboard gets from one process: its exposition, parsed."""
    text = generate_latest(registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def worker(inflight: float, limit: float, submissions: int, depth: float = 0.0,
           start_rate: float | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    m.for_provider("kling")
    if start_rate is not None:
        m.start_rate.labels("kling").set(start_rate)
    m.inflight.labels("kling").set(inflight)
    m.concurrency_limit.labels("kling").set(limit)
    m.queue_depth.labels("kling").set(depth)
    m.submissions.labels("kling").inc(submissions)
    m.admitted.labels("sdk").inc(3)
    m.admitted.labels("http").inc(100)  # already counted by the API as accepted
    m.dead_letters.labels("admission").inc(1)
    m.job_latency.labels("completed").observe(12.0)
    return registry


def api(accepted: int, latencies: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry()
    m = ApiMetrics(registry)
    m.accepted.labels("http").inc(accepted)
    for seconds in latencies:
        m.accept_latency.observe(seconds)
    return registry


def test_figures_of_every_process_are_summed() -> None:
    samples = scrape(api(100, [0.004])) + scrape(worker(3, 5, 7, 40)) + scrape(worker(5, 5, 11, 2))
    r = read(samples, at=1.0)
    assert r.inflight == {"kling": 8} and r.limit == {"kling": 10} and r.queue_depth == {"kling": 42}
    assert r.submissions == {"kling": 18}
    assert r.arrivals == 100 + 3 + 3  # HTTP accepts, plus SDK admissions the API never saw
    assert r.dead_letters == 2 and r.breaker_open == {"kling": 0}
    assert r.accept_buckets[0.004] == 1 and r.accept_buckets[math.inf] == 1
    assert r.job_buckets[math.inf] == 2


def test_a_counter_that_went_down_counts_as_a_restart() -> None:
    assert increase(10, 15) == 5
    assert increase(10, 4) == 4  # a process restarted: everything it counted since is new


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.015), (0.25, 0.0125), (1.0, 0.02), (0.75, 0.0175)])
def test_quantiles_interpolate_within_the_bucket(q: float, expected: float) -> None:
    buckets = {0.01: 0.0, 0.02: 4.0, math.inf: 4.0}
    assert bucket_quantile(q, buckets) == pytest.approx(expected)


def test_quantiles_of_nothing_and_of_the_last_bucket() -> None:
    assert bucket_quantile(0.5, {}) is None
    assert bucket_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert bucket_quantile(0.99, {0.1: 1.0, 1.0: 1.0, math.inf: 5.0}) == 1.0  # past the last bound: the bound


def test_each_providers_pace_is_summed_over_the_workers_that_know_it() -> None:
    knows, learning, other = worker(5, 5, 0, 40, start_rate=0.25), worker(5, 5, 0, 20), worker(0, 0, 0)
    figures = History()
    figures.add(read(scrape(knows) + scrape(learning) + scrape(other), at=1.0))
    assert figures.figures()["paces"] == {"kling": {"start_rate": 0.25, "queued": 60.0, "wait_s": 240.0}}
    unknown = History()
    unknown.add(read(scrape(learning), at=1.0))
    assert unknown.figures()["paces"]["kling"]["start_rate"] is None, "-1 (not known) is not a rate"


def test_history_gives_rates_between_readings_and_windowed_latency() -> None:
    history = History(latency_window=10.0)
    history.add(read(scrape(api(0, [])) + scrape(worker(0, 10, 0)), at=100.0))
    history.add(read(scrape(api(50, [0.004] * 50)) + scrape(worker(10, 10, 20, 30)), at=102.0))
    history.add(read(scrape(api(50, [0.004] * 50)) + scrape(worker(10, 10, 20, 30)), at=101.0))  # out of order
    figures = history.figures()
    assert figures["providers"] == ["kling"] and len(figures["points"]) == 1
    point = figures["points"][0]
    assert point["arrivals"] == pytest.approx((50 + 3 - 3) / 2.0)
    assert point["submissions"] == pytest.approx(10.0) and point["submissions_by"] == {"kling": 10.0}
    assert point["inflight"] == point["limit"] == {"kling": 10} and point["queue_depth"] == {"kling": 30}
    assert 3.0 < point["accept_p50_ms"] <= 4.0 and point["accept_p99_ms"] <= 4.0
    assert figures["totals"]["accepted"] == 53 and figures["breakers"] == {"kling": "closed"}


def test_file_sd_targets() -> None:
    doc = [{"targets": ["127.0.0.1:9101", "127.0.0.1:9102"], "labels": {"job": "worker"}},
           {"targets": ["10.0.0.5:443"], "labels": {"__scheme__": "https", "__metrics_path__": "/m"}},
           {"targets": "not a list"}, "junk"]
    assert targets_from_file_sd(doc) == ["http://127.0.0.1:9101/metrics", "http://127.0.0.1:9102/metrics",
                                         "https://10.0.0.5:443/m"]
    assert targets_from_file_sd({"targets": []}) == []
