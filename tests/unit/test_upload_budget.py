"""The upload stores' byte count (``used``, ``reserved``) when worker threads and the event loop
change it at once, and when uploads land while a sweep lists the store.

The races are forced, not hoped for: the count read by one thread waits there until the other
thread has read it too (unguarded code: both act on the same value, and one update is lost) or
is waiting for the budget's lock (guarded code: each has the count to itself). Every wait has a
deadline; no sleeps.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from connectors.storage import uploads
from connectors.storage.s3_uploads import S3UploadStore
from connectors.storage.uploads import LocalUploadStore, UploadBudget
from floodgate import images

DEADLINE = 5.0
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56


class Meeting:
    """Where two threads are made to meet: the first read of the count waits until the other
    thread has read it too or is ``queued`` on the budget's lock; every read after that (a
    thread's write, the test's own check) goes straight through."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._arrived = 0
        self._queued = 0
        self._met = False
        self.together = False
        """Both threads read the count before either wrote it."""

    def arrive(self) -> None:
        with self._cond:
            if self._met:
                return
            self._arrived += 1
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._arrived == 2 or self._queued > 0, timeout=DEADLINE):
                raise AssertionError("the other thread neither read the count nor waited for the lock")
            self._met = True
            self.together = self._arrived == 2 and self._queued == 0

    def queued(self) -> None:
        with self._cond:
            self._queued += 1
            self._cond.notify_all()


class WatchedLock:
    """The budget's lock, telling ``meeting`` when a thread has to wait for it."""

    def __init__(self, meeting: Meeting) -> None:
        self._lock = threading.Lock()
        self._meeting = meeting

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self._meeting.queued()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def meeting_at(budget: Any, name: str, meeting: Meeting) -> None:
    """Make every read of ``budget``'s ``name`` (``used`` or ``reserved``) a meeting point."""
    class Watched(type(budget)):  # type: ignore[misc]
        def __getattribute__(self, attr: str) -> Any:
            value = super().__getattribute__(attr)
            if attr == name:
                meeting.arrive()  # with the value read: what a thread that is not alone then writes is stale
            return value

    budget.__class__ = Watched
    budget._lock = WatchedLock(meeting)  # unused by a budget without one: nothing changes then


def both(first: Callable[[], Any], second: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(first), pool.submit(second)]
        return [future.result(timeout=DEADLINE) for future in futures]


def test_two_threads_reserving_the_last_room_at_once_do_not_both_get_it() -> None:
    budget = UploadBudget(ttl=60.0, max_total=100)
    meeting = Meeting()
    meeting_at(budget, "reserved", meeting)
    granted = both(lambda: budget.reserve(60), lambda: budget.reserve(60))
    assert sorted(granted) == [False, True] and budget.reserved == 60
    assert not meeting.together


def test_two_saves_finishing_at_once_in_threads_both_count(tmp_path: Path) -> None:
    store = LocalUploadStore(tmp_path / "uploads", ttl=60.0)
    meeting = Meeting()
    meeting_at(store, "used", meeting)
    both(lambda: store.put(PNG, images.PNG), lambda: store.put(PNG * 2, images.PNG))
    assert store.used == 3 * len(PNG) and not meeting.together


def test_reserves_and_releases_from_many_threads_add_up() -> None:
    """The invariant under plain contention as well: never past the cap, nothing left held."""
    budget = UploadBudget(ttl=60.0, max_total=1000)
    sizes = [1 + i % 97 for i in range(400)]
    passed: list[bool] = []

    def one(size: int) -> None:
        if budget.reserve(size):
            assert budget.reserved <= budget.max_total
            budget.release(size)
            passed.append(True)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(one, size) for size in sizes]:
            future.result(timeout=DEADLINE)
    assert budget.reserved == 0 and len(passed) == len(sizes)


