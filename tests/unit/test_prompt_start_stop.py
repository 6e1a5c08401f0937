"""A worker starts and stops without Faust's fixed one-second waits (``streams.app.PromptTables``
and ``streams.app.PromptExit``): a killed worker is back in its group sooner, and one stopped in
order leaves sooner."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from floodgate.settings import Settings
from streams.app import PromptExit, PromptTables, create_app


def _app(tmp_path: Path) -> Any:
    settings = Settings.from_env({}).with_overrides(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "data")
    app.Table("counts", default=int)
    return app


def test_the_app_uses_the_prompt_table_manager_and_worker(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert isinstance(app.tables, PromptTables)
    assert app.conf.Worker is PromptExit
    assert app.tables.label == "TableManager", "the logs keep Faust's name for it"


async def test_the_tables_are_taken_up_at_start_without_a_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's manager sleeps a second before it finalizes the tables; this one registers them at
    once (the conductor subscribes the moment they are), and a table added after is refused."""
    app = _app(tmp_path)
    tables = app.tables
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)

    started: list[str] = []

    def starting(what: str) -> Any:
        async def start() -> None:
            started.append(what)
        return start

    monkeypatch.setattr(tables, "sleep", nap)
    monkeypatch.setattr(tables.recovery, "start", starting("recovery"))
    for name, table in tables.items():  # (a table's start would connect to Kafka)
        monkeypatch.setattr(table, "maybe_start", starting(name))
    monkeypatch.setattr(app.consumer, "assignment", set)  # none yet: the group is joined after
    await tables.on_start()
    assert naps == []
    assert tables._tables_registered.is_set() and started == ["counts", "recovery"]
    with pytest.raises(RuntimeError, match="Too late"):
        app.Table("late", default=int)


async def test_a_stopped_worker_gives_its_last_callbacks_turns_of_the_loop_not_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sentinel run after every task is gathered lets callbacks scheduled by the stops run
    (a transport's close); it sleeps no time of its own."""
    naps: list[float] = []
    sleep = asyncio.sleep

    async def nap(seconds: float, result: Any = None) -> Any:
        naps.append(seconds)
        return await sleep(0, result)

    ran: list[int] = []
    loop = asyncio.get_running_loop()
    loop.call_soon(ran.append, 1)  # scheduled by a stop: runs before the loop closes
    monkeypatch.setattr(asyncio, "sleep", nap)
    worker = PromptExit.__new__(PromptExit)
    await worker._sentinel_task()
    assert naps and set(naps) == {0}
    assert ran == [1]
