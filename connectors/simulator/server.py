"""The simulator's HTTP server: routes, job lifecycle timers and ``run_simulator``.

Routes (per simulated provider ``{p}``)::

    POST /{p}/v1/videos                  create (Bearer key, optional Idempotency-Key)
    GET  /{p}/v1/videos/{id}             read (owning key only)
    POST /{p}/v1/videos/{id}/cancel      cancel if not terminal
    GET  /{p}/files/{id}.mp4             the video of a completed job (one real sample MP4 for all)
    GET  /stats                          counters per provider and per key
    GET  /metrics                        the same per-provider counters for Prometheus
    POST /_admin/reset                   forget jobs and counters
    POST /_admin/{p}/outage              {"seconds": n} start an outage now; 0 ends it
    GET  /_admin/{p}/jobs                every job's id, status, wall-clock created_at / started_at
                                         (its render) / completed_at,
                                         Idempotency-Key, the client's metadata.job_id and
                                         the webhook event ids answered 2xx and the
                                         types of the events dropped on purpose (drop_rate)

A provider whose ``dialect`` is not ``openai`` is served instead under ``/{p}/...`` in its real
provider's shapes (``connectors/simulator/dialects``), by ``dialect_request``.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from floodgate.metrics import SimulatorCollector, render
from floodgate.procs import bind_socket

from . import dialects
from .config import SimulatorConfig, config_from_dict, dev_config
from .dialects.base import CANCEL, CREATE, GET, RESULT, Dialect, Reply, View
from .jobs import SAMPLE_VIDEO, BadRequest, Job, job_view, parse_create
from .state import Created, ProviderState, retry_after_header
from .webhooks import SENDERS, WebhookDispatcher

log = logging.getLogger(__name__)


class Simulator:
    """Every simulated provider plus the background tasks that move jobs along."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.url = ""
        self._wall = wall
        self.wall = wall
        self.states = {
            name: ProviderState(name, provider, config, monotonic=monotonic, wall=wall)
            for name, provider in config.providers.items()
        }
        self.dialects: dict[str, Dialect | None] = {name: dialects.make(p) for name, p in config.providers.items()}
        self.dispatchers: dict[str, WebhookDispatcher] = {}
        # Queued jobs waiting for a render slot (providers that queue past their limit) wait here.
        self.freed: dict[str, asyncio.Condition] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle of the simulator itself ---------------------------------------------
    async def start(self, url: str) -> None:
        self.url = url
        # No pool limit: the dispatchers' shared senders bound the deliveries made at once (and so
        # the connections), and a delivery's timeout starts once a sender has it.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        senders = asyncio.Semaphore(SENDERS)
        self.dispatchers = {
            name: WebhookDispatcher(state, f"{url}/{name}/files", self._session, self.spawn, self._wall,
                                    dialect=self.dialects[name], view=self.view_factory(name), senders=senders)
            for name, state in self.states.items()
        }
        self.freed = {name: asyncio.Condition() for name in self.states}

    def view(self, name: str, job: Job) -> View:
        state = self.states[name]
        return View(root=f"{self.url}/{name}", files=f"{self.url}/{name}/files", now=state.now(),
                    queue_position=state.queue_position(job),
                    waiting=job.status == "queued" and not state.may_render(job))

    def view_factory(self, name: str) -> Callable[[Job], View]:
        return lambda job: self.view(name, job)

    async def close(self) -> None:
        await self._cancel_tasks()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed", exc_info=task.exception())

    # -- operations used by tests, demos and the admin routes ---------------------------
    async def reset(self) -> None:
        await self._cancel_tasks()
        for state in self.states.values():
            state.reset()

    def start_outage(self, provider: str, seconds: float) -> None:
        self.states[provider].start_outage(seconds)

    def stats(self) -> dict[str, Any]:
        return {"providers": {name: state.stats() for name, state in self.states.items()}}

    def track(self, name: str, job: Job) -> None:
        job.task = self.spawn(self._run_job(name, job))

    async def _run_job(self, name: str, job: Job) -> None:
        state, dispatcher = self.states[name], self.dispatchers[name]
        if job.will_hang:
            return  # stays queued, silent, holding its slot, until the client cancels it
        await asyncio.sleep(state.queue_delay())
        if not state.may_render(job):
            async with self.freed[name]:
                await self.freed[name].wait_for(lambda: state.may_render(job))
        seconds = state.begin_render(job)
        # A cold model boots before its first frame: the first progress waits for it, as it does
        # at a real provider, so a cold start shows in Floodgate's time to first progress.
        await asyncio.sleep(job.cold_seconds)
        dispatcher.emit(job, "video.in_progress")
        await asyncio.sleep(seconds - job.cold_seconds)
        status = "failed" if job.will_fail else "completed"
        if state.finish(job, status):
            dispatcher.emit(job, f"video.{status}")
            await self._notify_freed(name)

    async def _notify_freed(self, name: str) -> None:
        async with self.freed[name]:
            self.freed[name].notify_all()

    def cancel(self, name: str, job: Job) -> bool:
        """Cancel ``job``; False if it had already ended."""
        if self.states[name].finish(job, "cancelled"):
            if job.task is not None:
                job.task.cancel()
            self.dispatchers[name].release_held(job)
            if name in self.freed:
                self.spawn(self._notify_freed(name))
            return True
        return False


