"""Where ``POST /v1/uploads`` keeps the selfies: the contract, and the store in one local directory.

Two stores keep to :class:`UploadStore`: :class:`LocalUploadStore` (a directory of one host,
below) and :class:`connectors.storage.s3_uploads.S3UploadStore` (the video store's bucket, so
every API process serves every upload). What an image is, its name and when it expires are
decided by the pure rules in :mod:`floodgate.images`; the stores only do the I/O.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import threading
from pathlib import Path
from typing import Protocol

from floodgate import images
from floodgate.errors import StorageError

SWEEP_EVERY = 60.0
"""Seconds between two sweeps of expired images (each one lists the whole store)."""


class UploadStore(Protocol):
    """Images kept for ``ttl`` seconds under names the store made. ``load`` answers a file to
    serve (local) or the bytes themselves (S3: small, bounded by ``FLOODGATE_UPLOAD_MAX_BYTES``),
    None for a name it never made or that expired; I/O failures raise :class:`StorageError`."""

    ttl: float

    def has_room(self, size: int) -> bool: ...

    def reserve(self, size: int) -> bool: ...

    def release(self, size: int) -> None: ...

    def sweep_due(self, now: float) -> bool: ...

    async def save(self, data: bytes, kind: images.ImageKind) -> str: ...

    async def load(self, name: str, now: float) -> Path | bytes | None: ...

    async def expire(self, now: float) -> int: ...


class UploadBudget:
    """The cap on what a store holds, and when it is next swept; no I/O. ``used`` is the bytes the
    last sweep counted plus what this process stored since (a sweep is the only time the whole
    store is seen, so between sweeps another process's uploads are not in it); ``reserved``, the
    bytes of this process's uploads being stored now, which count against the cap too.

    Safe from any thread: the local store adds what it saved, and sets what a sweep counted, in
    the worker threads that write and list (``asyncio.to_thread``) while the event loop reserves
    and releases, and two saves may finish at once. A ``+=`` there is a read and a write another
    thread can come between, losing bytes from the count (and a check then a hold could let two
    uploads through where one fits). So every read-modify-write of the counts is made under one
    ``threading.Lock``, held for the arithmetic only, never across I/O: the loop waits on it for
    microseconds at worst. (Keeping the updates on the loop instead would need every caller of
    the blocking ``put`` and ``sweep`` to hand its result back to the loop, and one that did not
    would miss the count without a sign.)"""

    def __init__(self, ttl: float, max_total: int) -> None:
        self.ttl = ttl
        self.max_total = max_total
        self._lock = threading.Lock()
        self.used = 0
        self.reserved = 0
        self._stored_total = 0
        """Bytes this process has stored since it started: lets a sweep add those stored while it listed."""
        self._last_sweep: float | None = None

    def has_room(self, size: int) -> bool:
        with self._lock:
            return self._fits(size)

    def _fits(self, size: int) -> bool:
        return self.used + self.reserved + size <= self.max_total

    def reserve(self, size: int) -> bool:
        """Hold ``size`` bytes of the cap for an upload about to be saved; False, holding nothing,
        when they do not fit. Checked and held in one step: ``used`` grows only once a save is
        done, so uploads checked against it alone while others were being written would all fit
        together and pass the cap. Give the bytes back with ``release`` once the save has ended,
        stored (``used`` has them then) or not."""
        with self._lock:
            if not self._fits(size):
                return False
            self.reserved += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.reserved -= size

    def _saved(self, size: int) -> None:
        """An upload of ``size`` bytes is in the store (called by the store, from any thread)."""
        with self._lock:
            self.used += size
            self._stored_total += size

    def _listing(self) -> int:
        """A sweep is about to list the store: the mark to hand to ``_counted``."""
        with self._lock:
            return self._stored_total

    def _counted(self, listed: int, mark: int) -> None:
        """The sweep that began at ``mark`` counted ``listed`` bytes. Uploads stored while it
        listed are added, not overwritten: the listing may have missed them. One it did see is
        counted twice until the next sweep, which errs toward refusing an upload, never toward
        passing the cap."""
        with self._lock:
            self.used = listed + self._stored_total - mark

    def sweep_due(self, now: float) -> bool:
        return self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY

    def _swept(self, now: float) -> None:
        # Marked before the listing, so requests arriving while it runs do not start another.
        self._last_sweep = now


class LocalUploadStore(UploadBudget):
    """Images in one directory: the blocking calls (``put``, ``path``, ``sweep``) and the
    contract's async ones, which run them in threads so the loop never waits on the disk."""

    def __init__(self, root: Path, ttl: float, max_total: int = 1 << 30) -> None:
        super().__init__(ttl, max_total)
        self.root = root
        self._writing: set[str] = set()
        """Names of the ``.incoming-`` files this store's saves are writing now: their bytes are in
        ``reserved`` (and go to ``used`` once stored), so a sweep leaves them out of its count."""
        self._writing_lock = threading.Lock()
        """Its own, not the budget's: held by saves in threads and by a sweep, for a set operation only."""

    async def save(self, data: bytes, kind: images.ImageKind) -> str:
        try:
            return await asyncio.to_thread(self.put, data, kind)
        except OSError as exc:  # a full or read-only disk: the client may retry later
            raise StorageError(f"upload store: cannot write to {self.root}: {exc}", retriable=True) from exc

    async def load(self, name: str, now: float) -> Path | None:
        return await asyncio.to_thread(self.path, name, now)

    async def expire(self, now: float) -> int:
        self._swept(now)
        try:
            return await asyncio.to_thread(self.sweep, now)
        except OSError as exc:
            raise StorageError(f"upload store: cannot list {self.root}: {exc}", retriable=True) from exc

    def put(self, data: bytes, kind: images.ImageKind) -> str:
        """Store ``data`` under a fresh name and return the name. Written whole, then renamed, so
        a reader never sees half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = images.new_name(kind)
        # Named here, and marked as ours before it exists, so no sweep can list it unmarked.
        tmp = self.root / f".incoming-{secrets.token_hex(16)}"
        with self._writing_lock:
            self._writing.add(tmp.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, self.root / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        finally:
            # Unmarked once renamed (or removed): a sweep that listed the name then finds it gone.
            with self._writing_lock:
                self._writing.discard(tmp.name)
        self._saved(len(data))
        return name

    def path(self, name: str, now: float) -> Path | None:
        """The file of a stored ``name`` still within its time to live, or None."""
        if images.kind_of_name(name) is None:  # before any path is built: no traversal, no dotfiles
            return None
        path = self.root / name
        try:
            if images.expired(path.stat().st_mtime, now, self.ttl):
                return None
        except OSError:
            return None
        return path

    def sweep(self, now: float) -> int:
        """Delete files past their time to live (and incoming files a crash left), count the bytes
        left in ``used``; how many files went. The ``.incoming-`` files of this store's saves in
        progress are neither: ``reserved`` holds their bytes already, and ``used`` gets them when
        they are stored (another process's count toward ``used``: nothing else here holds them)."""
        self._swept(now)
        mark = self._listing()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            entries = []
        seen: list[tuple[str, float, int]] = []
        for entry in entries:
            with self._writing_lock:
                writing = entry.name in self._writing
            if writing:
                continue
            # Asked before the stat: a save of ours that ended since is renamed by now, so its
            # incoming name is gone and not counted; its bytes reach ``used`` through ``_saved``.
            try:
                stat = entry.stat()
            except OSError:
                continue  # gone already
            seen.append((entry.path, stat.st_mtime, stat.st_size))
        doomed, listed = images.sort_out(seen, now, self.ttl)
        self._counted(listed, mark)
        removed = 0
        for path in doomed:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                continue  # gone already, or not ours to remove
        return removed


__all__ = ["SWEEP_EVERY", "LocalUploadStore", "UploadBudget", "UploadStore"]
