"""Notification latency: a provider's webhook received at the bridge → the job's new state
delivered to a WebSocket client subscribed to the job.

Both ends use the same machine's wall clock (``time.time``, CLOCK_REALTIME): the bridge stamps
``received_at`` (integer milliseconds, so up to 1 ms early) into the ``WebhookEnvelope`` it writes
to the ``webhooks`` topic, which this scenario reads back; the client stamps each WebSocket
message as its reader task gets it. A webhook is matched to the message it caused by job id and
status (``video.in_progress`` → running, ``video.completed`` → completed).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import aiohttp
import orjson

from floodgate import codec
from floodgate.bench import load, stats
from floodgate.bench.arrivals import constant
from floodgate.bench.context import Context, CpuMeter
from floodgate.bench.http import Client
from floodgate.bench.probes import TopicTap, stalls, stalls_between, worker_metrics_urls
from floodgate.bench.stacks import PACED_MODEL
from floodgate.devstack import Stack
from floodgate.jobs.record import decode_notification

WEBHOOK_STATUS = {"video.in_progress": "running", "video.completed": "completed", "video.failed": "failed"}
TERMINAL = {"completed", "failed", "cancelled", "expired"}
CONVOY_WINDOW_MS = 250
"""The window in which ``Stamps`` counts every job's webhook records, to find the busiest one."""


@dataclass(frozen=True)
class NotifyConfig:
    jobs: int = 1000
    rate: float = 50.0
    render: tuple[float, float] = (0.2, 0.5)  # seconds (the stack runs at time factor 1)
    limit: int = 100
    sockets: int = 16  # the API allows 100 subscriptions per socket; slow jobs must not run out of them
    timeout: float = 120.0


@dataclass
class Watcher:
    """WebSocket clients on ``/v1/stream``; the first arrival time of each (job, status)."""

    api_url: str
    sockets: int
    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)
    terminal: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession()
        self._ws = [await self._session.ws_connect(f"{self.api_url}/v1/stream") for _ in range(self.sockets)]
        self._next = itertools.cycle(self._ws)
        self._readers = [asyncio.create_task(self._read(ws)) for ws in self._ws]
        return self

    async def subscribe(self, job_id: str, token: str) -> None:
        await next(self._next).send_str(orjson.dumps({"type": "subscribe", "job_id": job_id, "token": token}).decode())

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            now = time.time()
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = orjson.loads(msg.data)
            if data.get("type") == "job":
                job = data["job"]
                self.arrivals.setdefault((job["job_id"], job["status"]), now)
                if job["status"] in TERMINAL:
                    self.terminal.add(job["job_id"])
            elif data.get("type") == "error":
                self.errors.append(str(data.get("detail")))

    async def __aexit__(self, *exc: object) -> None:
        for ws in self._ws:
            await ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self._session.close()


def latencies(start: dict[tuple[str, str], float], end: dict[tuple[str, str], float],
              status: str | None = None) -> list[float]:
    """Milliseconds from ``start`` to ``end`` for every (job, status) both saw."""
    return [(end[k] - t) * 1000 for k, t in start.items() if k in end and (status is None or k[1] == status)]


