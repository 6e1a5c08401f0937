"""SpillStore: the SQLite file behind the job view's evictions; no Kafka."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from floodgate.api.spill import FILE_NAME, SpillStore, sweep_dead


def snap(job_id: str, version: int, status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {"job_id": job_id, "tenant": "default", "user_id": "u1", "model": "kling-2.1", "provider": "kling",
            "provider_job_id": None, "status": status, "progress": 1.0, "video_url": None, "error": None,
            "attempt": 0, "created_at": 1_700_000_000_000, "updated_at": 1_700_000_000_000 + version,
            "webhook_url": None, "metadata": {}, "version": version, **fields}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SpillStore]:
    s = SpillStore(tmp_path / FILE_NAME)
    yield s
    s.close()


def test_a_snapshot_reads_back_exactly(store: SpillStore) -> None:
    original = snap("j", 4, video_url="https://cdn.example/v.mp4", metadata={"k": "v", "ü": "✓"},
                    progress=0.25, error=None)
    store.put_many([original])
    assert store.get("j") == original
    assert store.get("other") is None


@pytest.mark.parametrize(("first", "second", "kept"), [(1, 2, 2), (2, 1, 2), (3, 3, 3)])
def test_only_a_higher_version_replaces_a_row(store: SpillStore, first: int, second: int, kept: int) -> None:
    store.put_many([snap("j", first, "running")])
    store.put_many([snap("j", second, "completed")])
    found = store.get("j")
    assert found is not None and found["version"] == kept
    assert found["status"] == ("running" if kept == first else "completed")


def test_put_many_in_any_order_keeps_the_highest(store: SpillStore) -> None:
    store.put_many([snap("a", 2), snap("b", 1), snap("a", 5), snap("a", 3)])
    store.put_many([])
    assert store.versions(["a", "b", "c"]) == {"a": 5, "b": 1}


def test_versions_of_more_ids_than_one_query_binds(store: SpillStore) -> None:
    store.put_many(snap(f"j{i}", i) for i in range(0, 1500, 2))
    found = store.versions(f"j{i}" for i in range(1500))
    assert found == {f"j{i}": i for i in range(0, 1500, 2)}


def test_the_file_is_wal_with_normal_sync(store: SpillStore) -> None:
    with sqlite3.connect(store.path) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_a_new_store_never_trusts_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    first = SpillStore(path)
    first.put_many([snap("j", 1)])
    first.close()
    second = SpillStore(path)
    try:
        assert second.get("j") is None
    finally:
        second.close()


def test_reads_from_other_threads_see_committed_writes(store: SpillStore) -> None:
    store.put_many(snap(f"j{i}", 1) for i in range(100))
    seen: list[dict[str, Any] | None] = []
    reader = threading.Thread(target=lambda: seen.extend(store.get(f"j{i}") for i in range(100)))
    reader.start()
    reader.join(10)
    assert [s and s["job_id"] for s in seen] == [f"j{i}" for i in range(100)]


def test_close_twice_is_fine_and_use_after_close_raises(tmp_path: Path) -> None:
    s = SpillStore(tmp_path / FILE_NAME)
    s.close()
    s.close()
    with pytest.raises(sqlite3.Error):
        s.put_many([snap("j", 1)])


def test_private_stores_do_not_share_a_file_and_clean_up(tmp_path: Path) -> None:
    one, two = SpillStore.private(tmp_path), SpillStore.private(tmp_path)
    try:
        assert one.path != two.path and one.path.parent.parent == two.path.parent.parent == tmp_path
        assert one.path.parent.name.split("-")[1] == str(os.getpid())
        one.put_many([snap("j", 1)])
        assert two.get("j") is None
    finally:
        one.close()
        two.close()
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          check=True, capture_output=True, text=True)
    return int(proc.stdout)


def test_directories_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = tmp_path / f"myhost-{dead_pid()}-abc"
    alive = tmp_path / f"myhost-{os.getpid()}-def"
    elsewhere = tmp_path / f"otherhost-{dead_pid()}-ghi"
    for d in (dead, alive, elsewhere):
        d.mkdir()
        (d / FILE_NAME).write_bytes(b"stale")
    unrelated = tmp_path / "myhost-notes.txt"
    unrelated.write_text("keep")
    assert sweep_dead(tmp_path, "myhost") == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name, unrelated.name])
