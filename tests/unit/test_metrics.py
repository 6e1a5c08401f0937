"""Metric names follow Prometheus conventions, every metric is in docs/metrics.md's table, the API
serves them, and the pure parts of the worker's queue-depth refresh (lag, limit shares) hold."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from floodgate import metrics
from floodgate.api.app import build_app
from floodgate.api.view import JobView
from floodgate.metrics import ApiMetrics, SimulatorCollector, WorkerMetrics, describe, render
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from streams.lag import depth, owned_share
from tests.helpers import samples

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^floodgate_[a-z0-9]+(_[a-z0-9]+)*$")
# Every label any metric may carry: each has a small, bounded set of values ("model": the routing
# table's models, the only ones admission lets through).
ALLOWED_LABELS = {"source", "reason", "provider", "outcome", "channel", "stage", "from_provider", "to_provider",
                  "status", "agent", "topic", "model", "generation"}


def test_names_follow_prometheus_conventions() -> None:
    rows = describe()
    assert len({r[0] for r in rows}) == len(rows), "a metric is defined twice"
    for name, kind, labels, doc in rows:
        assert NAME.match(name), name
        assert kind in ("counter", "gauge", "histogram"), (name, kind)
        assert name.endswith("_total") == (kind == "counter"), f"{name}: only counters end in _total"
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"
        assert not re.search(r"_(ms|milliseconds|minutes|hours)(_|$)", name), f"{name}: use base units"
        assert doc.strip() and doc.strip()[-1] in ".)", f"{name}: help text is a sentence"
        names = set() if labels == "-" else {label.strip() for label in labels.split(",")}
        assert names <= ALLOWED_LABELS, f"{name}: unexpected label(s) {names - ALLOWED_LABELS}"
        assert "job_id" not in names


def test_every_metric_is_in_the_metrics_table() -> None:
    table = (ROOT / "docs/metrics.md").read_text()
    assert "(docs/metrics.md)" in (ROOT / "README.md").read_text(), "README links to the table"
    for row in describe():
        line = "| `{}` | {} | {} | {} |".format(*row)
        assert line in table, f"docs/metrics.md is stale for {row[0]}; the row should read:\n{line}"


def test_latency_buckets() -> None:
    assert metrics.ACCEPT_BUCKETS[0] == 0.001 and metrics.ACCEPT_BUCKETS[-1] == 1.0
    assert len(metrics.ACCEPT_BUCKETS) >= 15, "fine-grained: the interesting part is 1-50 ms"
    assert metrics.JOB_BUCKETS[-1] == 1800.0
    for buckets in (metrics.ACCEPT_BUCKETS, metrics.WEBHOOK_ANSWER_BUCKETS, metrics.NOTIFY_BUCKETS,
                    metrics.JOB_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


Key = tuple[str, frozenset[tuple[str, str]]]


def test_groups_register_once_per_registry_and_preseed_series() -> None:
    registry = CollectorRegistry()
    api, worker = ApiMetrics(registry), WorkerMetrics(registry)
    worker.for_provider("wan")
    with pytest.raises(ValueError):
        ApiMetrics(registry)  # a second definition on the same registry is refused
    got = samples(render(registry)[0].decode())
    assert got[("floodgate_requests_rejected_total", frozenset({("reason", "auth")}))] == 0
    assert got[("floodgate_provider_inflight", frozenset({("provider", "wan")}))] == 0
    assert got[("floodgate_notification_subscribers", frozenset({("channel", "websocket")}))] == 0
    api.reject("too_large")
    worker.job_latency.labels("completed").observe(42.0)
    got = samples(render(registry)[0].decode())
    assert got[("floodgate_requests_rejected_total", frozenset({("reason", "too_large")}))] == 1
    assert got[("floodgate_job_latency_seconds_count", frozenset({("outcome", "completed")}))] == 1
    assert got[("floodgate_job_latency_seconds_bucket", frozenset({("outcome", "completed"), ("le", "45.0")}))] == 1
    assert got[("floodgate_job_latency_seconds_bucket", frozenset({("outcome", "completed"), ("le", "30.0")}))] == 0


def test_render_speaks_openmetrics_when_asked() -> None:
    registry = CollectorRegistry()
    ApiMetrics(registry)
    body, content_type = render(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    _, plain = render(registry)
    assert plain.startswith("text/plain")


def test_simulator_collector_reads_stats_at_scrape_time() -> None:
    stats: dict[str, Any] = {"providers": {"wan": {"in_flight": 3, "jobs_created": 7, "rejected_429": 1}}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SimulatorCollector(lambda: stats))
    got = samples(render(registry)[0].decode())
    assert got[("floodgate_sim_inflight", frozenset({("provider", "wan")}))] == 3
    assert got[("floodgate_sim_jobs_created_total", frozenset({("provider", "wan")}))] == 7
    stats["providers"]["wan"]["jobs_created"] = 9
    assert samples(render(registry)[0].decode())[("floodgate_sim_jobs_created_total",
                                                     frozenset({("provider", "wan")}))] == 9


class _Sender:
    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        return None


async def test_api_serves_metrics_and_counts_accepts_and_rejects() -> None:
    app = build_app(Settings(secret=Secret("s" * 32)), dev_setup("http://127.0.0.1:9"), producer=_Sender(),
                    view=JobView())
    async with TestClient(TestServer(app)) as client:
        async def scrape() -> dict[Key, float]:
            resp = await client.get("/metrics")
            assert resp.status == 200 and resp.content_type == "text/plain"
            return samples(await resp.text())

        accepted: Key = ("floodgate_requests_accepted_total", frozenset({("source", "http")}))
        latency: Key = ("floodgate_accept_latency_seconds_count", frozenset())
        invalid = ("floodgate_requests_rejected_total", frozenset({("reason", "validation")}))
        before = await scrape()
        ok = await client.post("/v1/jobs", json={"model": "kling-2.1", "user_id": "u1", "input": {"prompt": "a cat"}})
        assert ok.status == 202
        bad = await client.post("/v1/jobs", json={"model": "kling-2.1", "user_id": "u1", "input": {}})
        assert bad.status == 400
        unknown = await client.post("/webhooks/no-such-provider", data=b"{}")
        assert unknown.status == 404
        after = await scrape()
    assert after[accepted] - before[accepted] == 1
    assert after[latency] - before[latency] == 1
    assert after[invalid] - before[invalid] == 1
    wh = ("floodgate_webhooks_received_total", frozenset({("provider", "unknown"), ("outcome", "unknown_provider")}))
    assert after[wh] - before.get(wh, 0.0) == 1


@pytest.mark.parametrize(("end", "committed", "low", "expected"), [
    (10, 4, 0, 6),        # the usual case
    (10, 10, 0, 0),       # caught up
    (10, None, 0, 10),    # nothing committed yet: everything from the log start waits
    (10, -1001, 3, 7),    # librdkafka's "no offset" sentinel
    (10, 2, 5, 5),        # committed offset deleted by retention: count from the log start
    (0, None, 0, 0),      # empty topic
    (5, 8, 0, 0),         # never negative
])
def test_depth(end: int, committed: int | None, low: int, expected: int) -> None:
    assert depth(end, committed, low) == expected


@pytest.mark.parametrize(("limit", "partitions", "owned", "expected"), [
    (10, 2, [0, 1], 10),
    (10, 2, [0], 5),
    (7, 3, [0, 1, 2], 7),
    (7, 3, [], 0),
    (7, 3, [2], 2),
])
def test_owned_share(limit: int, partitions: int, owned: list[int], expected: int) -> None:
    assert owned_share(limit, partitions, owned) == expected


def test_owned_shares_of_all_workers_add_up_to_the_limit() -> None:
    for limit in range(1, 12):
        for partitions in range(1, limit + 1):
            split = [list(range(partitions))[i::3] for i in range(3)]  # three workers
            assert sum(owned_share(limit, partitions, owned) for owned in split) == limit
