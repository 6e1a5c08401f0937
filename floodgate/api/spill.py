"""Where the job view's evicted snapshots go: one SQLite file per API process.

``JobView`` keeps a bounded number of snapshots in memory; the ones it evicts are written here
so that a finished job's GET still answers ``completed`` long after it left memory. Memory stays
bounded; **disk use grows with the number of jobs the process has seen** (a few hundred bytes per
job: at 5,000 jobs a minute, a few GB per day of uptime). Nothing is pruned while the process
runs; the file is removed when it stops.

The store is a cache of the compacted ``notifications`` topic, never a source of truth: every
API process replays that topic from the beginning at start, so a store always starts empty and
a file left by an earlier run is deleted, not read. ``private`` gives each process a directory
of its own (named after host and pid) so API processes on one machine never share a file; it
also removes directories left behind by processes that are gone. It assumes a local disk (SQLite's
WAL mode needs one anyway).

Why SQLite: it is in the standard library (no new dependency), indexed lookups by job id stay
fast at millions of rows, and one transaction per batch keeps bursts of evictions cheap.

One table, ``spill(job_id TEXT PRIMARY KEY, version, updated_at, snapshot BLOB)``; a write only
replaces a row with a *higher* version, so the store never goes back in time. Methods block on
disk I/O: call them through ``asyncio.to_thread`` from the event loop (``JobView`` does). One
writer connection and one reader connection, each behind its own lock, so WAL lets reads go on
while a batch is being written.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from floodgate.procs import pid_alive

Snapshot = dict[str, Any]

FILE_NAME = "view.sqlite"
# SQLite's default limit on bound parameters is 32766 (999 before 3.32); stay far below it.
_CHUNK = 500

_SCHEMA = """
CREATE TABLE spill (
    job_id     TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    snapshot   BLOB NOT NULL
)
"""
_UPSERT = """
INSERT INTO spill (job_id, version, updated_at, snapshot) VALUES (?, ?, ?, ?)
ON CONFLICT (job_id) DO UPDATE
    SET version = excluded.version, updated_at = excluded.updated_at, snapshot = excluded.snapshot
    WHERE excluded.version > spill.version
"""


class SpillStore:
    """Latest spilled snapshot per job id, on disk. Thread-safe; every method blocks on I/O.

    Raises ``sqlite3.Error`` when the disk does (full, unwritable): the caller decides what a
    lost write costs.
    """

    def __init__(self, path: Path, *, owned_dir: Path | None = None) -> None:
        """Open a new, empty store at ``path``; whatever was there before is deleted.

        ``owned_dir`` (see ``private``) is removed, with the file in it, by ``close``.
        """
        self.path = Path(path)
        self._owned_dir = owned_dir
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        # check_same_thread=False: the locks, not the creating thread, make access safe.
        self._writer = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            # A lost tail after a power cut costs nothing: the file is rebuilt from Kafka anyway.
            self._writer.execute("PRAGMA synchronous=NORMAL")
            with self._writer:
                self._writer.execute(_SCHEMA)
            self._reader = sqlite3.connect(self.path, check_same_thread=False)
        except BaseException:
            self._writer.close()
            raise

    @classmethod
    def private(cls, parent: Path) -> SpillStore:
        """A store in a new directory under ``parent`` that belongs to this process alone.

        Directories under ``parent`` left by dead processes of this host are removed first.
        """
        parent = Path(parent)
        parent.mkdir(parents=True, exist_ok=True)
        host = _host()
        sweep_dead(parent, host)
        directory = Path(tempfile.mkdtemp(prefix=f"{host}-{os.getpid()}-", dir=parent))
        try:
            return cls(directory / FILE_NAME, owned_dir=directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def put_many(self, snapshots: Iterable[Snapshot]) -> None:
        """Write ``snapshots`` in one transaction; a row only moves to a higher version."""
        rows = [(s["job_id"], s["version"], s.get("updated_at") or 0, orjson.dumps(s)) for s in snapshots]
        if not rows:
            return
        with self._write_lock, self._writer:
            self._writer.executemany(_UPSERT, rows)

    def get(self, job_id: str) -> Snapshot | None:
        with self._read_lock:
            row = self._reader.execute("SELECT snapshot FROM spill WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        snapshot: Snapshot = orjson.loads(row[0])
        return snapshot

    def versions(self, job_ids: Iterable[str]) -> dict[str, int]:
        """The stored version of each of ``job_ids`` that is stored (absent ids are left out)."""
        ids = list(dict.fromkeys(job_ids))
        found: dict[str, int] = {}
        with self._read_lock:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(self._reader.execute(
                    f"SELECT job_id, version FROM spill WHERE job_id IN ({marks})", chunk).fetchall())
        return found

    def close(self) -> None:
        """Close the file (waiting for a write in progress); remove it if ``private`` made it.
        Safe to call twice."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def sweep_dead(parent: Path, host: str) -> list[Path]:
    """Remove ``<host>-<pid>-*`` directories under ``parent`` whose pid no longer runs; the
    removed paths. Other hosts' directories (a shared volume) are never touched."""
    removed = []
    pattern = re.compile(rf"{re.escape(host)}-(\d+)-")
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir() or pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed



__all__ = ["FILE_NAME", "SpillStore", "sweep_dead"]
