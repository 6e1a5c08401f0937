"""A copy started again on request (``copy_again``) meets its host's bound as a fetched copy does:
at ``max_per_host`` copies with the host's breaker open, it is given up on at once (recorded as
given up, counted as shed); with the breaker closed, it waits, outside the host's count, until
the host has room or its breaker opens. Before, it joined the host at once, past its bound.

The copier runs for real (``copy``, ``copy_again``, its lanes, a local store) against a source
host that holds its fetches until the test lets it answer, or refuses them as a host that is
down does. No broker, no sleeps: every wait is for a condition, under a deadline, and every time
a host takes one more copy is watched, so a copy taken past the bound fails the test whenever it
happens.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from connectors.storage import VideoRecord
from connectors.storage.fetch import VideoFetcher
from floodgate.errors import StorageError
from floodgate.lanes import Destinations
from floodgate.metrics import ApiMetrics
from floodgate.settings import Settings
from floodgate.videos import copier as copier_module
from floodgate.videos.copier import CopyPolicy, VideoCopier
from tests.fake_videos import Download, Store, until

HOST = "cdn.example.com"
QUICK = CopyPolicy(max_attempts=100_000, base_delay=0.001, max_delay=0.005)
BOUND = 2
HELD = ["held-0", "held-1"]
"""The copies that bring the host to its bound, each in a task of the test's own."""
AGAIN = "again"


def url(job_id: str) -> str:
    return f"https://{HOST}/{job_id}.mp4"


class Source:
    """The source host: it holds each fetch until ``answer`` is set (while ``holds``), then serves
    the video, or, ``failing``, refuses it as a host that is down does (a failure that blames it)."""

    def __init__(self, changed: asyncio.Event, *, holds: bool, failing: bool) -> None:
        self.changed = changed
        self.holds = holds
        self.failing = failing
        self.answer = asyncio.Event()
        self.holding = 0
        self.fetched: list[str] = []

    @asynccontextmanager
    async def open(self, address: str) -> AsyncIterator[Download]:
        self.fetched.append(address.rsplit("/", 1)[-1].removesuffix(".mp4"))
        self.holding += self.holds
        self.changed.set()
        if self.holds:
            try:
                await self.answer.wait()
            finally:
                self.holding -= 1
        if self.failing:
            raise StorageError(f"video fetch failed: ClientConnectorError from {HOST}:443 (Connection refused)",
                               retriable=True)
        yield Download()


@pytest.fixture
def changed() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def store(tmp_path: Path, changed: asyncio.Event) -> Store:
    return Store(tmp_path / "videos", changed)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int | None]]:
    """Each time a host takes one more copy: the host, the copies it held then, and its bound."""
    seen: list[tuple[str, int, int | None]] = []
    enter = Destinations.enter

    def watched(self: Destinations, destination: str) -> None:
        seen.append((destination, self.held(destination), self.most))
        enter(self, destination)

    monkeypatch.setattr(Destinations, "enter", watched)
    return seen


@pytest.fixture(autouse=True)
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy waiting for its host's room looks again only when woken (a copy ending, a breaker
    # opening): its own look after PAUSED_RECHECK is put an hour away, past every deadline here.
    monkeypatch.setattr(copier_module, "PAUSED_RECHECK", 3600.0)


class Scene:
    """The copier with the host at its bound (``HELD``'s copies in it), and ``AGAIN``'s copy,
    given up on long ago, in the store."""

    def __init__(self, store: Store, source: Source, changed: asyncio.Event) -> None:
        self.store, self.source, self.changed = store, source, changed
        self.registry = CollectorRegistry()
        self.copier = VideoCopier(Settings(kafka_bootstrap="127.0.0.1:9", video_breaker_failures=2), store,
                                  fetcher=cast(VideoFetcher, source), policy=QUICK, max_per_host=BOUND,
                                  drain_timeout=0.05, rand=lambda: 0.0, metrics=ApiMetrics(self.registry))
        self.given_up = VideoRecord(AGAIN, "failed", at_ms=1, reason="no attempt within the retry budget",
                                    gave_up=True)
        self.held: list[asyncio.Task[VideoRecord]] = []

    async def __aenter__(self) -> Scene:
        await self.store.put_record(self.given_up)
        self.held = [asyncio.create_task(self.copier.copy(job, url(job))) for job in HELD]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.source.answer.set()
        await self.copier.stop()  # the held copies waiting for a probe stop waiting
        await asyncio.gather(*self.held, return_exceptions=True)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def openings(self) -> float:
        return self.metric("floodgate_destination_breaker_openings_total", {"channel": "videos"})

    def again_recorded(self) -> bool:
        return self.store.kept.get(AGAIN) not in (None, self.given_up)


