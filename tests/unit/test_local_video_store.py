"""The local video store's writes: whole or not at all, few trips to a thread per video, and on
disk in groups (one sync for every write since the last)."""
from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.storage import LocalVideoStore, VideoRecord, local
from connectors.storage.local import FLUSH_BYTES, RECORD_ATTR
from floodgate.errors import StorageError
from floodgate.ids import new_job_id


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def count_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = asyncio.to_thread

    async def counting(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return calls


async def read_back(store: LocalVideoStore, job_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.open(job_id)])


async def test_a_video_larger_than_the_flush_size_is_stored_whole(tmp_path: Path) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    video = bytes(range(256)) * (FLUSH_BYTES * 5 // 2 // 256 + 7)  # 2.5 flushes and a bit
    await store.put_video(job_id, chunked(video, 100_000), "video/mp4")
    assert hashlib.sha256(await read_back(store, job_id)).digest() == hashlib.sha256(video).digest()
    assert [p.name for p in store.root.iterdir()] == [f"{job_id}.video"]  # no temporary file left


async def test_a_small_video_and_its_record_take_one_trip_to_a_thread_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    calls = count_threads(monkeypatch)
    record = VideoRecord(job_id, "stored", at_ms=1, size=300_000, sha256="0" * 64, content_type="video/mp4")
    asked: list[int] = []

    def seal() -> VideoRecord:
        asked.append(len(calls))  # before the trip: the record is made on the loop, then written there
        return record

    await store.put_video(job_id, chunked(b"v" * 300_000, 64 * 1024), "video/mp4", seal)
    assert calls == ["_seal"] and asked == [0]
    assert await store.record(job_id) == record
    # One file: the record is the video file's attribute, set before the file was renamed into place.
    assert [p.name for p in store.root.iterdir()] == [f"{job_id}.video"]
    assert VideoRecord.decode(os.getxattr(store.root / f"{job_id}.video", RECORD_ATTR)) == record
    assert await read_back(store, job_id) == b"v" * 300_000


def refuse_attributes(monkeypatch: pytest.MonkeyPatch, code: int = errno.ENOTSUP) -> list[int]:
    """The file system of a store that keeps no extended attributes (tmpfs before 6.6, NFS...)."""
    tried: list[int] = []

    def refusing(*args: Any, **kwargs: Any) -> None:
        tried.append(code)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "setxattr", refusing)
    return tried


async def test_where_attributes_are_refused_the_record_goes_beside_the_video_from_then_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalVideoStore(tmp_path / "videos")
    tried = refuse_attributes(monkeypatch)
    first, second = new_job_id(), new_job_id()
    for job_id in (first, second):
        record = VideoRecord(job_id, "stored", at_ms=1, size=3, sha256="0" * 64, content_type="video/mp4")
        await store.put_video(job_id, chunked(b"vvv", 2), "video/mp4", functools.partial(lambda r: r, record))
        assert await store.record(job_id) == record
        assert await read_back(store, job_id) == b"vvv"
    assert tried == [errno.ENOTSUP]  # asked once: the second record went beside its video directly
    assert not store.attributes
    assert sorted(p.name for p in store.root.iterdir()) == sorted(
        [f"{first}.json", f"{first}.video", f"{second}.json", f"{second}.video"])


async def test_another_refusal_of_the_attribute_fails_the_write_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    refuse_attributes(monkeypatch, errno.EIO)  # not "unsupported": the disk failed
    record = VideoRecord(job_id, "stored", at_ms=1, size=3, sha256="0" * 64, content_type="video/mp4")
    with pytest.raises(StorageError) as err:
        await store.put_video(job_id, chunked(b"vvv", 2), "video/mp4", lambda: record)
    assert err.value.retriable and store.attributes
    assert await store.record(job_id) is None
    assert not list(store.root.iterdir())


async def test_a_store_written_with_records_beside_the_videos_is_read_as_before(tmp_path: Path) -> None:
    """A directory written before records went into the attribute (or by a process that could
    not set it): the video file has no attribute, its record is the .json beside it."""
    old = LocalVideoStore(tmp_path / "videos", attributes=False)
    job_id = new_job_id()
    record = VideoRecord(job_id, "stored", at_ms=1, size=3, sha256="0" * 64, content_type="video/mp4")
    await old.put_video(job_id, chunked(b"vvv", 2), "video/mp4", lambda: record)
    now = LocalVideoStore(tmp_path / "videos")
    assert now.attributes
    assert await now.record(job_id) == record
    assert await now.record(new_job_id()) is None


async def test_a_record_on_its_own_takes_one_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    calls = count_threads(monkeypatch)
    refused = VideoRecord(job_id, "failed", at_ms=1, reason="not a video")
    await store.put_record(refused)
    assert calls == ["_finish"]
    assert await store.record(job_id) == refused
    assert [p.name for p in store.root.iterdir()] == [f"{job_id}.json"]  # a refusal has no video to carry it


