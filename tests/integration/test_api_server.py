"""Starting and stopping one API process (``floodgate.api.server``) on the real broker: a start
that fails halfway stops what it had started, as a clean close does."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.storage.local import LocalVideoStore
from floodgate.api.server import serve, spill_dir
from floodgate.procs import bind_socket
from floodgate.settings import Settings
from tests.integration.api_helpers import DEV_SIMULATOR

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(simulator_url=DEV_SIMULATOR)


class ClosingStore(LocalVideoStore):
    """A local store that says whether it was closed."""

    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


def running_tasks(before: set[asyncio.Task[object]]) -> list[str]:
    current = asyncio.current_task()
    return sorted(t.get_name() for t in asyncio.all_tasks() - before if t is not current and not t.done())


def spill_files(settings: Settings) -> list[Path]:
    return list(spill_dir(settings).rglob("view.sqlite*"))


@pytest.mark.parametrize("outcome", ["started, then closed", "the port is taken"])
async def test_every_part_an_api_started_is_stopped(settings: Settings, tmp_path: Path, outcome: str) -> None:
    # All roles, the deliveries and the copier: every part that runs a task, holds a client or a
    # file. Whether the start got as far as listening or failed at the last step, nothing of it
    # may keep running: a task left behind keeps polling Kafka after the server is gone.
    before = set(asyncio.all_tasks())
    store = ClosingStore(tmp_path / "videos")
    taken = bind_socket("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1] if outcome == "the port is taken" else 0
    try:
        if outcome == "the port is taken":
            with pytest.raises(OSError):
                await serve(settings, host="127.0.0.1", port=port, outgoing_webhooks=True, video_copier=True,
                            video_store=store)
        else:
            server = await serve(settings, host="127.0.0.1", port=port, outgoing_webhooks=True,
                                 video_copier=True, video_store=store)
            assert server.view is not None and server.outgoing is not None and server.copier is not None
            assert running_tasks(before), "a running API has tasks of its own"
            assert spill_files(settings), "and a spill store on disk"
            await server.close()
            await server.close()  # safe twice
    finally:
        taken.close()
    assert running_tasks(before) == []
    assert store.closed
    assert spill_files(settings) == []
