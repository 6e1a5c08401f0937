"""One slow source host never stalls the copies from the others: the video copier, in memory.

The copier runs for real (its fetch loop, pausing, commit loop, stop) against a fake ``results``
consumer that pauses and counts records as aiokafka's does, a local store, and a source whose
black hole accepts a fetch and answers none until the test lets it (or, for a failing host,
refuses every fetch as a refused connection does). No broker, no HTTP, no sleeps to wait for
things: every wait is for a condition, under a deadline.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from connectors.storage.fetch import VideoFetcher
from floodgate import codec
from floodgate.errors import ConfigError, StorageError
from floodgate.metrics import ApiMetrics
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.videos import copier as copier_module
from floodgate.videos.copier import CopyPolicy, VideoCopier
from tests.fake_results import FakeResults
from tests.fake_videos import Download, Store, until

SETTINGS = Settings(kafka_bootstrap="127.0.0.1:9")
TOPIC = TopicNames(SETTINGS).results
QUICK = CopyPolicy(max_attempts=100_000, base_delay=0.001, max_delay=0.005)
HOLE, HEALTHY = "hole.example.com", "cdn.example.net"


class Sources:
    """Every host answers at once, except ``HOLE``: it accepts fetches and answers none until
    ``answer`` is set, or, ``failing``, refuses each one as a host that is down does."""

    def __init__(self, changed: asyncio.Event, *, failing: bool = False) -> None:
        self.changed = changed
        self.failing = failing
        self.answer = asyncio.Event()
        self.hanging = 0
        self.most_hanging = 0
        self.fetched: set[str] = set()
        """The jobs of the black hole that reached it: a fetch was made for them."""

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        if HOLE in url:
            self.fetched.add(url.rsplit("/", 1)[-1].removesuffix(".mp4"))
            self.changed.set()
            if self.failing:
                raise StorageError(f"video fetch failed: ClientConnectorError from {HOLE}:443 (Connection refused)",
                                   retriable=True)
            self.hanging += 1
            self.most_hanging = max(self.most_hanging, self.hanging)
            try:
                await self.answer.wait()
            finally:
                self.hanging -= 1
        yield Download()


def completed(partition: int, offset: int, job_id: str) -> ConsumerRecord[Any, Any]:
    host = HOLE if job_id.startswith("hole") else HEALTHY
    snapshot = {"job_id": job_id, "tenant": "default", "user_id": "u1", "model": "kling-2.1", "provider": "kling",
                "provider_job_id": "video_1", "status": "completed", "progress": 1.0,
                "video_url": f"https://{host}/{job_id}.mp4", "error": None, "attempt": 0,
                "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_001, "webhook_url": None,
                "metadata": {}, "version": 3}
    value, headers = codec.encode("JobSnapshot", snapshot)
    return ConsumerRecord(topic=TOPIC, partition=partition, offset=offset, timestamp=0, timestamp_type=0,
                          key=job_id.encode(), value=value, checksum=None, serialized_key_size=len(job_id),
                          serialized_value_size=len(value), headers=tuple(headers))


def add(results: FakeResults, partition: int, jobs: list[str]) -> None:
    """More completed jobs on ``partition`` (read by the copier's next fetch)."""
    records = results.log[partition]
    first = len(records)
    records.extend(completed(partition, first + i, job) for i, job in enumerate(jobs))


def job_of(record: ConsumerRecord[Any, Any]) -> str:
    assert record.key is not None
    return bytes(record.key).decode()


async def unpaused(results: FakeResults) -> None:
    """The fetch may pause for the loop turns between a copy's record and its task's end (the
    task's done callback frees its room): give it those turns, no more, before asserting on it."""
    for _ in range(100):
        if not results.paused_now:
            return
        await asyncio.sleep(0)


@pytest.fixture
def changed() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def store(tmp_path: Path, changed: asyncio.Event) -> Store:
    return Store(tmp_path / "videos", changed)


def results_for(monkeypatch: pytest.MonkeyPatch, log: dict[int, list[str]], store: Store,
                changed: asyncio.Event) -> FakeResults:
    results = FakeResults(TOPIC, {p: [] for p in log}, lambda r: job_of(r) in store.kept, changed)
    for partition, jobs in log.items():
        add(results, partition, jobs)
    monkeypatch.setattr(copier_module, "results_consumer", lambda *_: results)
    return results


async def test_a_black_hole_host_holds_only_its_lane_and_the_other_hosts_are_copied_at_once(
        monkeypatch: pytest.MonkeyPatch, store: Store, changed: asyncio.Event) -> None:
    """Partition 0: six copies from the black hole (more than ``max_pending``, and than the copy
    slots), then one from a healthy host, another from the hole, another healthy; partition 1: one
    healthy. With one global cap the hole's copies took every slot and paused the fetch: the
    healthy copies were never read until the hole's timed out."""
    sources = Sources(changed)
    jobs = [f"hole-{i}" for i in range(6)] + ["ok-a", "hole-6", "ok-b"]
    results = results_for(monkeypatch, {0: jobs, 1: ["ok-c"]}, store, changed)
    copier = VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, sources), policy=QUICK, concurrency=4,
                         max_pending=4, commit_interval=0.001, drain_timeout=0.05, rand=lambda: 0.0,
                         metrics=ApiMetrics(CollectorRegistry()))
    await copier.start()
    try:
        await until(lambda: {"ok-a", "ok-b", "ok-c"} <= store.kept.keys(), changed,
                    "the healthy copies stored while the black hole has not answered once")
        # Its lane's burst: 3 of the 4 slots, never the quarter kept for other hosts.
        assert sources.hanging == sources.most_hanging == 3
        await unpaused(results)
        assert results.position == {0: 9, 1: 1} and not results.paused_now  # everything fetched, nothing paused
        await until(lambda: results.committed.get(1) == 1, changed, "the healthy partition committed")
        assert results.committed.get(0, 0) == 0  # partition 0 starts with the hole's copy, not made yet
        sources.answer.set()  # the host comes back
        await until(lambda: results.committed.get(0) == 9, changed, "partition 0 committed to its end")
    finally:
        await copier.stop()
    assert not results.violations
    assert sources.most_hanging == 3
    assert {r.status for r in store.kept.values()} == {"stored"} and len(store.kept) == 10