async def test_a_video_that_fails_midway_writes_no_record(tmp_path: Path) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()

    async def broken() -> AsyncIterator[bytes]:
        yield b"v" * 10
        raise StorageError("download broke off", retriable=True)

    def seal() -> VideoRecord:
        raise AssertionError("no record for bytes that were not all read")

    with pytest.raises(StorageError, match="broke off"):
        await store.put_video(job_id, broken(), "video/mp4", seal)
    assert await store.record(job_id) is None
    assert not store.root.exists() or not list(store.root.iterdir())


async def test_a_write_that_fails_is_a_retriable_error_and_leaves_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")  # the store's root cannot be made: every write fails with an OSError
    store = LocalVideoStore(blocked)
    with pytest.raises(StorageError) as err:
        await store.put_video(new_job_id(), chunked(b"v" * 10, 4), "video/mp4")
    assert err.value.retriable
    with pytest.raises(StorageError):
        await store.put_record(VideoRecord(new_job_id(), "failed", at_ms=1, reason="x"))
    assert list(tmp_path.iterdir()) == [blocked]


def stored(job_id: str, body: bytes) -> VideoRecord:
    return VideoRecord(job_id, "stored", at_ms=1, size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                       content_type="video/mp4")


def count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    synced: list[Path] = []
    real = local._sync_file_system

    def counting(root: Path) -> None:
        synced.append(root)
        real(root)

    monkeypatch.setattr(local, "_sync_file_system", counting)
    return synced


async def test_writes_are_put_on_disk_by_the_next_sync_not_one_file_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, first, second = LocalVideoStore(tmp_path / "videos"), new_job_id(), new_job_id()
    synced = count_syncs(monkeypatch)

    def no_fsync(fd: int) -> None:
        raise AssertionError("a write must not wait for the disk: sync() does that for all of them")

    monkeypatch.setattr(os, "fsync", no_fsync)
    await store.sync()
    assert synced == []  # nothing written yet
    await store.put_video(first, chunked(b"vvv", 2), "video/mp4", lambda: stored(first, b"vvv"))
    await store.put_record(VideoRecord(second, "failed", at_ms=1, reason="not a video"))
    await store.sync()  # the real syncfs(2) of the store's file system, once for both
    assert synced == [store.root]
    await store.sync()
    assert synced == [store.root]  # nothing written since
    assert await store.record(first) == stored(first, b"vvv")


async def test_a_sync_that_fails_is_retriable_and_the_next_one_syncs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    await store.put_video(job_id, chunked(b"vvv", 2), "video/mp4", lambda: stored(job_id, b"vvv"))
    failures = [OSError(errno.EIO, "I/O error")]
    synced: list[Path] = []

    def failing_once(root: Path) -> None:
        if failures:
            raise failures.pop()
        synced.append(root)

    monkeypatch.setattr(local, "_sync_file_system", failing_once)
    with pytest.raises(StorageError) as err:
        await store.sync()
    assert err.value.retriable
    await store.sync()
    assert synced == [store.root]


async def test_a_copy_that_a_crash_cut_short_before_its_sync_reads_as_not_stored(tmp_path: Path) -> None:
    """After a crash of the host, a file renamed into place but never synced may have lost its
    bytes while its name and attribute survived: its record does not count, so it is copied again."""
    store, job_id, refused = LocalVideoStore(tmp_path / "videos"), new_job_id(), new_job_id()
    await store.put_video(job_id, chunked(b"v" * 1000, 300), "video/mp4", lambda: stored(job_id, b"v" * 1000))
    await store.put_record(VideoRecord(refused, "failed", at_ms=1, reason="not a video"))
    assert await store.record(job_id) == stored(job_id, b"v" * 1000)
    os.truncate(store.root / f"{job_id}.video", 0)  # what the crash left of the bytes
    (store.root / f"{refused}.json").write_bytes(b"")  # and of a refusal's record
    assert await store.record(job_id) is None
    assert await store.record(refused) is None
    # Copied again, it is whole and read as stored.
    await store.put_video(job_id, chunked(b"w" * 1000, 300), "video/mp4", lambda: stored(job_id, b"w" * 1000))
    assert await store.record(job_id) == stored(job_id, b"w" * 1000)
    assert await read_back(store, job_id) == b"w" * 1000


async def test_records_of_older_and_newer_copiers_read(tmp_path: Path) -> None:
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    store.root.mkdir(parents=True)
    (store.root / f"{job_id}.json").write_bytes(
        b'{"job_id": "%s", "status": "failed", "at_ms": 1, "size": 0, "sha256": "", "content_type": "",'
        b' "reason": "not a video"}' % job_id.encode())
    assert await store.record(job_id) == VideoRecord(job_id, "failed", at_ms=1, reason="not a video", gave_up=False)
    # And one a newer copier wrote, with a field this one does not know.
    newer = VideoRecord(new_job_id(), "failed", at_ms=3, reason="not a video")
    (store.root / f"{newer.job_id}.json").write_bytes(newer.encode()[:-1] + b', "retry_at": 5}')
    assert await store.record(newer.job_id) == newer
    given_up = VideoRecord(new_job_id(), "failed", at_ms=2, reason="503", gave_up=True)
    await store.put_record(given_up)
    assert await store.record(given_up.job_id) == given_up
