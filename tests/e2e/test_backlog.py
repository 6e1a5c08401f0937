"""A backlog far larger than a worker's stream buffers, queued behind a full provider, must keep
flowing: the submitter waiting for slots may not stall the agents that free them."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from floodgate.bench.probes import worker_counters
from floodgate.devstack import Stack
from tests.e2e.stack_util import make_stack, simulator_config, until
from tests.helpers import final_states, fire, scrape, sim_stats, simulator_stats, value
from tests.kafka_util import committed_offsets, read_all, wait_committed, wait_consumed

pytestmark = pytest.mark.kafka


def test_backlog_beyond_the_stream_buffer_keeps_flowing(kafka_bootstrap: str, tmp_path: Path) -> None:
    # 16 buffered records per agent, 600 jobs behind 10 slots: the dispatch stream overflows its
    # buffer many times over while every slot is taken, and releases must still get through.
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.05, "max": 0.15})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config, stream_buffer=16) as stack:
        accepted = asyncio.run(fire(stack.api_url, 600, "wan-2.6"))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=120)
        stats = asyncio.run(sim_stats(stack.simulator_url))
    assert set(finals) == ids, f"{len(ids) - len(finals)} of {len(ids)} jobs never finished"
    assert {recs[-1]["status"] for recs in finals.values()} == {"completed"}
    assert stats["wan"]["max_concurrency"] <= 10 and stats["wan"]["rejected_429"] == 0, stats["wan"]


def _finals_or_explain(stack: Stack, ids: set[str], timeout: float) -> dict[str, list[dict]]:
    """Every job's results; on a timeout, fail saying where each missing job's dispatch order sits
    and what the group committed on dispatch.wan: the evidence a lost order calls for."""
    try:
        return final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=timeout)
    except AssertionError as exc:
        s = stack.settings
        done = {m.key().decode() for m in read_all(stack.bootstrap, s.topic("results"))}
        missing = ids - done
        orders = [(m.key().decode(), m.partition(), m.offset())
                  for m in read_all(stack.bootstrap, s.topic("dispatch.wan")) if m.key().decode() in missing]
        committed = committed_offsets(stack.bootstrap, s.app_id, s.topic("dispatch.wan"))
        raise AssertionError(f"{exc}; missing {sorted(missing)}; their orders (job, partition, offset) {orders}; "
                             f"committed on dispatch.wan {committed}; logs in {stack.home / 'logs'}") from None


async def _queue_behind_full_slots(stack: Stack, n: int) -> set[str]:
    """Submit ``n`` wan jobs and return their ids once all 10 slots are taken (the rest wait)."""
    ids = {a["job_id"] for a in await fire(stack.api_url, n, "wan-2.6")}

    async def slots_full() -> bool:
        async with aiohttp.ClientSession() as session:
            return (await simulator_stats(session, stack.simulator_url))["wan"]["jobs_created"] >= 10

    await until(slots_full, timeout=60, what="every slot to be taken")
    # Past the worker's first offset commits: waiting orders sit behind a committed offset.
    s = stack.settings
    await asyncio.to_thread(wait_consumed, stack.bootstrap, s.app_id, s.topic("requests"))
    await asyncio.to_thread(wait_committed, stack.bootstrap, s.app_id, s.topic("dispatch.wan"))
    return ids


def test_a_worker_with_orders_waiting_stops_promptly_and_loses_none(
        kafka_bootstrap: str, tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    """SIGTERM while every slot is taken and orders wait: the worker exits in seconds (it used to
    hang in the slot wait), and the next worker picks up every waiting order. Both workers' stall
    watchdog firings are recorded (``stall_firings`` in a JUnit report): the stall soak
    (``test_stall_soak.py``) runs this test under load and sums them."""
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 1.0, "max": 1.5})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config) as stack:
        ids = asyncio.run(_queue_behind_full_slots(stack, 120))
        first_stalls = asyncio.run(worker_counters([stack.metrics_urls["worker-0"]])).stalled
        worker = stack.children.pop("worker-0")
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            raise AssertionError(f"worker ignored SIGTERM for 20 s:\n{worker.tail()}") from None
        stopped_in = time.monotonic() - started
        stack.start_worker(1)
        finals = _finals_or_explain(stack, ids, timeout=180)
        stats = asyncio.run(sim_stats(stack.simulator_url))
        stalls = first_stalls + asyncio.run(worker_counters([stack.metrics_urls["worker-1"]])).stalled
    record_property("stall_firings", int(stalls))
    assert code == 0, worker.tail()
    assert stopped_in < 20
    assert set(finals) == ids and {recs[-1]["status"] for recs in finals.values()} == {"completed"}
    assert stats["wan"]["max_concurrency"] <= 10, stats["wan"]


def test_a_worker_joining_while_orders_wait_takes_over_its_share(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A rebalance with orders parked in the first worker: they are left to the partitions' next
    owner (which rebuilds its lines from the waiting table), nothing is submitted twice, the
    limit holds."""
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.8, "max": 1.2})
    with make_stack(kafka_bootstrap, tmp_path, sim_config=config) as stack:
        ids = asyncio.run(_queue_behind_full_slots(stack, 150))
        stack.start_worker(1)
        finals = _finals_or_explain(stack, ids, timeout=180)
        stats = asyncio.run(sim_stats(stack.simulator_url))
        second = stack.children["worker-1"].log.read_text()
    assert set(finals) == ids and {recs[-1]["status"] for recs in finals.values()} == {"completed"}
    wan = stats["wan"]
    assert wan["max_concurrency"] <= 10 and wan["rejected_429"] == 0, wan
    assert wan["jobs_created"] == 150, f"a job was submitted twice or never: {wan}"
    assert "worker=ready" in second