SIMULATOR = web.AppKey("simulator", Simulator)
METRICS = web.AppKey("metrics", CollectorRegistry)


# -- HTTP helpers -----------------------------------------------------------------------
def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def problem(status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None,
            **extra: Any) -> web.Response:
    """An RFC 9457 problem document, the shape our 4xx/5xx bodies take."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/problem+json", headers=headers
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _provider(request: web.Request) -> tuple[Simulator, str, ProviderState]:
    sim = request.app[SIMULATOR]
    name = request.match_info["provider"]
    state = sim.states.get(name)
    if state is None:
        raise _Refused(problem(404, "Not Found", f"unknown provider {name!r}"))
    return sim, name, state


def _gate(request: web.Request) -> tuple[Simulator, str, ProviderState, str]:
    """Provider, auth and outage checks shared by every API route."""
    sim, name, state = _provider(request)
    key = _bearer(request)
    if key is None or not state.authorized(key):
        raise _Refused(problem(401, "Unauthorized", "missing or invalid API key",
                               headers={"WWW-Authenticate": "Bearer"}))
    remaining = state.outage_remaining()
    if remaining is not None:
        state.count(key, "outage_rejections")
        seconds = retry_after_header(remaining)
        raise _Refused(problem(503, "Service Unavailable", f"{name} is having an outage",
                               headers={"Retry-After": str(seconds)}, retry_after=seconds))
    return sim, name, state, key


def _owned_job(request: web.Request, state: ProviderState, key: str) -> Job:
    job = state.jobs.get(request.match_info["video_id"])
    # Someone else's job answers exactly like a missing one, so ids cannot be probed.
    if job is None or job.api_key != key:
        raise _Refused(problem(404, "Not Found", "no such video"))
    return job


Handler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse]]


def _refusable(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as refused:
            return refused.response

    return wrapped


# -- routes ---------------------------------------------------------------------------
@_refusable
async def create_video(request: web.Request) -> web.Response:
    sim, name, state, key = _gate(request)
    try:
        create = parse_create(await request.read())
    except BadRequest as exc:
        return problem(400, "Bad Request", str(exc), field=exc.field,
                       errors=[{"field": exc.field, "message": exc.message}])
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        return problem(400, "Bad Request", "Idempotency-Key must be 1-255 characters", field="Idempotency-Key")
    # No await from here to the response: check-and-create is atomic on the event loop.
    outcome = state.submit(key, create, idempotency_key)
    if not isinstance(outcome, Created):
        detail = f"concurrency limit of {state.config.concurrency_limit} running jobs reached for this API key"
        return problem(429, "Too Many Requests", detail,
                       headers={"Retry-After": str(outcome.retry_after)}, retry_after=outcome.retry_after)
    if not outcome.replayed:
        sim.track(name, outcome.job)
    return _json(job_view(outcome.job, f"{sim.url}/{name}/files", state.now()))


@_refusable
async def get_video(request: web.Request) -> web.Response:
    sim, name, state, key = _gate(request)
    if (limited := state.read(key)) is not None:
        return problem(429, "Too Many Requests", "status call rate limit reached for this API key",
                       headers={"Retry-After": str(limited.retry_after)}, retry_after=limited.retry_after)
    job = _owned_job(request, state, key)
    return _json(job_view(job, f"{sim.url}/{name}/files", state.now()))


@_refusable
async def cancel_video(request: web.Request) -> web.Response:
    sim, name, state, key = _gate(request)
    job = _owned_job(request, state, key)
    sim.cancel(name, job)
    return _json(job_view(job, f"{sim.url}/{name}/files", state.now()))


@_refusable
async def get_file(request: web.Request) -> web.StreamResponse:
    _, _, state = _provider(request)
    filename = request.match_info["filename"]
    job = state.jobs.get(filename.removesuffix(".mp4")) if filename.endswith(".mp4") else None
    if job is None or job.status != "completed":
        return problem(404, "Not Found", "no such file")
    headers = {"Content-Type": "video/mp4", "Cache-Control": "max-age=3600", "Accept-Ranges": "bytes"}
    if "Range" in request.headers:  # browsers ask for video in ranges: a file response answers them
        return web.FileResponse(SAMPLE_VIDEO, headers=headers)
    # A whole-file GET (Floodgate's copier, once per job) is answered from memory: a file response
    # reads the file in a thread on uvloop, which cost the bench's simulator more CPU per job than
    # the rest of a job's calls together, CPU the bench's one machine takes from Floodgate.
    return web.Response(body=_sample_video(), headers=headers)


@functools.cache
def _sample_video() -> bytes:
    return SAMPLE_VIDEO.read_bytes()  # 18 KB, read once


async def get_stats(request: web.Request) -> web.Response:
    return _json(request.app[SIMULATOR].stats())


async def get_metrics(request: web.Request) -> web.Response:
    body, content_type = render(request.app[METRICS], request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def admin_reset(request: web.Request) -> web.Response:
    await request.app[SIMULATOR].reset()
    return _json({"reset": True})


@_refusable
async def admin_outage(request: web.Request) -> web.Response:
    sim, name, state = _provider(request)
    try:
        seconds = orjson.loads(await request.read()).get("seconds")
    except (orjson.JSONDecodeError, AttributeError):
        seconds = None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e9:
        return problem(400, "Bad Request", "body must be {\"seconds\": <non-negative number>}", field="seconds")
    sim.start_outage(name, float(seconds))
    return _json({"provider": name, "outage_remaining": state.outage_remaining() or 0})


@_refusable
async def admin_jobs(request: web.Request) -> web.Response:
    """Read-only: when each job was created, started rendering and finished (``time.time()``
    seconds), oldest first — what the bench pairs with the bridge's webhook stamps to time a
    slot's handover, and the tests with the ETAs they were told — and which client job and
    attempt it was for (its Idempotency-Key, ``metadata.job_id``), what the chaos checker counts
    duplicates by."""
    _, name, state = _provider(request)
    jobs = sorted(state.jobs.values(), key=lambda job: job.created_at)
    return _json({"provider": name, "jobs": [
        {"id": job.id, "status": job.status, "created_at": job.created_at, "started_at": job.started_at,
         "completed_at": job.completed_at,
         "model": job.request.model, "prompt": job.request.prompt, "params": dict(job.request.params),
         "idempotency_key": job.idempotency_key, "job_id": job.request.metadata.get("job_id"),
         "webhooks_delivered": job.delivered, "webhooks_dropped": job.dropped} for job in jobs]})


def _reply(reply: Reply) -> web.Response:
    body = b"" if reply.body is None else orjson.dumps(reply.body)
    content_type = None if reply.body is None else "application/json"
    return web.Response(status=reply.status, body=body, content_type=content_type, headers=dict(reply.headers))


async def dialect_request(request: web.Request) -> web.Response:
    """Every route of a provider played in a real provider's dialect."""
    sim = request.app[SIMULATOR]
    name = request.match_info["provider"]
    state, dialect = sim.states.get(name), sim.dialects.get(name)
    if state is None or dialect is None:
        return problem(404, "Not Found", f"no route {request.method} {request.path}")
    route = dialect.match(request.method, "/" + request.match_info["tail"])
    if route is None:
        return _reply(dialect.error(404, f"no route {request.method} {request.path}"))
    public = dialect.public(route)
    if public is not None:
        return _reply(public)
    key = dialect.api_key(request.headers, sim.wall())
    if key is None or not state.authorized(key):
        return _reply(dialect.error(401, "missing or invalid credentials"))
    remaining = state.outage_remaining()
    if remaining is not None:
        state.count(key, "outage_rejections")
        return _reply(dialect.error(503, f"{name} is having an outage", retry_after=retry_after_header(remaining)))
    if route.action == CREATE:
        try:
            submission = dialect.parse_create(route, request.query, request.headers, await request.read())
        except BadRequest as exc:
            return _reply(dialect.error(400 if exc.field == "body" else 422, str(exc), field=exc.field))
        # No await from here to the response: check-and-create is atomic on the event loop.
        outcome = state.submit(key, submission.request, submission.idempotency_key)
        if not isinstance(outcome, Created):
            return _reply(dialect.error(429, f"concurrency limit of {state.config.concurrency_limit} reached",
                                        retry_after=outcome.retry_after))
        if not outcome.replayed:
            sim.track(name, outcome.job)
        return _reply(dialect.created(outcome.job, sim.view(name, outcome.job)))
    if route.action in (GET, RESULT) and (limited := state.read(key)) is not None:
        return _reply(dialect.error(429, "status call rate limit reached", retry_after=limited.retry_after))
    job = state.jobs.get(route.job_id or "")
    if job is None or job.api_key != key or not dialect.addressed(route, job):
        return _reply(dialect.error(404, "no such job"))
    if route.action == CANCEL:
        changed = sim.cancel(name, job)
        return _reply(dialect.cancelled(job, sim.view(name, job), changed))
    if route.action == RESULT:
        return _reply(dialect.result(job, sim.view(name, job)))
    assert route.action == GET
    return _reply(dialect.status(job, sim.view(name, job)))