async def test_a_failing_host_past_its_bound_is_given_up_on_at_once_and_the_others_go_on(
        monkeypatch: pytest.MonkeyPatch, store: Store, changed: asyncio.Event) -> None:
    """A host refusing every fetch: after five copies failed in a row its breaker opens and its
    copies wait without attempts. It holds ``max_per_host`` copies at most: the next ones are
    recorded as given up at once (so a request for the video starts them), not held, and the
    fetch goes on for the others."""
    registry = CollectorRegistry()
    sources = Sources(changed, failing=True)
    results = results_for(monkeypatch, {0: [f"hole-{i}" for i in range(5)], 1: ["ok-b"]}, store, changed)
    copier = VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, sources), policy=QUICK, concurrency=4,
                         max_pending=4, max_per_host=6, commit_interval=0.001, drain_timeout=0.05,
                         rand=lambda: 0.0, metrics=ApiMetrics(registry))

    def metric(name: str) -> float:
        return registry.get_sample_value(name, {"channel": "videos"}) or 0.0

    await copier.start()
    try:
        await until(lambda: len(sources.fetched) == 5 and "ok-b" in store.kept, changed,
                    "each of the hole's copies tried, the healthy one stored")
        await until(lambda: metric("floodgate_destination_breakers_open") == 1, changed, "the hole's breaker open")
        assert metric("floodgate_destination_breaker_openings_total") == 1
        # Six more for the hole (one more than its bound allows) and one healthy.
        add(results, 0, [f"hole-{i}" for i in range(5, 11)] + ["ok-a"])
        await until(lambda: "ok-a" in store.kept and len(store.kept) == 7, changed,
                    "the copies past the hole's bound recorded, the healthy one stored")
        await unpaused(results)
        assert results.position == {0: 12, 1: 1} and not results.paused_now
        shed = {job: r for job, r in store.kept.items() if job.startswith("hole")}
        assert set(shed) == {f"hole-{i}" for i in range(6, 11)}  # hole-5 is held: the sixth
        assert all(r.status == "failed" and r.gave_up and "is failing" in r.reason for r in shed.values())
        assert sources.fetched == {f"hole-{i}" for i in range(5)}  # hole-5 waits for the breaker, no attempt
        assert registry.get_sample_value("floodgate_video_copies_shed_total") == 5
        await until(lambda: results.committed.get(1) == 1, changed, "the healthy partition committed")
    finally:
        await copier.stop()
    assert not results.violations
    assert results.committed.get(0, 0) == 0  # the held copies are the next owner's to make
    assert metric("floodgate_destination_breakers_open") == 0  # their lane went with them


