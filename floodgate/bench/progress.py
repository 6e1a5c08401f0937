"""A plain terminal progress line: ``[####------] 3/8 accept · 1000 req/s sent 4512 · 42s``.

On a terminal the line rewrites itself; otherwise (CI logs, pytest) a line is printed at most
every ``every`` seconds so logs stay short.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from floodgate.tasks import cancel_and_wait

WIDTH = 20


class ProgressLine:
    def __init__(self, stages: int, out: TextIO | None = None, every: float = 10.0) -> None:
        self.stages = max(1, stages)
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.every = every
        self.index = 0
        self.name = ""
        self.started = time.monotonic()
        self.stage_started = self.started
        self._last_print = 0.0

    def stage(self, name: str) -> None:
        """Begin the next stage (scenario)."""
        if self.tty and self.name:
            self.out.write("\n")
        self.index += 1
        self.name = name
        self.stage_started = time.monotonic()
        self.status("starting", force=True)

    def status(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        filled = int(WIDTH * (self.index - 1) / self.stages)
        bar = "#" * filled + "-" * (WIDTH - filled)
        line = (f"[{bar}] {self.index}/{self.stages} {self.name} · {text} · "
                f"{now - self.stage_started:4.0f}s (total {now - self.started:4.0f}s)")
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            self.out.flush()
        elif force or now - self._last_print >= self.every:
            self._last_print = now
            print(line, file=self.out, flush=True)

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
        print(f"[{'#' * WIDTH}] done in {time.monotonic() - self.started:.0f}s", file=self.out, flush=True)

    @contextlib.asynccontextmanager
    async def watching(self, describe: Callable[[], str], interval: float = 0.5) -> AsyncIterator[None]:
        """Refresh the line from ``describe()`` while the block runs."""
        async def tick() -> None:
            while True:
                self.status(describe())
                await asyncio.sleep(interval)

        task = asyncio.create_task(tick())
        try:
            yield
        finally:
            await cancel_and_wait(task)