@pytest.fixture
def listing_then_upload(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Callable[[], object]]]:
    """``os.scandir`` of the upload store that lets a save land just after it listed: the
    callables put in the list run then."""
    real = os.scandir
    landing: list[Callable[[], object]] = []

    def scandir(path: Any) -> Any:
        entries = list(real(path))
        for land in landing:
            land()
        return iter(entries)

    monkeypatch.setattr(uploads.os, "scandir", scandir)
    yield landing


def test_an_upload_stored_while_a_sweep_lists_is_still_counted(
        tmp_path: Path, listing_then_upload: list[Callable[[], object]]) -> None:
    store = LocalUploadStore(tmp_path / "uploads", ttl=60.0)
    store.put(PNG, images.PNG)
    listing_then_upload.append(lambda: store.put(PNG * 2, images.PNG))
    assert store.sweep(time.time()) == 0
    assert store.used == 3 * len(PNG)  # the listing saw one image; the other landed after it


async def test_an_upload_stored_while_the_bucket_is_listed_is_still_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    import obstore
    from obstore.store import MemoryStore

    store = S3UploadStore(ttl=60.0, max_total=1 << 20, bucket="uploads-test")
    store._store = MemoryStore()  # no network: the same calls, in memory
    await store.save(PNG, images.PNG)
    real = obstore.list
    late: list[str] = []

    async def listing(*args: Any, **kwargs: Any) -> Any:
        async for chunk in real(*args, **kwargs):
            yield chunk
        late.append(await store.save(PNG * 2, images.PNG))  # lands once the listing is read

    monkeypatch.setattr(obstore, "list", listing)
    assert await store.expire(time.time()) == 0
    assert late and store.used == 3 * len(PNG)


@pytest.fixture
def held_before_rename(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """``os.replace`` of the upload store that stops a save with its bytes written under the
    ``.incoming-`` name: ``written`` is set then, and the rename waits for ``go``."""
    real = os.replace
    written, go = threading.Event(), threading.Event()

    def replace(src: Any, dst: Any) -> None:
        written.set()
        if not go.wait(DEADLINE):
            raise AssertionError("the test never let the save finish")
        real(src, dst)

    monkeypatch.setattr(uploads.os, "replace", replace)
    yield written, go
    go.set()  # a failing test must not leave the save's thread waiting


def test_a_sweep_counts_an_upload_being_written_once(
        tmp_path: Path, held_before_rename: tuple[threading.Event, threading.Event]) -> None:
    """An upload being saved holds its bytes in ``reserved`` from before its ``.incoming-`` file
    exists until after it is renamed, and ``used`` gets them when it is stored: a sweep that also
    counted the half-written file showed the store that much fuller until the next sweep, a minute
    later, refusing uploads (503) that fit."""
    written, go = held_before_rename
    store = LocalUploadStore(tmp_path / "uploads", ttl=60.0, max_total=10 * len(PNG))
    store.root.mkdir()
    (store.root / "img_stored-earlier.png").write_bytes(PNG)  # another process's, or one from before a restart
    big = PNG * 4
    assert store.reserve(len(big))  # as POST /v1/uploads does before the save
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(store.put, big, images.PNG)
        assert written.wait(DEADLINE)
        assert [p.name.startswith(".incoming-") for p in store.root.iterdir()].count(True) == 1
        assert store.sweep(time.time()) == 0
        assert (store.used, store.reserved) == (len(PNG), len(big))  # the half-written file is in reserved only
        go.set()
        saving.result(timeout=DEADLINE)
    store.release(len(big))
    assert (store.used, store.reserved) == (len(PNG) + len(big), 0)  # and once stored, in used only


def test_a_sweep_counts_another_process_s_upload_being_written(tmp_path: Path) -> None:
    """Another API process sharing the directory reserves its uploads in its own memory: here its
    ``.incoming-`` file is the only sign of them, so it counts, as the bytes on the disk they are."""
    store = LocalUploadStore(tmp_path / "uploads", ttl=60.0)
    store.root.mkdir()
    (store.root / ".incoming-elsewhere").write_bytes(PNG * 2)
    assert store.sweep(time.time()) == 0
    assert store.used == 2 * len(PNG)