async def test_a_slow_host_at_its_bound_is_waited_for_never_given_up_on(
        monkeypatch: pytest.MonkeyPatch, store: Store, changed: asyncio.Event) -> None:
    """Ten copies from a host that serves them, only slowly (a CDN under load, or a lag of its
    videos after a restart), and one from another host: at its bound, with its breaker closed, the
    fetch waits for it, everyone's records included, and once it answers every copy is made. None
    is given up on for being past the bound: it would have been copied, and a copy given up on
    sends its viewers to the provider's copy, which expires."""
    registry = CollectorRegistry()
    sources = Sources(changed)
    results = results_for(monkeypatch, {0: [f"hole-{i}" for i in range(10)], 1: ["ok-a"]}, store, changed)
    copier = VideoCopier(SETTINGS, store, fetcher=cast(VideoFetcher, sources), policy=QUICK, concurrency=4,
                         max_pending=4, max_per_host=4, commit_interval=0.001, drain_timeout=0.05,
                         rand=lambda: 0.0, metrics=ApiMetrics(registry))
    await copier.start()
    try:
        await until(lambda: bool(results.paused_now) and sources.hanging == 3, changed,
                    "the fetch waiting for the slow host, its lane's burst under way")
        # Its share of max_pending is 1 of 4, so without the bound the fetch would go on (room 3).
        assert results.position == {0: 4, 1: 0} and not store.kept
        sources.answer.set()  # it answers
        await until(lambda: results.committed.get(0) == 10 and results.committed.get(1) == 1, changed,
                    "every copy made and committed")
    finally:
        await copier.stop()
    assert not results.violations
    assert {r.status for r in store.kept.values()} == {"stored"} and len(store.kept) == 11
    assert (registry.get_sample_value("floodgate_video_copies_shed_total") or 0.0) == 0.0


async def test_the_fetch_waiting_for_a_host_goes_on_as_soon_as_its_breaker_opens(
        monkeypatch: pytest.MonkeyPatch, store: Store, changed: asyncio.Event) -> None:
    """A failing host reaches its bound (4) in the first batch, before any of its copies has
    failed: the fetch waits for it. Two failed copies open its breaker; no copy ends then (each
    waits for a probe), yet the fetch goes on at once, since the opening wakes it: the host's next
    copies are given up on and the other host's is made. The paused fetch's own look at its room
    is put an hour away, so only that wake can let it go on within the deadline."""
    monkeypatch.setattr(copier_module, "PAUSED_RECHECK", 3600.0)
    registry = CollectorRegistry()
    sources = Sources(changed, failing=True)
    results = results_for(monkeypatch, {0: [f"hole-{i}" for i in range(6)], 1: ["ok-a"]}, store, changed)
    copier = VideoCopier(Settings(kafka_bootstrap="127.0.0.1:9", video_breaker_failures=2), store,
                         fetcher=cast(VideoFetcher, sources), policy=QUICK, concurrency=4, max_pending=4,
                         max_per_host=4, commit_interval=0.001, drain_timeout=0.05, rand=lambda: 0.0,
                         metrics=ApiMetrics(registry))
    await copier.start()
    try:
        await until(lambda: "ok-a" in store.kept and len(store.kept) == 3, changed,
                    "the copies past the hole's bound recorded, the other host's stored")
        assert results.position == {0: 6, 1: 1}
        assert registry.get_sample_value("floodgate_destination_breaker_openings_total", {"channel": "videos"}) == 1
        shed = {job: r for job, r in store.kept.items() if job.startswith("hole")}
        assert set(shed) == {"hole-4", "hole-5"}  # hole-0 to hole-3 are held, waiting for the breaker
        assert all(r.status == "failed" and r.gave_up and "is failing" in r.reason for r in shed.values())
        assert registry.get_sample_value("floodgate_video_copies_shed_total") == 2
    finally:
        await copier.stop()
    assert not results.violations


@pytest.mark.parametrize(("max_pending", "max_held", "bound", "most"), [
    (256, None, None, 512),  # the defaults: half of max_held, itself 4 × max_pending
    (32, 100, None, 50),
    (32, 33, None, 16),
    (32, 64, 8, 8),
])
def test_a_hosts_bound_defaults_to_half_of_max_held(store: Store, max_pending: int, max_held: int | None,
                                                    bound: int | None, most: int) -> None:
    copier = VideoCopier(SETTINGS, store, max_pending=max_pending, max_held=max_held, max_per_host=bound)
    assert copier.max_per_host == most


def test_a_host_must_be_allowed_one_copy(store: Store) -> None:
    with pytest.raises(ConfigError, match="max_per_host"):
        VideoCopier(SETTINGS, store, max_per_host=0)
