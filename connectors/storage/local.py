"""The default video store: a local directory, served by the API itself.

Layout: ``<root>/<job_id>.video`` holds the bytes, and their record in the file's extended
attribute ``user.floodgate.record``: one file per video, so one file created and
renamed per copy. A refusal has no bytes: its record is ``<root>/<job_id>.json``. So is a stored
video's where the file system keeps no extended attributes (some tmpfs, NFS and FUSE mounts;
found out on the first write), and where a store written before the attribute was used.

Every file is written to a temporary name in the same directory and renamed into place, so a
reader never sees a half-written file and a crash leaves only a ``.tmp-*`` file behind; the
attribute is set before the rename, so a video is never visible without its record. One
directory serves one host; API processes on several hosts need a shared volume or the
S3-compatible store.

Why one file: each copy is paid for in the API's CPU, on the box that answers the 202s, and the
record's own file (created, fsync'd, renamed) cost the threads that write nearly as much as the
video's: a video and its record took 0.84 ms of their CPU as two files, 0.54 as one, and a whole
copy (look-up, download, write) 1.40 ms of the process's CPU against 0.97 (``dev/video_copy_cpu.py``,
the simulator's 18 KB sample eight at a time, median of three rounds in turns).

**Durable in groups, not one file at a time.** A write returns once its file is renamed into
place, not on disk; :meth:`LocalVideoStore.sync` puts everything written so far on disk at once
(``syncfs`` on the store's file system: file data, attributes and renames alike), and the copier
calls it before it commits its offsets past the copies. An ``fsync`` per file cost the writing
thread 0.3-0.75 ms of kernel CPU on this machine's ext4 (18 KB files, three rounds in turns),
against 0.05-0.43 ms for the same files synced 250 at a time: in the pipeline bench the copies'
threads had taken a third of the API's CPU. A crash of the host before a sync loses at most the
copies since the last one, and their offsets were not committed: the copier reads them again. A
copy that such a crash cut short is not taken for a finished one: a stored record whose size is
not the file's, and a record file that does not decode, read as no record (copy again).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import itertools
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

from connectors.storage.base import VideoRecord, check_key
from floodgate.errors import StorageError

CHUNK = 256 * 1024
FLUSH_BYTES = 1024 * 1024
"""Bytes of a video gathered in memory before they are written (per copy under way)."""
_TMP_SEQ = itertools.count()

_ATTRIBUTES = hasattr(os, "setxattr")
"""Whether this platform has extended attributes at all (Linux)."""
RECORD_ATTR = "user.floodgate.record"
"""The extended attribute of a stored video's file that holds its record."""
_NO_ATTRIBUTES = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.E2BIG})
"""``setxattr`` errors that say the file system will not keep this record as an attribute."""
_NO_ATTRIBUTE = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
"""``getxattr`` errors that say the record is not in an attribute (look beside the video)."""


def _libc_syncfs() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):  # not Linux (or not glibc/musl): os.sync instead
        return None


_SYNCFS = _libc_syncfs()
"""libc's ``syncfs(2)``: one file system's writes to disk, not every file system's (``os.sync``)."""


