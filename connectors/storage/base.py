"""Where Floodgate keeps the videos it copied from providers: the contract and its records.

A store holds, per job, the video's bytes and a small JSON record beside them. The record is
written last, so its presence means the bytes are complete; it carries what the copy checked
(size, SHA-256, content type) or, for a copy that was refused for good, why. Copying twice is
harmless: the second copy sees the record and stops.

Job ids are the only keys, and :func:`check_key` keeps them to a safe alphabet before any store
turns one into a path or an object name.
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

from floodgate.errors import StorageError

_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_key(job_id: str) -> str:
    """``job_id`` if it is safe as a file and object name; ``StorageError`` (not retriable) if not."""
    if not _KEY.fullmatch(job_id):
        raise StorageError(f"not a storable job id: {job_id[:40]!r}", retriable=False)
    return job_id


@dataclass(frozen=True, slots=True)
class VideoRecord:
    """What the store knows of one job's video. ``status`` stored: the bytes are there and were
    checked; failed: the copy was refused for good (``reason`` says why) and will not be retried."""

    job_id: str
    status: Literal["stored", "failed"]
    at_ms: int
    size: int = 0
    sha256: str = ""
    content_type: str = ""
    reason: str = ""
    gave_up: bool = False
    """Failed only because every attempt met a failure that may pass (timeouts, 5xx, the store
    unreachable) until the retry budget ran out, not because the video was refused (too large,
    not a video, a private address): the provider's own copy may still be worth sending a
    viewer to."""

    def encode(self) -> bytes:
        # By hand, not dataclasses.asdict: that deep-copies every field, 45 µs a record, once per
        # video copied on the API's loop.
        return orjson.dumps({"job_id": self.job_id, "status": self.status, "at_ms": self.at_ms, "size": self.size,
                             "sha256": self.sha256, "content_type": self.content_type, "reason": self.reason,
                             "gave_up": self.gave_up})

    @classmethod
    def decode(cls, data: bytes) -> VideoRecord:
        try:
            fields: dict[str, Any] = orjson.loads(data)
            # Keys it does not know are left out: a record a newer copier wrote still reads.
            record = cls(**{name: value for name, value in fields.items() if name in _RECORD_FIELDS})
        except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
            raise StorageError(f"unreadable video record: {exc}", retriable=False) from exc
        if record.status not in ("stored", "failed"):
            raise StorageError(f"unreadable video record: status {record.status!r}", retriable=False)
        return record


_RECORD_FIELDS = frozenset(VideoRecord.__dataclass_fields__)


@runtime_checkable
class VideoStore(Protocol):
    """A place for videos. Every method raises only :class:`StorageError`."""

    async def record(self, job_id: str) -> VideoRecord | None:
        """The job's record, or None when nothing finished was stored for it yet."""
        ...

    async def put_video(self, job_id: str, chunks: AsyncIterable[bytes], content_type: str,
                        record: Callable[[], VideoRecord] | None = None) -> None:
        """Store the bytes ``chunks`` yields; nothing becomes visible if it raises midway. With
        ``record``, also the record it returns, after the bytes and in the same call (a store may
        write both in one go); it is called once ``chunks`` is consumed, so it may read what the
        download counted (size, hash)."""
        ...

    async def put_record(self, record: VideoRecord) -> None:
        """Write the record on its own (a refusal, which has no bytes)."""
        ...

    async def sync(self) -> None:
        """Make every video and record written so far survive a crash of the host. The copier
        calls it before it commits its offsets past them; a store whose writes are durable when
        they return does nothing."""
        ...

    def open(self, job_id: str) -> AsyncIterator[bytes]:
        """The stored bytes, streamed (call only when the record says stored)."""
        ...

    def local_path(self, job_id: str) -> Path | None:
        """The file holding the bytes when the store is a local directory (served from it as a file)."""
        ...

    async def close(self) -> None:
        ...


__all__ = ["VideoRecord", "VideoStore", "check_key"]
