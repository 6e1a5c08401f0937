"""A source host's answer as the video copier's tests need it: a small MP4 read in one chunk,
its size known once read (the copier's own checks of size and hash are tested elsewhere)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from connectors.storage import LocalVideoStore, VideoRecord

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4


class Download:
    content_type = "video/mp4"

    def __init__(self) -> None:
        self.size = 0
        self.hexdigest = "0" * 64

    async def chunks(self) -> AsyncIterator[bytes]:
        self.size = len(VIDEO)
        yield VIDEO


class Store(LocalVideoStore):
    """A local store that says when it writes (``changed``) and keeps the last record of each job."""

    def __init__(self, root: Path, changed: asyncio.Event) -> None:
        super().__init__(root)
        self.changed = changed
        self.kept: dict[str, VideoRecord] = {}

    async def put_video(self, job_id: str, chunks: Any, content_type: str,
                        record: Callable[[], VideoRecord] | None = None) -> None:
        assert record is not None
        made: list[VideoRecord] = []

        def kept() -> VideoRecord:
            made.append(record())
            return made[-1]

        await super().put_video(job_id, chunks, content_type, kept)
        self.kept[job_id] = made[-1]
        self.changed.set()

    async def put_record(self, record: VideoRecord) -> None:
        await super().put_record(record)
        self.kept[record.job_id] = record
        self.changed.set()


async def until(condition: Callable[[], bool], changed: asyncio.Event, what: str, deadline: float = 10.0) -> None:
    """Wait, woken by ``changed`` (which ``Store`` and the tests' stand-ins set), until ``condition``
    holds; an ``AssertionError`` naming ``what`` after ``deadline`` seconds (generous for loops
    that need milliseconds, far below the 30 s an open breaker waits for its probe)."""
    try:
        async with asyncio.timeout(deadline):
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"not within {deadline}s: {what}") from None
