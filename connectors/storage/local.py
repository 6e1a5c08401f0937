"""The default video store: a local directory, served by the API itself.

Layout: ``<root>/<job_id>.video`` (the bytes) and ``<root>/<job_id>.json`` (the record). Both are
written to a temporary name in the same directory and renamed into place, so a reader never sees
a half-written file and a crash leaves only a ``.tmp-*`` file behind. One directory serves one
host; API processes on several hosts need a shared volume or the S3-compatible store.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from connectors.storage.base import VideoRecord, check_key
from floodgate.errors import StorageError

CHUNK = 256 * 1024


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

    async def put_video(self, job_id: str, chunks: AsyncIterable[bytes], content_type: str) -> None:
        target = self._video(job_id)
        tmp = self._tmp(target)
        try:
            out: BinaryIO = await asyncio.to_thread(self._open_tmp, tmp)
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(_sync_close, out)
            except BaseException:
                out.close()
                raise
            await asyncio.to_thread(os.replace, tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write {target.name}: {exc}", retriable=True) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def put_record(self, record: VideoRecord) -> None:
        target = self._record(record.job_id)
        tmp = self._tmp(target)
        try:
            await asyncio.to_thread(self._write_file, tmp, record.encode())
            await asyncio.to_thread(os.replace, tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
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
        return target.with_name(f".tmp-{secrets.token_hex(8)}-{target.name}")

    def _open_tmp(self, tmp: Path) -> BinaryIO:
        self.root.mkdir(parents=True, exist_ok=True)
        return tmp.open("xb")

    def _write_file(self, tmp: Path, data: bytes) -> None:
        with self._open_tmp(tmp) as out:
            out.write(data)
            _sync(out)


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _sync_close(out: BinaryIO) -> None:
    try:
        _sync(out)
    finally:
        out.close()


__all__ = ["LocalVideoStore"]