class Stamps:
    """When each (job, status) passed each hop, from the records' own stamps (wall-clock ms):
    the bridge's ``received_at``, then the producer timestamps of the webhook record and of the
    jobs agent's table write (its changelog is the notifications topic)."""

    def __init__(self, wanted: set[str] | None = None) -> None:
        self.received: dict[tuple[str, str], float] = {}
        self.webhook: dict[tuple[str, str], float] = {}
        self.snapshot: dict[tuple[str, str], float] = {}
        self.wanted = wanted
        """The job ids to stamp (None: every job). With the pipeline running beside the measured
        jobs, decoding every other job's records would load the machine being measured."""
        self.written: dict[int, int] = {}
        """Every job's webhook records by ``CONVOY_WINDOW_MS`` window of their producer timestamp,
        counted without decoding them."""

    def _skip(self, key: bytes | None) -> bool:
        return key is None or (self.wanted is not None and key.decode() not in self.wanted)

    @staticmethod
    def _first(into: dict[tuple[str, str], float], key: tuple[str, str], t: float) -> None:
        into[key] = min(into.get(key, t), t)

    def on_webhook(self, msg: Any) -> None:
        window = msg.timestamp()[1] // CONVOY_WINDOW_MS
        self.written[window] = self.written.get(window, 0) + 1
        if self._skip(msg.key()):
            return
        env = codec.decode("WebhookEnvelope", msg.value(), msg.headers())
        status = WEBHOOK_STATUS.get(orjson.loads(env["body"]).get("type"))
        if status:
            key = (msg.key().decode(), status)
            self._first(self.received, key, env["received_at"] / 1000)
            self._first(self.webhook, key, msg.timestamp()[1] / 1000)

    def on_snapshot(self, msg: Any) -> None:
        if msg.value() is None or self._skip(msg.key()):
            return
        snap = decode_notification(msg.value(), msg.headers())
        self._first(self.snapshot, (snap["job_id"], snap["status"]), msg.timestamp()[1] / 1000)

    def convoy(self) -> dict[str, float | int]:
        """The most webhook records (every job's) written in one ``CONVOY_WINDOW_MS`` window, and
        the mean rate over the windows from the first to the last: how unevenly the jobs agent's
        hop is fed."""
        if not self.written:
            return {"window_ms": CONVOY_WINDOW_MS, "most": 0, "per_s_mean": 0.0}
        windows = max(self.written) - min(self.written) + 1
        return {"window_ms": CONVOY_WINDOW_MS, "most": max(self.written.values()),
                "per_s_mean": sum(self.written.values()) / (windows * CONVOY_WINDOW_MS / 1000)}

    def hops(self, delivered: dict[tuple[str, str], float]) -> dict[str, dict[str, float | int]]:
        """The watcher's path (the bridge's process tells its own subscribers once Kafka has the
        webhook: ``floodgate.api.heard``), and beside it the jobs agent's table write, which
        every other API process waits for and which has the last say."""
        chain = [("bridge: received → webhook record", self.received, self.webhook),
                 ("API: webhook record → WebSocket message", self.webhook, delivered),
                 ("jobs agent (beside the path): webhook record → job change (notification)",
                  self.webhook, self.snapshot)]
        return {name: stats.summary(latencies(a, b)) for name, a, b in chain}


async def run(ctx: Context, stack: Stack, cfg: NotifyConfig, *, only_own: bool = False) -> dict[str, Any]:
    """On the pipeline's stack: jobs for ``PACED_MODEL`` at ``cfg.rate``. ``only_own``: stamp the
    records of this run's jobs only (other jobs are running beside them)."""
    own: set[str] = set()
    stamps = Stamps(own if only_own else None)
    s = stack.settings
    taps = {s.topic("webhooks"): stamps.on_webhook,
            s.topic("notifications"): stamps.on_snapshot}
    ends = {"api": [stack.metrics_urls["api"]], "worker": worker_metrics_urls(stack)}
    before = {process: await stalls(urls, process) for process, urls in ends.items()}
    meter = CpuMeter(ctx.pids(stack)).start()
    with TopicTap(stack.bootstrap, taps, from_now=True):
        async with Watcher(stack.api_url, cfg.sockets) as watcher:
            post = load.post_jobs(stack.api_url, body=lambda i: load.job_body(i, PACED_MODEL))

            async def post_and_subscribe(client: Client, i: int, timeout: float) -> load.Answer:
                status, job_id, token = await post(client, i, timeout)
                if job_id and token:
                    own.add(job_id)
                    await watcher.subscribe(job_id, token)
                return status, job_id, token

            prog = load.Progress()
            async with ctx.progress.watching(lambda: f"{cfg.rate:.0f} jobs/s: sent {prog.sent}, "
                                                     f"terminal on the socket {len(watcher.terminal)}"):
                run_ = await load.open_loop(stack.api_url, constant(cfg.rate, cfg.jobs / cfg.rate),
                                            post_and_subscribe, progress=prog)
                accepted = {x.job_id for x in run_.ok(202) if x.job_id}
                deadline = time.monotonic() + cfg.timeout
                while not accepted <= watcher.terminal and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # the tap is a little behind the socket
    cores = meter.stop()
    # What each process's event loop went through meanwhile: a hop's tail that matches a stall
    # (or a full collection) of the process it crosses is that process's, not Kafka's.
    loops: dict[str, Any] = {}
    for process, urls in ends.items():
        loops.update(stalls_between(before[process], await stalls(urls, process), process))
    all_ms = latencies(stamps.received, watcher.arrivals)
    return {
        "config": asdict(cfg), "accepted": len(accepted), "terminal_seen": len(accepted & watcher.terminal),
        "webhooks_received": len(stamps.received), "matched": len(all_ms), "socket_errors": watcher.errors[:5],
        "latency_ms": stats.summary(all_ms),
        "latency_ms_completed": stats.summary(latencies(stamps.received, watcher.arrivals, "completed")),
        "latency_ms_running": stats.summary(latencies(stamps.received, watcher.arrivals, "running")),
        "hops_ms": stamps.hops(watcher.arrivals), "webhook_convoy": stamps.convoy(), "cpu_cores": cores, **loops,
        "clock": "time.time() on one machine: the bridge's received_at (ms, truncated) → the client's receipt; "
                 "hops use the records' producer timestamps (ms)",
    }