def test_a_read_ahead_window_shared_by_two_providers_pauses_them_and_both_drain(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # A window of 150 waiting orders for the worker, 400 jobs behind each of two providers' 10
    # slots: each line may hold its floor (64), the window fills, partitions stop fetching and
    # start again as renders end, and every job still completes within the limits. Renders of
    # 0.4-0.6 s drain a provider at about 20 jobs/s: the jobs must arrive faster than that for
    # the lines to grow past the window, however quickly slots are handed over. (At 0.1-0.2 s, 65
    # jobs/s, a slower machine's API let the two providers keep up with the arrivals and the
    # window never filled: a fresh-clone run of 2026-12-07.)
    config = simulator_config(tmp_path / "sim.json", render_time={"kind": "uniform", "min": 0.4, "max": 0.6})

    async def both(api: str) -> list[dict]:
        wan, kling = await asyncio.gather(fire(api, 400, "wan-2.6"), fire(api, 400, "kling-2.1"))
        return [*wan, *kling]

    with make_stack(kafka_bootstrap, tmp_path, sim_config=config, fair_window=150, dispatch_partitions=1) as stack:
        accepted = asyncio.run(both(stack.api_url))
        ids = {a["job_id"] for a in accepted}
        finals = final_states(stack.bootstrap, stack.settings.topic("results"), ids, timeout=180)
        stats = asyncio.run(sim_stats(stack.simulator_url))

        async def holds() -> dict[str, float]:
            async with aiohttp.ClientSession() as session:
                got = await scrape(session, stack.metrics_urls["worker-0"])
            return {p: value(got, "floodgate_read_ahead_holds_total", provider=p) for p in ("wan", "kling")}

        held = asyncio.run(holds())
    assert set(finals) == ids, f"{len(ids) - len(finals)} of {len(ids)} jobs never finished"
    assert {recs[-1]["status"] for recs in finals.values()} == {"completed"}
    assert sum(held.values()) >= 1, f"the window never filled: {held}"
    for p in ("wan", "kling"):
        assert stats[p]["max_concurrency"] <= 10 and stats[p]["rejected_429"] == 0, stats[p]
