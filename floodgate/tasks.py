"""Starting and ending the background work that services run: asyncio tasks (readers, monitors,
writers) and the threads that poll librdkafka consumers."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to do) and wait until it has ended, so whatever it holds
    (a consumer, a file) is no longer in use when the caller closes it. Its cancellation is the
    expected end, not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class PollThread:
    """A daemon thread that runs ``target(loop)`` (the event loop it was started from, to hand
    results back with ``call_soon_threadsafe``) until ``stopping`` is set. ``target`` checks
    ``stopping`` between its polls, so ``stop`` returns within one poll's wait."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, target: Callable[[asyncio.AbstractEventLoop], None]) -> None:
        self._thread = threading.Thread(target=target, args=(asyncio.get_running_loop(),), name=self.name,
                                        daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Ask the thread to end and wait for it (off the loop)."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)


__all__ = ["PollThread", "cancel_and_wait"]
