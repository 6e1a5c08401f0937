"""The chaos suite counts the stall watchdog's firings in every worker's log, restarts included."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from floodgate.chaos.scenarios import STALL_MARK, stall_firings


def test_firings_are_counted_over_every_worker_and_nothing_else(tmp_path: Path) -> None:
    def child(name: str, text: str) -> SimpleNamespace:
        log = tmp_path / f"{name}.log"
        log.write_text(text)
        return SimpleNamespace(log=log)

    line = f"WARNING dispatch.wan[1]: records up to offset 9 wait, {STALL_MARK} 4 for 30 s\n"
    stack = SimpleNamespace(children={
        "worker-0": child("worker-0", "started\n" + line + "killed\nstarted again\n" + line),
        "worker-1": child("worker-1", "started\n"),
        "api": child("api", line),  # not a worker: the API has no stream partitions
        "worker-2": SimpleNamespace(log=tmp_path / "never-written.log"),
    })
    assert stall_firings(stack) == 2  # type: ignore[arg-type]