def within_bound(taken: list[tuple[str, int, int | None]]) -> bool:
    return all(most is not None and held < most for _, held, most in taken)


async def test_at_its_bound_with_its_breaker_open_a_copy_started_again_is_given_up_on_at_once(
        store: Store, changed: asyncio.Event, taken: list[tuple[str, int, int | None]]) -> None:
    """As a fetched copy is at that point: recorded as given up again (so the next request for the
    video waits AGAIN_AFTER once more), counted as shed, never tried, never held by the host."""
    source = Source(changed, holds=False, failing=True)
    async with Scene(store, source, changed) as scene:
        await until(lambda: scene.openings() == 1, changed, "the host's breaker open, its two copies held")
        assert scene.copier.copy_again(scene.given_up, url(AGAIN))
        await until(scene.again_recorded, changed, "the copy started again recorded")
        record = store.kept[AGAIN]
        assert record.status == "failed" and record.gave_up and "is failing" in record.reason
        assert record.at_ms > scene.given_up.at_ms
        assert AGAIN not in source.fetched
        assert scene.metric("floodgate_video_copies_shed_total") == 1
        assert scene.metric("floodgate_video_copies_again_total") == 1
    assert [host for host, _, _ in taken] == [f"{HOST}:443"] * BOUND and within_bound(taken)


async def test_at_its_bound_with_its_breaker_closed_a_copy_started_again_waits_for_room(
        store: Store, changed: asyncio.Event, taken: list[tuple[str, int, int | None]]) -> None:
    """As the fetch waits for the host: the copy started again joins the host only once one of its
    copies has ended, and is made then, not given up on (it would have succeeded)."""
    source = Source(changed, holds=True, failing=False)
    async with Scene(store, source, changed) as scene:
        await until(lambda: source.holding == BOUND, changed, "the host holding its two copies' fetches")
        assert scene.copier.copy_again(scene.given_up, url(AGAIN))
        source.answer.set()  # the host answers; a copy that joined it past its bound has done so by now
        await until(lambda: {*HELD, AGAIN} <= {j for j, r in store.kept.items() if r.status == "stored"}, changed,
                    "every copy made, the one started again included")
        assert scene.metric("floodgate_video_copies_shed_total") == 0
    assert len(taken) == BOUND + 1 and within_bound(taken), taken
    assert source.fetched[-1] == AGAIN


async def test_a_copy_started_again_waiting_for_room_is_given_up_on_once_the_breaker_opens(
        store: Store, changed: asyncio.Event, taken: list[tuple[str, int, int | None]]) -> None:
    """The host's two copies fail and open its breaker while the copy started again waits: no copy
    ends then (each waits for a probe), yet the opening wakes it and it is given up on at once,
    as the fetch's next copies are."""
    source = Source(changed, holds=True, failing=True)
    async with Scene(store, source, changed) as scene:
        await until(lambda: source.holding == BOUND, changed, "the host holding its two copies' fetches")
        assert scene.copier.copy_again(scene.given_up, url(AGAIN))
        source.answer.set()  # they fail: two in a row open the breaker
        await until(scene.again_recorded, changed, "the copy started again recorded once the breaker opened")
        assert scene.openings() == 1
        record = store.kept[AGAIN]
        assert record.status == "failed" and record.gave_up and "is failing" in record.reason
        assert AGAIN not in source.fetched
        assert scene.metric("floodgate_video_copies_shed_total") == 1
        assert not any(task.done() for task in scene.held)  # the host's copies still held, waiting for a probe
    assert len(taken) == BOUND and within_bound(taken), taken
