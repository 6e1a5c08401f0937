"""``make demo``: the whole stack on the embedded default, a spike fired at the HTTP API, a live
count of jobs per state, a few sample jobs followed over Server-Sent Events as a user would (their
place in line and ETA as they move up), and a closing summary (accept latency, outcomes, provider
concurrency against its limit, 429s, the jobs another model served and why, how the samples' first
ETA compared with their wait).

The demo's routing is the dev table with spillover (``SPILLOVER``): kling carries two thirds of
the spike (sora-2 is retired and falls back to it), so without it wan would finish its third and
sit idle while kling's line still waits. A routing file of the user's own
(``FLOODGATE_ROUTING_FILE``) is used as it is."""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from floodgate.devstack import Stack
from floodgate.jobs.record import decode_notification
from floodgate.procs import free_port
from floodgate.provider_config import dev_table
from floodgate.settings import Settings

MODELS = ("wan-2.6", "kling-2.1", "sora-2")
TERMINAL = {"completed", "failed", "cancelled", "expired"}
SPILLOVER = {model: {"equivalents": ["wan-2.6"], "max_wait_s": 10} for model in ("kling-2.1", "sora-2")}
"""Waiting kling-2.1 and sora-2 jobs (both served by kling) go to wan-2.6 once their wait at kling
passes 10 s and wan has room: the demo's renders take under a second, so 10 s is a long line."""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Tally:
    """Latest status per job, from the notifications topic (the same feed the API pushes)."""

    status: dict[str, str] = field(default_factory=dict)
    version: dict[str, int] = field(default_factory=dict)
    served: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Job id → (the model asked for, the model serving it), of the jobs another model serves."""

    def add(self, snap: dict[str, Any]) -> None:
        job = snap["job_id"]
        if snap["version"] >= self.version.get(job, -1):
            self.version[job] = snap["version"]
            self.status[job] = snap["status"]
            serving = snap.get("serving_model")
            if serving and serving != snap["model"]:
                self.served[job] = (snap["model"], serving)

    def counts(self) -> Counter[str]:
        return Counter(self.status.values())

    def served_elsewhere(self) -> Counter[str]:
        """How many jobs each other model served, by "asked → serving"."""
        return Counter(f"{asked} → {serving}" for asked, serving in self.served.values())


async def follow(bootstrap: str, topic: str, tally: Tally, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    tally.add(decode_notification(r.value, r.headers))
    finally:
        await consumer.stop()


SAMPLES = 3
"""Jobs followed live: the last one of each model, which wait behind the deepest lines."""


@dataclass
class Sample:
    """A job the demo follows over SSE as the generation page would, and what it was told."""

    index: int
    model: str
    job_id: str
    token: str
    accepted: float
    """Monotonic time of its 202."""
    first: tuple[int, float | None] | None = None
    """The first place in line and ETA it was told."""
    started_after: float | None = None
    """Seconds from its 202 to the first state out of the line."""
    status: str = "queued"
    served_by: str | None = None
    """The model serving it when not the one asked for, and why (the job's ``route_note``)."""
    _last: tuple[str, int | None, float] | None = None
    """The state and place of the last line printed, and when."""

    @property
    def name(self) -> str:
        return f"{self.job_id[:8]}…{self.job_id[-4:]}"

    def update(self, job: dict[str, Any], now: float) -> str | None:
        """Take in the job as SSE showed it; the line to print on a new state, or when its place
        moved by a tenth since the last line (or 5 s went by): a few lines, not one per nudge."""
        status, place, eta = job["status"], job.get("queue_position"), job.get("eta_seconds")
        self.status = status
        serving = job.get("serving_model")
        if serving and serving != self.model:
            note = job.get("route_note")
            self.served_by = f"{serving} ({note})" if note else serving
        if status == "queued" and place is not None and self.first is None:
            self.first = (place, eta)
        if status != "queued" and self.started_after is None:
            self.started_after = now - self.accepted
        if self._last is not None:
            last_status, last_place, said_at = self._last
            if status == last_status and (place == last_place or (
                    place is not None and last_place is not None
                    and abs(place - last_place) < max(1, last_place // 10) and now - said_at < 5.0)):
                return None
        first_out = status != "queued" and (self._last is None or self._last[0] == "queued")
        self._last = (status, place, now)
        where = f"place {place:4d}  eta {_seconds(eta)}" if place is not None else ""
        if first_out and self.started_after is not None:
            where = f"left the line after {self.started_after:.0f}s"
            if self.served_by is not None:
                where += f", served by {self.served_by}"
        return f"  [{self.name} {self.model:9s}] {status:9s} {where}".rstrip()


def _seconds(value: float | None) -> str:
    return "  ?" if value is None else f"{value:3.0f}s"


async def follow_sample(session: aiohttp.ClientSession, api: str, sample: Sample, say: Callable[[str], None]) -> None:
    """Follow ``sample`` over Server-Sent Events until its terminal state, saying each move."""
    url = f"{api}/v1/jobs/{sample.job_id}/events?token={sample.token}"
    with contextlib.suppress(aiohttp.ClientError):
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data:"):
                    continue
                job = json.loads(line[5:])
                said = sample.update(job, time.perf_counter())
                if said:
                    say(said)
                if sample.status in TERMINAL and job.get("final", True):
                    return  # (an end told before the worker recorded it may yet be another)


async def fire(api: str, jobs: int, rate: float, latencies: list[float], errors: Counter[str],
               on_accepted: Callable[[int, dict[str, Any], float], None] | None = None) -> list[str]:
    """Open-loop arrivals at ``rate``/s (a request is sent on schedule whether or not earlier ones
    have been answered), as a real spike would arrive. ``on_accepted(i, body, at)`` hears of each
    202."""
    ids: list[str] = []
    rng = random.Random(7)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
        async def one(i: int) -> None:
            body = {"model": MODELS[i % len(MODELS)], "user_id": f"user-{i % 97}",
                    "input": {"prompt": f"a lighthouse in a storm, take {i}"}}
            t0 = time.perf_counter()
            try:
                async with session.post(f"{api}/v1/jobs", json=body) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status == 202:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        ids.append(data["job_id"])
                        if on_accepted is not None:
                            on_accepted(i, data, time.perf_counter())
                    else:
                        errors[str(resp.status)] += 1
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] += 1

        start = time.perf_counter()
        tasks = []
        for i in range(jobs):
            due = start + i / rate + rng.uniform(0, 0.5 / rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return ids


async def run_spike(stack: Stack, jobs: int, rate: float, deadline: float, out: Any = sys.stdout) -> dict[str, Any]:
    tally, stop = Tally(), asyncio.Event()
    follower = asyncio.create_task(follow(stack.bootstrap, stack.settings.topic("notifications"), tally, stop))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    t0 = time.monotonic()
    tty = out.isatty() if hasattr(out, "isatty") else False
    samples: list[Sample] = []
    watchers: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession()

    def say(line: str) -> None:
        # On a terminal the count line is redrawn in place: clear it, print the move, and let the
        # next tick draw it again below.
        print(("\r\x1b[K" + line) if tty else line, file=out, flush=True)

    def on_accepted(i: int, data: dict[str, Any], at: float) -> None:
        if i >= jobs - SAMPLES:
            sample = Sample(i, MODELS[i % len(MODELS)], data["job_id"], data["token"], at)
            samples.append(sample)
            watchers.append(asyncio.create_task(follow_sample(session, stack.api_url, sample, say)))

    firing = asyncio.create_task(fire(stack.api_url, jobs, rate, latencies, errors, on_accepted))
    try:
        while True:
            await asyncio.sleep(1.0)
            c = tally.counts()
            done = sum(c[s] for s in TERMINAL)
            line = (f"t={time.monotonic() - t0:5.0f}s accepted={len(latencies):5d} "
                    + " ".join(f"{s}={c[s]}" for s in ("queued", "submitted", "running", "completed", "failed")))
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
            if firing.done() and done >= len(latencies):
                break
            if time.monotonic() - t0 > deadline:
                print(f"\ndeadline of {deadline:.0f}s reached", file=out)
                break
        await firing
        # The samples are terminal by now (their SSE streams end there); a stuck one is not waited for.
        _, stuck = await asyncio.wait(watchers, timeout=5.0) if watchers else (set(), set())
        for task in stuck:
            task.cancel()
    finally:
        stop.set()
        await follower
        await session.close()
    elapsed = time.monotonic() - t0
    async with aiohttp.ClientSession() as session, session.get(f"{stack.simulator_url}/stats") as resp:
        stats = await resp.json()
    counts = tally.counts()
    providers = {name: {k: p[k] for k in ("concurrency_limit", "max_concurrency", "rejected_429", "jobs_created")}
                 for name, p in stats["providers"].items()}
    return {
        "offered": jobs, "rate": rate, "accepted": len(latencies), "errors": dict(errors),
        "accept_p50_ms": percentile(latencies, 0.50), "accept_p99_ms": percentile(latencies, 0.99),
        "completed": counts["completed"], "failed": counts["failed"], "elapsed_s": elapsed,
        "jobs_per_s": counts["completed"] / elapsed if elapsed else 0.0, "providers": providers,
        "served_elsewhere": dict(tally.served_elsewhere()),
        "samples": [{"job_id": x.job_id, "model": x.model, "first_place": x.first[0] if x.first else None,
                     "first_eta_s": x.first[1] if x.first else None, "started_after_s": x.started_after,
                     "status": x.status, "served_by": x.served_by} for x in sorted(samples, key=lambda x: x.index)],
    }


def print_summary(summary: dict[str, Any], out: Any = sys.stdout) -> None:
    print("\n--- summary ---", file=out)
    print(f"offered {summary['offered']} at {summary['rate']:.0f}/s; accepted {summary['accepted']}; "
          f"errors {summary['errors'] or 'none'}", file=out)
    print(f"accept latency p50 {summary['accept_p50_ms']:.1f} ms, p99 {summary['accept_p99_ms']:.1f} ms", file=out)
    print(f"completed {summary['completed']}, failed {summary['failed']} in {summary['elapsed_s']:.0f}s "
          f"({summary['jobs_per_s']:.1f} jobs/s)", file=out)
    for name, p in summary["providers"].items():
        print(f"provider {name}: max concurrency {p['max_concurrency']} / limit {p['concurrency_limit']}, "
              f"429s {p['rejected_429']}, jobs created {p['jobs_created']}", file=out)
    if elsewhere := summary.get("served_elsewhere"):
        print("served by another model: " + ", ".join(f"{pair} {n}" for pair, n in sorted(elsewhere.items())), file=out)
    for x in summary.get("samples", ()):
        told = (f"first told place {x['first_place']}, eta {_seconds(x['first_eta_s']).strip()}"
                if x["first_place"] is not None else "never waited in line")
        left = (f"left the line after {x['started_after_s']:.0f}s" if x["started_after_s"] is not None
                else "never left it")
        served = f"; served by {x['served_by']}" if x.get("served_by") else ""
        print(f"sample {x['job_id']} ({x['model']}): {told}; {left}{served}; {x['status']}", file=out)


def main(jobs: int = 2000, rate: float = 200.0, deadline: float = 600.0) -> int:
    settings = Settings.from_env()
    home = Path(tempfile.mkdtemp(prefix="floodgate-demo-"))
    simulator_port = 0
    if not settings.routing_file:
        # The dev table with spillover; the simulator's address goes in the file, so its port is
        # chosen here.
        simulator_port = free_port()
        routing = home / "routing.json"
        routing.write_text(json.dumps(dev_table(f"http://127.0.0.1:{simulator_port}", spillover=SPILLOVER)))
        settings = settings.with_overrides(routing_file=str(routing))
    print(f"starting broker, simulator, API and worker (logs in {home / 'logs'}) ...", flush=True)
    with Stack(settings, home, api_port=0, simulator_port=simulator_port) as stack:
        print(f"api={stack.api_url} broker={stack.bootstrap} simulator={stack.simulator_url}", flush=True)
        print(f"make a video:   {stack.api_url}/", flush=True)
        print(f"the dashboard:  {stack.api_url}/dashboard  (its 'Fire a spike' button works here: dev mode)",
              flush=True)
        routes = ("; sora-2 is retired and falls back to kling; kling-2.1 and sora-2 jobs that would wait "
                  "over 10 s there spill to wan-2.6 when it has room") if simulator_port else ""
        print(f"firing {jobs} jobs at {rate:.0f}/s (models {', '.join(MODELS)}{routes})")
        try:
            summary = asyncio.run(run_spike(stack, jobs, rate, deadline))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping", flush=True)
            return 130
    print_summary(summary)
    lost = summary["accepted"] - summary["completed"] - summary["failed"]
    return 0 if lost == 0 and not summary["errors"] else 1
