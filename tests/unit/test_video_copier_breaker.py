"""The video copier's breaker per source host is the one the settings configure:
``FLOODGATE_VIDEO_BREAKER_FAILURES`` copies failed in a row open it, and
``FLOODGATE_VIDEO_BREAKER_OPEN_FOR`` seconds later one probe may copy again. The copier runs for
real (``copy``, its lanes, a local store) against a source that refuses fetches as a host that
is down does; no broker, no sleeps: the one wait is for the probe's copy, under a deadline."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from connectors.storage import LocalVideoStore
from connectors.storage.fetch import VideoFetcher
from floodgate.errors import ConfigError, StorageError
from floodgate.ids import new_job_id
from floodgate.lanes import DEFAULT_FAILURE_THRESHOLD, DEFAULT_OPEN_FOR
from floodgate.metrics import ApiMetrics
from floodgate.settings import Settings
from floodgate.videos.copier import CopyPolicy, VideoCopier
from tests.fake_videos import Download

URL = "https://cdn.example.com/video.mp4"
SLOW = "https://cdn.example.com/slow.mp4"
"""On the same host: a copy in flight keeps the host's lane, breaker and all (the last copy to
leave a lane takes its count of failures with it), as a busy CDN's copies do."""
DEADLINE = 5.0
"""Far above the configured 0.05 s between probes, far below the default 30 s."""


class Source:
    """The source host: refuses every fetch while ``failing`` (as a CDN that is down does: a
    failure that blames the host), then answers; ``SLOW`` it answers only once ``answer`` is set."""

    def __init__(self) -> None:
        self.failing = True
        self.fetched = 0
        self.slow_fetched = asyncio.Event()
        self.answer = asyncio.Event()

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        if url == SLOW:
            self.slow_fetched.set()
            await self.answer.wait()
        else:
            self.fetched += 1
            if self.failing:
                raise StorageError("video fetch failed: ClientConnectorError from cdn.example.com:443",
                                   retriable=True)
        yield Download()


def test_the_defaults_are_the_lanes_shared_ones() -> None:
    # Unconfigured, a deployment's copier breaks as before the settings existed (and as the webhooks' lanes do).
    settings = Settings.from_env({})
    assert (settings.video_breaker_failures, settings.video_breaker_open_for) == (
        DEFAULT_FAILURE_THRESHOLD, DEFAULT_OPEN_FOR)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("FLOODGATE_VIDEO_BREAKER_FAILURES", "0", "FLOODGATE_VIDEO_BREAKER_FAILURES must be at least 1"),
    ("FLOODGATE_VIDEO_BREAKER_FAILURES", "many", "FLOODGATE_VIDEO_BREAKER_FAILURES"),
    ("FLOODGATE_VIDEO_BREAKER_OPEN_FOR", "0", "FLOODGATE_VIDEO_BREAKER_OPEN_FOR must be positive"),
    ("FLOODGATE_VIDEO_BREAKER_OPEN_FOR", "-1", "FLOODGATE_VIDEO_BREAKER_OPEN_FOR must be positive"),
    # nan passed a "<= 0" check (the copier then failed to start naming no setting), and inf
    # would keep an opened breaker shut for ever: refused as for every float setting
    # (tests/unit/test_settings.py).
    ("FLOODGATE_VIDEO_BREAKER_OPEN_FOR", "nan", "FLOODGATE_VIDEO_BREAKER_OPEN_FOR must be a finite number"),
    ("FLOODGATE_VIDEO_BREAKER_OPEN_FOR", "inf", "FLOODGATE_VIDEO_BREAKER_OPEN_FOR must be a finite number"),
])
def test_a_breaker_setting_the_lanes_would_refuse_is_refused_at_start(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({variable: value})


async def test_the_copier_breaks_after_the_configured_failures_and_probes_after_the_configured_time(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOODGATE_KAFKA_BOOTSTRAP": "127.0.0.1:9",
                                  "FLOODGATE_VIDEO_BREAKER_FAILURES": "2",
                                  "FLOODGATE_VIDEO_BREAKER_OPEN_FOR": "0.05"})
    registry = CollectorRegistry()
    source = Source()
    # One attempt per copy: each failed copy is one failure in a row for the host's breaker.
    copier = VideoCopier(settings, LocalVideoStore(tmp_path / "videos"), fetcher=cast(VideoFetcher, source),
                         policy=CopyPolicy(max_attempts=1), rand=lambda: 0.0, metrics=ApiMetrics(registry))

    def openings() -> float:
        return registry.get_sample_value("floodgate_destination_breaker_openings_total", {"channel": "videos"}) or 0.0

    slow = asyncio.create_task(copier.copy(new_job_id(), SLOW))
    try:
        async with asyncio.timeout(DEADLINE):
            await source.slow_fetched.wait()
        first = await copier.copy(new_job_id(), URL)
        assert (first.status, first.gave_up, openings()) == ("failed", True, 0.0)
        await copier.copy(new_job_id(), URL)
        assert openings() == 1.0  # two in a row, as configured (the default waits for five)
        source.failing = False  # the CDN is back: the next copy is the breaker's probe, once it lets one through
        async with asyncio.timeout(DEADLINE):
            record = await copier.copy(new_job_id(), URL)
        assert record.status == "stored"
        assert source.fetched == 3  # the probe was the third copy's only attempt
    finally:
        source.answer.set()
        async with asyncio.timeout(DEADLINE):
            assert (await slow).status == "stored"
