"""The ETA a job is shown at acceptance: sampled jobs are read with ``GET /v1/jobs/{id}`` right
after their 202, and again every ``retry`` seconds until an answer carries ``eta_seconds`` (a
brand new job has no place in line until the worker's first snapshot of it reaches the API's job
view) or says the job has already left the line.

The reads are extra load on the API whose accept latency the spike measures, so they stay off its
path: ``offer`` (called as each 202 arrives) only appends to a list, and a task of their own sends
the reads on their own connections, paced at ``rate`` per second at most, ``connections`` at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from floodgate.bench.http import HttpError, build_request
from floodgate.bench.load import client_for
from floodgate.bench.waits import EtaReading, in_sample

LEFT_THE_LINE = frozenset({"submitted", "running", "completed", "failed", "cancelled", "expired"})


@dataclass(order=True)
class _Pending:
    due: float  # time.monotonic() of the next read
    job_id: str = field(compare=False)
    token: str = field(compare=False)
    accepted_at: float = field(compare=False)  # wall clock


class EtaProbe:
    def __init__(self, api_url: str, *, every: int = 1, max_samples: int = 500, rate: float = 50.0,
                 connections: int = 4, retry: float = 0.05, give_up: float = 30.0) -> None:
        self.api_url, self.every, self.max_samples = api_url, max(1, every), max_samples
        self.interval, self.retry, self.give_up = 1.0 / rate, retry, give_up
        self.readings: list[EtaReading] = []
        self.offered = 0
        self.reads = 0
        self.left_before_eta = 0
        """Sampled jobs whose first answer with a place was already past the line (a free slot)."""
        self.gave_up = 0
        self.errors = 0
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._connections = asyncio.Semaphore(connections)
        self._client = client_for(api_url, connections)
        self._host = urlsplit(api_url).netloc
        self._reading: set[asyncio.Task[None]] = set()

    def offer(self, index: int, job_id: str, token: str) -> None:
        """A 202 just arrived for request ``index``: read it if it is one of the sample."""
        if not in_sample(index, self.every) or self.offered >= self.max_samples:
            return
        self.offered += 1
        heapq.heappush(self._pending, _Pending(time.monotonic(), job_id, token, time.time()))
        self._wake.set()

    async def run(self) -> None:
        """Read until ``finish`` is called and nothing is left to read."""
        try:
            while not (self._closing and not self._pending and not self._reading):
                if not self._pending or self._pending[0].due > time.monotonic():
                    timeout = self._pending[0].due - time.monotonic() if self._pending else 0.5
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
                    continue
                item = heapq.heappop(self._pending)
                await self._connections.acquire()
                task = asyncio.create_task(self._read(item))
                self._reading.add(task)
                task.add_done_callback(self._reading.discard)
                await asyncio.sleep(self.interval)
        finally:
            await self._client.close()

    async def finish(self, timeout: float) -> None:
        """Stop taking new work and wait (at most ``timeout`` s) for the reads under way."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        while (self._pending or self._reading) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.gave_up += len(self._pending)
        self._pending.clear()
        self._wake.set()

    async def _read(self, item: _Pending) -> None:
        try:
            raw = build_request("GET", self._host, f"/v1/jobs/{item.job_id}",
                                headers={"Authorization": f"Bearer {item.token}"})
            try:
                response = await self._client.request(raw, 30.0)
            except (TimeoutError, HttpError, OSError):
                self.errors += 1
                self._again(item)
                return
            self.reads += 1
            now = time.time()
            if response.status != 200:
                self.errors += 1
                self._again(item)
                return
            job = orjson.loads(response.body)
            eta, status = job.get("eta_seconds"), job.get("status")
            if status == "queued" and isinstance(eta, (int, float)):
                position = job.get("queue_position")
                self.readings.append(EtaReading(item.job_id, item.accepted_at, now, float(eta),
                                                position if isinstance(position, int) else None))
            elif status in LEFT_THE_LINE:
                self.left_before_eta += 1
            else:
                self._again(item)
        finally:
            self._connections.release()

    def _again(self, item: _Pending) -> None:
        if time.time() - item.accepted_at > self.give_up:
            self.gave_up += 1
            return
        item.due = time.monotonic() + self.retry
        heapq.heappush(self._pending, item)
        self._wake.set()

    def describe(self) -> dict[str, float | int]:
        return {"offered": self.offered, "reads": self.reads, "with_eta": len(self.readings),
                "left_before_eta": self.left_before_eta, "gave_up": self.gave_up, "errors": self.errors,
                "every": self.every, "max_rate_per_s": round(1.0 / self.interval, 1)}
