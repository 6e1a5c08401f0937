"""What one job costs the pipeline, counted on the real broker: Kafka records written (every topic
and table changelog of the stack) and records the worker consumed (its agents' events); and how
soon a freed provider slot is used again.

The provider is the simulator with slots to spare and two webhooks per job (running, completed):
the happy path. A second batch runs against one slot, so orders wait for it: the backlog path.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from floodgate import codec
from floodgate.bench.handover import backlog_end, handovers
from floodgate.bench.probes import simulator_jobs
from floodgate.sdk import FloodgateClient, JobSpec
from tests.e2e.stack_util import make_stack, routing_file, simulator_config, until
from tests.kafka_util import consume_until, read_all

pytestmark = pytest.mark.kafka

JOBS = 60

RECORDS_PER_JOB = 12
"""Records written per job, happy path: requests 1, dispatch 1, slot 2 (taken; provider job id,
which is also how the API's job view sees the submission), webhooks 2, job changes 3 (queued,
running, completed: the jobs table's changelog, which is the notifications topic), result 1,
release 1, slot freed 1."""

HANDOVER_JOBS = 40
HANDOVER_MEDIAN_BOUND_MS = 250.0
HANDOVER_P90_BOUND_MS = 1000.0
"""Generous: a test on a shared machine; ten times what a quiet machine shows."""

HOPS_PER_JOB = 5
"""Records the worker consumes per job: the request, the order, two webhooks, the release."""


def topic_records(bootstrap: str, prefix: str) -> dict[str, int]:
    """Records written so far to every topic whose name starts with ``prefix``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})


    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count-" + prefix, "enable.auto.commit": False})
    try:
        out: dict[str, int] = {}
        for name, meta in admin.list_topics(timeout=10).topics.items():
            if not name.startswith(prefix):
                continue
            total = 0
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                total += high  # records ever written (compaction does not lower the end offset)
            out[name[len(prefix):]] = total
        return out
    finally:
        consumer.close()


async def consumed_by_worker(session: aiohttp.ClientSession, metrics_url: str) -> float:
    async with session.get(metrics_url) as resp:
        text = await resp.text()
    return sum(float(v) for v in re.findall(r'^floodgate_events_processed_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("cost")
    sim = simulator_config(home / "sim.json", concurrency_limit=200)
    routes = routing_file(home / "routes.json", {"wan": 200, "kling": 200})
    with make_stack(kafka_bootstrap, home, sim_config=sim, routing_file=str(routes)) as s:
        yield s


async def _run_batch(stack: Any, n: int, model: str) -> tuple[dict[str, int], float]:
    s = stack.settings
    before = await asyncio.to_thread(topic_records, stack.bootstrap, s.topic_prefix)
    async with aiohttp.ClientSession() as session:
        consumed_before = await consumed_by_worker(session, stack.metrics_urls["worker-0"])
        with FloodgateClient(stack.bootstrap, topic_prefix=s.topic_prefix) as client:
            ids = set(await asyncio.to_thread(client.submit_many, [
                JobSpec(model=model, prompt=f"cost {i}", user_id="u") for i in range(n)]))
        done: set[str] = set()

        def finished(records: list) -> bool:
            for r in records:
                snap = codec.decode("JobSnapshot", r.value(), r.headers())
                if snap["job_id"] in ids and snap["status"] == "completed":
                    done.add(snap["job_id"])
            return done >= ids

        await asyncio.to_thread(consume_until, stack.bootstrap, s.topic("results"), finished, timeout=120)

        async def settled() -> tuple[dict[str, int], float] | None:
            # Releases and the slot writes they cause come just after the result.
            after = await asyncio.to_thread(topic_records, stack.bootstrap, s.topic_prefix)
            consumed = await consumed_by_worker(session, stack.metrics_urls["worker-0"]) - consumed_before
            # (`lines`: a report per dispatch partition per second, a cost of time, not of jobs)
            diff = {t: after.get(t, 0) - before.get(t, 0) for t in after if t != "lines"}  # (names less the prefix)
            released = sum(v for t, v in diff.items() if t.startswith("release."))
            return (diff, consumed) if released >= n and consumed >= n * HOPS_PER_JOB - n else None

        return await until(settled, timeout=60, what="the releases of the batch")


async def test_records_and_hops_per_job_on_the_happy_path(stack: Any) -> None:
    await _run_batch(stack, 10, "wan-2.6")  # warm-up: topics, groups, connections
    diff, consumed = await _run_batch(stack, JOBS, "wan-2.6")
    written = sum(diff.values())
    per_job = written / JOBS
    detail = {t: v for t, v in sorted(diff.items()) if v}
    print(f"records per job {per_job:.2f}, consumed per job {consumed / JOBS:.2f}: {detail}")
    # (+0.1: a stray record of a warm-up job landing in the window, not a record per job)
    assert per_job <= RECORDS_PER_JOB + 0.1, detail
    assert consumed / JOBS <= HOPS_PER_JOB + 0.1, detail


async def test_a_freed_slot_goes_to_the_next_waiting_order_within_a_generous_bound(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    """Slot handover under a backlog: the completion webhook reaches the bridge → the simulator
    creates the next job at that provider. The bench measures the p99 against the 30 ms bar on a
    quiet machine; this test only catches a handover path that got slow (a lost hop, a timer)."""
    sim = simulator_config(tmp_path / "sim.json", concurrency_limit=2,
                           render_time={"kind": "uniform", "min": 0.05, "max": 0.1})
    routes = routing_file(tmp_path / "routes.json", {"wan": 2, "kling": 2})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=sim, routing_file=str(routes),
                    dispatch_partitions=1) as stack:
        s = stack.settings
        with FloodgateClient(stack.bootstrap, topic_prefix=s.topic_prefix) as client:
            ids = set(await asyncio.to_thread(client.submit_many, [
                JobSpec(model="wan-2.6", prompt=f"handover {i}", user_id="u") for i in range(HANDOVER_JOBS)]))
        done: set[str] = set()

        def finished(records: list) -> bool:
            done.update(codec.decode("JobSnapshot", r.value(), r.headers())["job_id"] for r in records)
            return done >= ids

        await asyncio.to_thread(consume_until, stack.bootstrap, s.topic("results"), finished, timeout=180)
        jobs = await simulator_jobs(stack.simulator_url, "wan")
        ended: dict[str, float] = {}
        for r in await asyncio.to_thread(read_all, stack.bootstrap, s.topic("webhooks")):
            env = codec.decode("WebhookEnvelope", r.value(), r.headers())
            if orjson.loads(env["body"]).get("type") == "video.completed":
                ended.setdefault(r.key().decode(), env["received_at"] / 1000)
    created = [j["created_at"] for j in jobs]
    gaps = sorted(handovers(list(ended.values()), created, backlog_end(created, 0.8)))
    assert len(gaps) >= HANDOVER_JOBS // 2, (len(gaps), len(created), len(ended))
    median, p90 = gaps[len(gaps) // 2], gaps[int(len(gaps) * 0.9)]
    print(f"slot handover over {len(gaps)} handovers: median {median:.1f} ms, p90 {p90:.1f} ms, max {gaps[-1]:.1f} ms")
    assert median < HANDOVER_MEDIAN_BOUND_MS and p90 < HANDOVER_P90_BOUND_MS, gaps
