"""The chaos suite counts the stall watchdog's firings and times the table replays in every
worker's log, restarts included, and reads the end of a run in the order that keeps its unstored
count sound."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from floodgate.chaos.scenarios import (
    REPLAY_END,
    REPLAY_START,
    STALL_MARK,
    replay_note,
    stall_firings,
    table_replays,
    worker_logs,
)
from floodgate.settings import Settings


def child(tmp_path: Path, name: str, text: str) -> SimpleNamespace:
    """A stack's child whose log holds ``text``."""
    log = tmp_path / f"{name}.log"
    log.write_text(text)
    return SimpleNamespace(log=log)


def test_firings_are_counted_over_every_worker_and_nothing_else(tmp_path: Path) -> None:
    line = f"WARNING dispatch.wan[1]: records up to offset 9 wait, {STALL_MARK} 4 for 30 s\n"
    stack = SimpleNamespace(children={
        "worker-0": child(tmp_path, "worker-0", "started\n" + line + "killed\nstarted again\n" + line),
        "worker-1": child(tmp_path, "worker-1", "started\n"),
        "api": child(tmp_path, "api", line),  # not a worker: the API has no stream partitions
        "worker-2": SimpleNamespace(log=tmp_path / "never-written.log"),
    })
    assert stall_firings(worker_logs(stack)) == 2  # type: ignore[arg-type]


def test_table_replays_are_timed_from_their_start_to_their_end() -> None:
    log = "\n".join([
        f"[2026-12-06 21:00:51,929] [31213] [INFO] [^---Recovery]: {REPLAY_START}... ",
        "[2026-12-06 21:00:55,000] [31213] [INFO] [^---Recovery]: Resuming flow... ",
        f"[2026-12-06 21:00:59,359] [31213] [INFO] [^---Recovery]: {REPLAY_END} ",
        f"[2026-12-06 21:01:10,000] [31300] [INFO] [^---Recovery]: {REPLAY_START}... ",  # killed before its end
        f"[2026-12-06 21:01:20,500] [31400] [INFO] [^---Recovery]: {REPLAY_START}... ",
        f"[2026-12-06 21:01:21,000] [31400] [INFO] [^---Recovery]: {REPLAY_END} ",
        f"[2026-12-06 21:01:30,000] [31400] [INFO] [^---Recovery]: {REPLAY_END} ",  # no replay began: none
    ])
    assert [round(d, 3) for d in table_replays(log)] == [7.43, 0.5]


def test_the_replay_note_covers_every_worker(tmp_path: Path) -> None:
    def replay(start: str, end: str) -> str:
        return (f"[2026-12-06 {start},000] [1] [INFO] {REPLAY_START}\n"
                f"[2026-12-06 {end},000] [1] [INFO] {REPLAY_END}\n")

    stack = SimpleNamespace(children={
        "worker-0": child(tmp_path, "worker-0", replay("10:00:00", "10:00:02") + replay("10:01:00", "10:01:09")),
        "worker-1": child(tmp_path, "worker-1", replay("10:00:00", "10:00:01")),
        "api": child(tmp_path, "api", replay("10:00:00", "10:00:30")),
    })
    note = replay_note(worker_logs(stack))  # type: ignore[arg-type]
    assert note == "3 table replays in the workers' logs: median 2.0 s, longest 9.0 s."
    assert replay_note(worker_logs(SimpleNamespace(children={}))) == "No table replay in the workers' logs."  # type: ignore[arg-type]


def test_the_provider_is_read_before_the_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every webhook the simulator counts as delivered is on Kafka by then; a topic read before it
    would miss those delivered in between and call them unstored."""
    from floodgate.chaos import observe, scenarios
    from floodgate.chaos.checker import History

    reads: list[str] = []

    async def provider_jobs(url: str, providers: list[str]) -> list[object]:
        reads.append("provider")
        return []

    def topic(name: str) -> Callable[[str, str], set[str]]:
        def read(bootstrap: str, topic: str) -> set[str]:
            reads.append(name)
            return set()
        return read

    monkeypatch.setattr(observe, "provider_jobs", provider_jobs)
    monkeypatch.setattr(observe, "request_ids", topic("requests"))
    monkeypatch.setattr(observe, "webhook_ids", topic("webhooks"))
    stack = SimpleNamespace(settings=Settings.from_env({}), bootstrap="127.0.0.1:1", simulator_url="http://sim")
    history = History("s")
    scenarios.read_the_end(history, stack)  # type: ignore[arg-type]
    assert reads[0] == "provider" and sorted(reads[1:]) == ["requests", "webhooks"]
    assert history.webhook_ids == set() and history.requested == set() and history.provider_jobs == []
