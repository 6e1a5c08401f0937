"""HTTP load: open loop (requests leave on schedule whether or not earlier ones were answered,
as users arrive) and closed loop (a fixed number of requests outstanding, for bursts).

Latency is measured from the *scheduled* send time, so a load generator that falls behind
cannot hide server slowness (no coordinated omission); ``service_ms`` (from the actual send) is
kept as well, to tell the two apart.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from floodgate.bench.http import Client, HttpError, build_request
from floodgate.demo import MODELS

# (HTTP status, job id, job token)
Answer = tuple[int, str | None, str | None]
RequestFn = Callable[[Client, int, float], Awaitable[Answer]]


@dataclass(slots=True)
class Sample:
    index: int
    due: float  # scheduled send, seconds since the run's start
    sent: float  # actual send
    done: float  # answer received
    done_wall: float  # the same moment on the wall clock (time.time), for cross-process comparison
    status: int
    error: str | None = None
    job_id: str | None = None
    token: str | None = None

    @property
    def latency_ms(self) -> float:
        return (self.done - self.due) * 1000.0

    @property
    def service_ms(self) -> float:
        return (self.done - self.sent) * 1000.0


@dataclass
class Progress:
    """Live counts a progress line can read while the load runs."""

    sent: int = 0
    answered: int = 0
    errors: int = 0


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    started_wall: float = 0.0
    elapsed: float = 0.0

    def ok(self, status: int = 202) -> list[Sample]:
        return [s for s in self.samples if s.status == status]


def job_body(i: int, model: str | None = None, **extra: object) -> bytes:
    """The demo's job request, numbered ``i``: models in rotation, 97 users."""
    body = {"model": model or MODELS[i % len(MODELS)], "user_id": f"user-{i % 97}",
            "input": {"prompt": f"a lighthouse in a storm, take {i}"}, **extra}
    return orjson.dumps(body)


def post_jobs(base_url: str, path: str = "/v1/jobs", body: Callable[[int], bytes] = job_body,
              headers: Callable[[int], Mapping[str, str]] | None = None) -> RequestFn:
    """POST job ``i`` to ``base_url + path`` (with ``headers(i)``, e.g. its tenant's API key); a
    202's job id and token are kept."""
    host = urlsplit(base_url).netloc

    async def request(client: Client, i: int, timeout: float) -> Answer:
        extra = headers(i) if headers is not None else None
        response = await client.request(build_request("POST", host, path, body(i), headers=extra), timeout)
        if response.status == 202:
            data = orjson.loads(response.body)
            return 202, data.get("job_id"), data.get("token")
        return response.status, None, None

    return request


def client_for(base_url: str, connections: int) -> Client:
    parts = urlsplit(base_url)
    return Client(parts.hostname or "127.0.0.1", parts.port or 80, connections)


class _Clock:
    def __init__(self) -> None:
        self.perf0 = time.perf_counter()
        self.wall0 = time.time()

    def now(self) -> float:
        return time.perf_counter() - self.perf0

    def wall(self, t: float) -> float:
        return self.wall0 + t


async def _one(client: Client, request: RequestFn, i: int, due: float, clock: _Clock, progress: Progress,
               timeout: float) -> Sample:
    sent = clock.now()
    progress.sent += 1
    status, job_id, token, error = 0, None, None, None
    try:
        status, job_id, token = await request(client, i, timeout)
    except TimeoutError:
        error = "timeout"
    except HttpError:
        error = "closed"  # the server closed the connection before answering
    except OSError as exc:
        error = type(exc).__name__
    done = clock.now()
    progress.answered += 1
    if error is not None or status >= 400:
        progress.errors += 1
    return Sample(i, due, sent, done, clock.wall(done), status, error, job_id, token)


async def open_loop(base_url: str, schedule: Sequence[float], request: RequestFn, *, connections: int = 1024,
                    timeout: float = 60.0, progress: Progress | None = None) -> Run:
    """Send request ``i`` at ``schedule[i]`` seconds after the start, never waiting for answers
    (beyond ``connections`` outstanding, requests wait for a connection, and that wait counts)."""
    progress = progress or Progress()
    client = client_for(base_url, connections)
    clock = _Clock()
    tasks: list[asyncio.Task[Sample]] = []
    try:
        for i, offset in enumerate(schedule):
            delay = offset - clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, request, i, offset, clock, progress, timeout)))
        samples = list(await asyncio.gather(*tasks))
    finally:
        await client.close()
    return Run(samples, clock.wall0, clock.now())


async def closed_loop(base_url: str, n: int, request: RequestFn, *, concurrency: int = 256, timeout: float = 60.0,
                      progress: Progress | None = None) -> Run:
    """Send ``n`` requests keeping ``concurrency`` outstanding: the fastest the server takes them."""
    progress = progress or Progress()
    client = client_for(base_url, concurrency)
    clock = _Clock()
    samples: list[Sample] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            samples.append(await _one(client, request, i, clock.now(), clock, progress, timeout))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return Run(sorted(samples, key=lambda s: s.index), clock.wall0, clock.now())


def on_accept(request: RequestFn, callback: Callable[[int, str, str], None]) -> RequestFn:
    """``request``, telling ``callback(i, job_id, token)`` of each 202 the moment it arrives (an
    open loop hands its samples back only at the end). ``callback`` must not block: it runs on
    the load's own path."""

    async def wrapped(client: Client, i: int, timeout: float) -> Answer:
        answer = await request(client, i, timeout)
        status, job_id, token = answer
        if status == 202 and job_id and token:
            callback(i, job_id, token)
        return answer

    return wrapped
