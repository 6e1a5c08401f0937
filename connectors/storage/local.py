"""The default video store: a local directory, served by the API itself.

Layout: ``<root>/<job_id>.video`` (the bytes) and ``<root>/<job_id>.json`` (the record). Both are
written to a temporary name in the same directory and renamed into place, so a reader never sees
a half-written file and a crash leaves only a ``.tmp-*`` file behind. One directory serves one
host; API processes on several hosts need a shared volume or the S3-compatible store.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from connectors.storage.base import VideoRecord, check_key
from floodgate.errors import StorageError

CHUNK = 256 * 1024
FLUSH_BYTES = 1024 * 1024
"""Bytes of a video gathered in memory before they are written (per copy under way)."""
_TMP_SEQ = itertools.count()


class LocalVideoStore:
    """Videos in ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _video(self, job_id: str) -> Path:
        return self.root / f"{check_key(job_id)}.video"

    def _record(self, job_id: str) -> Path:
        return self.root / f"{check_key(job_id)}.json"

    async def record(self, job_id: str) -> VideoRecord | None:
        path = self._record(job_id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path.name}: {exc}", retriable=True) from exc
        return VideoRecord.decode(data)

    async def put_video(self, job_id: str, chunks: AsyncIterable[bytes], content_type: str,
                        record: Callable[[], VideoRecord] | None = None) -> None:
        # Chunks are gathered up to FLUSH_BYTES before a thread writes them: a video of up to that
        # size, and its record, cost one trip to a thread (each file: open, write, fsync, close,
        # rename), not one per chunk, per step and per file. A trip wakes the event loop twice,
        # and in a process serving requests that is most of what a small copy costs.
        target = self._video(job_id)
        tmp = self._tmp(target)
        out: BinaryIO | None = None
        pending: list[bytes] = []
        size = 0
        try:
            async for chunk in chunks:
                pending.append(chunk)
                size += len(chunk)
                if size >= FLUSH_BYTES:
                    out = await asyncio.to_thread(self._write_part, out, tmp, pending)
                    pending, size = [], 0
        except BaseException as exc:
            _discard(out, tmp)  # rare, and two quick calls: here, even when the copy is being cancelled
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {target.name}: {exc}", retriable=True) from exc
            raise
        # The record is filed under the same job id as the video it describes.
        then = None if record is None else (self._record(job_id), record().encode())
        try:
            # _finish cleans up after itself: it owns the file from here.
            await asyncio.to_thread(self._finish, out, tmp, target, pending, then)
        except OSError as exc:
            what = target.name if then is None else f"{target.name} or its record"
            raise StorageError(f"cannot write {what}: {exc}", retriable=True) from exc

    async def put_record(self, record: VideoRecord) -> None:
        target = self._record(record.job_id)
        try:
            await asyncio.to_thread(self._finish, None, self._tmp(target), target, [record.encode()])
        except OSError as exc:
            raise StorageError(f"cannot write {target.name}: {exc}", retriable=True) from exc

    async def open(self, job_id: str) -> AsyncIterator[bytes]:
        path = self._video(job_id)
        try:
            source = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {path.name}: {exc}", retriable=True) from exc
        try:
            while chunk := await asyncio.to_thread(source.read, CHUNK):
                yield chunk
        finally:
            source.close()

    def local_path(self, job_id: str) -> Path | None:
        return self._video(job_id)

    async def close(self) -> None:
        return None

    def _tmp(self, target: Path) -> Path:
        # Unique per process (the pid) and per write (the counter): no random bytes needed, which
        # would cost a system call per file; "xb" refuses a name that exists anyway.
        return target.with_name(f".tmp-{os.getpid()}-{next(_TMP_SEQ)}-{target.name}")

    def _open_tmp(self, tmp: Path) -> BinaryIO:
        self.root.mkdir(parents=True, exist_ok=True)
        return tmp.open("xb")

    def _write_part(self, out: BinaryIO | None, tmp: Path, parts: list[bytes]) -> BinaryIO:
        """(In a thread.) ``parts`` appended to ``tmp``, opened first if ``out`` is None."""
        if out is None:
            out = self._open_tmp(tmp)
        out.writelines(parts)
        return out

    def _finish(self, out: BinaryIO | None, tmp: Path, target: Path, parts: list[bytes],
                then: tuple[Path, bytes] | None = None) -> None:
        """(In a thread.) The rest written, on disk (fsync) and renamed to ``target``; then, when
        given, ``then``'s bytes the same way to its path (the record: after the video, so its
        presence still means the bytes are complete). On a failure the temporary file is gone."""
        try:
            out = self._write_part(out, tmp, parts)
            with out:
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            _discard(out, tmp)
            raise
        if then is not None:
            path, data = then
            self._finish(None, self._tmp(path), path, [data])


def _discard(out: BinaryIO | None, tmp: Path) -> None:
    if out is not None:
        out.close()
    with contextlib.suppress(OSError):
        tmp.unlink()


__all__ = ["LocalVideoStore"]