def build_app(sim: Simulator) -> web.Application:
    """The aiohttp application; ``sim.start`` runs on startup and ``sim.close`` on shutdown."""
    app = web.Application()
    app[SIMULATOR] = sim
    app[METRICS] = CollectorRegistry(auto_describe=False)
    app[METRICS].register(SimulatorCollector(sim.stats))

    async def on_shutdown(_: web.Application) -> None:
        await sim.close()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_post("/_admin/reset", admin_reset)
    app.router.add_post("/_admin/{provider}/outage", admin_outage)
    app.router.add_get("/_admin/{provider}/jobs", admin_jobs)
    app.router.add_post("/{provider}/v1/videos", create_video)
    app.router.add_get("/{provider}/v1/videos/{video_id}", get_video)
    app.router.add_post("/{provider}/v1/videos/{video_id}/cancel", cancel_video)
    app.router.add_get("/{provider}/files/{filename}", get_file)
    app.router.add_route("*", "/{provider}/{tail:.*}", dialect_request)
    return app


def coerce_config(config: SimulatorConfig | Mapping[str, Any] | None) -> SimulatorConfig:
    if config is None:
        return dev_config()
    if isinstance(config, SimulatorConfig):
        return config
    return config_from_dict(config)


@contextlib.asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | Mapping[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[Simulator]:
    """Serve the simulator until the block exits; ``port=0`` picks a free port (see ``.url``).

    All job timers and webhook deliveries are cancelled and the server is closed on exit.
    """
    sim = Simulator(coerce_config(config))
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    await sim.start(f"http://{f'[{host}]' if ':' in host else host}:{bound_port}")
    runner = web.AppRunner(build_app(sim), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    serving = False
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        serving = True
        yield sim
    finally:
        # The site owns the socket once it serves; before that it is still ours to close.
        if not serving:
            sock.close()
        await runner.cleanup()
        await sim.close()