class LocalVideoStore:
    """Videos in ``root`` (created on first write)."""

    def __init__(self, root: Path, *, attributes: bool | None = None) -> None:
        self.root = root
        self.attributes = _ATTRIBUTES if attributes is None else attributes
        """Whether a stored video's record goes into its file's attribute; turned off for good
        when the file system refuses one."""
        self._written = 0
        """Writes finished (renamed into place) by this store, and how many of them ``sync`` has
        put on disk: with none since, a sync has nothing to do."""
        self._synced = 0

    def _video(self, job_id: str) -> Path:
        return self.root / f"{check_key(job_id)}.video"

    def _record(self, job_id: str) -> Path:
        return self.root / f"{check_key(job_id)}.json"

    async def record(self, job_id: str) -> VideoRecord | None:
        video, path = self._video(job_id), self._record(job_id)
        try:
            data, size = await asyncio.to_thread(self._read_record, video, path)
        except OSError as exc:
            raise StorageError(f"cannot read the record of {video.name}: {exc}", retriable=True) from exc
        if data is None:
            return None
        try:
            record = VideoRecord.decode(data)
        except StorageError:
            return None  # a record file a crash cut short before it was synced: nothing finished
        if record.status == "stored" and record.size != size:
            return None  # the bytes a crash cut short before they were synced: copy them again
        return record

    def _read_record(self, video: Path, path: Path) -> tuple[bytes | None, int | None]:
        """(In a thread.) The record's bytes (the video's attribute, else the file beside it) and
        the video's size (None without a video)."""
        try:
            size: int | None = os.stat(video).st_size
        except FileNotFoundError:
            size = None  # a refusal's record, or nothing yet
        # Even where this process stopped setting attributes: another one may have set some.
        if _ATTRIBUTES and size is not None:
            try:
                return os.getxattr(video, RECORD_ATTR), size
            except FileNotFoundError:
                size = None  # removed in between
            except OSError as exc:
                if exc.errno not in _NO_ATTRIBUTE:
                    raise
        try:
            return path.read_bytes(), size
        except FileNotFoundError:
            return None, size

    async def put_video(self, job_id: str, chunks: AsyncIterable[bytes], content_type: str,
                        record: Callable[[], VideoRecord] | None = None) -> None:
        # Chunks are gathered up to FLUSH_BYTES before a thread writes them: a video of up to that
        # size, and its record, cost one trip to a thread (each file: open, write, close, rename),
        # not one per chunk, per step and per file. A trip wakes the event loop twice,
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
        data = None if record is None else record().encode()
        try:
            # _seal cleans up after itself: it owns the file from here.
            await asyncio.to_thread(self._seal, out, tmp, target, pending, job_id, data)
        except OSError as exc:
            what = target.name if data is None else f"{target.name} or its record"
            raise StorageError(f"cannot write {what}: {exc}", retriable=True) from exc
        self._written += 1

    async def put_record(self, record: VideoRecord) -> None:
        target = self._record(record.job_id)
        try:
            await asyncio.to_thread(self._finish, None, self._tmp(target), target, [record.encode()])
        except OSError as exc:
            raise StorageError(f"cannot write {target.name}: {exc}", retriable=True) from exc
        self._written += 1

    async def sync(self) -> None:
        """Everything written so far on disk, in one ``syncfs`` of the store's file system (see
        the module's note); nothing to do when nothing was written since the last sync."""
        written = self._written
        if written == self._synced:
            return
        try:
            await asyncio.to_thread(_sync_file_system, self.root)
        except OSError as exc:
            raise StorageError(f"cannot put the video store {self.root} on disk: {exc}", retriable=True) from exc
        self._synced = written

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
        try:
            return tmp.open("xb")
        except FileNotFoundError:  # the first write: the directory is made then, not every time
            self.root.mkdir(parents=True, exist_ok=True)
            return tmp.open("xb")

    def _write_part(self, out: BinaryIO | None, tmp: Path, parts: list[bytes]) -> BinaryIO:
        """(In a thread.) ``parts`` appended to ``tmp``, opened first if ``out`` is None."""
        if out is None:
            out = self._open_tmp(tmp)
        out.writelines(parts)
        return out

    def _seal(self, out: BinaryIO | None, tmp: Path, target: Path, parts: list[bytes], job_id: str,
              record: bytes | None) -> None:
        """(In a thread.) The video's last ``parts`` written, its ``record`` (if any) set as the
        file's attribute, then renamed to ``target``. Where the file system keeps no
        attribute, the record is written beside it afterwards, so its presence still means the
        bytes are complete. On a failure the temporary file is gone."""
        beside = record
        if record is not None and self.attributes:
            try:
                out = self._write_part(out, tmp, [])
                os.setxattr(out.fileno(), RECORD_ATTR, record)
                beside = None
            except OSError as exc:
                if out is None or exc.errno not in _NO_ATTRIBUTES:
                    _discard(out, tmp)
                    raise
                self.attributes = False  # every later record goes beside its video
        self._finish(out, tmp, target, parts)
        if beside is not None:
            path = self._record(job_id)
            self._finish(None, self._tmp(path), path, [beside])

    def _finish(self, out: BinaryIO | None, tmp: Path, target: Path, parts: list[bytes]) -> None:
        """(In a thread.) The rest written, closed and renamed to ``target`` (on disk at the next
        ``sync``). On a failure the temporary file is gone."""
        try:
            out = self._write_part(out, tmp, parts)
            with out:
                out.flush()
            os.replace(tmp, target)
        except BaseException:
            _discard(out, tmp)
            raise


def _sync_file_system(root: Path) -> None:
    """(In a thread.) Every write to the file system that holds ``root`` on disk."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


def _discard(out: BinaryIO | None, tmp: Path) -> None:
    if out is not None:
        out.close()
    with contextlib.suppress(OSError):
        tmp.unlink()


__all__ = ["LocalVideoStore"]
