"""The operations dashboard's data (``GET /dashboard/data``) and, in dev mode, its spike
(``POST /dashboard/spike``).

The figures are Prometheus's: this API's own registry plus every endpoint of
``FLOODGATE_DASHBOARD_TARGETS`` (URLs, or Prometheus file_sd files re-read when they change),
scraped when a dashboard asks (at most once a second, whoever asks) and summed by
``floodgate.dashboard``. A target that does not answer within a second is named in the answer and
left out of that reading; nothing is counted twice or kept apart from the metrics themselves.

Both routes want ``X-Operator-Key`` when API keys are configured (``FLOODGATE_OPERATOR_KEY``);
the spike also wants ``FLOODGATE_DEV_MODE``. The spike sends its jobs to this API's own
``POST /v1/jobs`` over HTTP, so they take the path (and count in the metrics) of any client's:
at ``FLOODGATE_PUBLIC_URL`` when set, else at the address the dashboard's request arrived on,
never at the request's ``Host``, which the client writes (the spike carries a tenant's API key).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from floodgate.api.common import Deps, json_response
from floodgate.dashboard import History, Sample, read, targets_from_file_sd
from floodgate.errors import Problem
from floodgate.problems import UNAUTHORIZED, VALIDATION, problem_response
from floodgate.routing import known_models
from floodgate.settings import Settings

log = logging.getLogger(__name__)

SCRAPE_EVERY = 0.9
"""Seconds between two readings: a dashboard polls once a second; two dashboards share readings."""
SCRAPE_TIMEOUT = 1.0
MAX_SPIKE_JOBS = 5000
MAX_SPIKE_RATE = 500.0
OPERATOR_CHALLENGE = {"WWW-Authenticate": 'ApiKey realm="floodgate", header="X-Operator-Key"'}
"""RFC 9110 wants a challenge with every 401; an operator key is no registered scheme, so the
challenge names the header that carries it."""


def own_url(request: web.Request, settings: Settings) -> str | None:
    """Where this process reaches its own API: ``public_url`` when configured (the operator's
    word), else the local address of the socket ``request`` arrived on, which is this server's
    own listening address; None when that is not a TCP address. Never ``request.host``: a
    client names any host it likes there."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return None  # a Unix socket, or the connection is gone
    host, port = str(sockname[0]), int(sockname[1])
    return f"{request.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


class Targets:
    """The configured endpoints, with file_sd files re-read when their modification time changes."""

    def __init__(self, spec: str) -> None:
        items = [item.strip() for item in spec.split(",") if item.strip()]
        self.urls = [item for item in items if item.startswith(("http://", "https://"))]
        self.files = [Path(item) for item in items if not item.startswith(("http://", "https://"))]
        self._cache: dict[Path, tuple[float, list[str]]] = {}

    def current(self) -> list[str]:
        urls = list(self.urls)
        for path in self.files:
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue  # not written yet: no targets from it
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    cached = (mtime, targets_from_file_sd(orjson.loads(path.read_bytes())))
                except (OSError, orjson.JSONDecodeError):
                    cached = (mtime, cached[1] if cached else [])  # half-written: keep the last good list
                self._cache[path] = cached
            urls.extend(cached[1])
        return urls


class Spike:
    """One dev-mode spike at a time: ``jobs`` requests at ``rate``/s, open loop, to our own ingress."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self.accepted = 0
        self.jobs = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def state(self) -> dict[str, Any]:
        return {"running": self.running, "jobs": self.jobs, "sent": self.sent, "accepted": self.accepted}

    def start(self, url: str, jobs: int, rate: float, models: tuple[str, ...], api_key: str | None) -> None:
        self.jobs, self.sent, self.accepted = jobs, 0, 0
        self.task = asyncio.create_task(self._run(url, jobs, rate, models, api_key), name="dashboard-spike")

    async def _run(self, url: str, jobs: int, rate: float, models: tuple[str, ...], api_key: str | None) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        rng = random.Random()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), headers=headers) as session:
            async def one(i: int) -> None:
                body = {"model": models[i % len(models)], "user_id": f"spike-{i % 50}",
                        "input": {"prompt": f"a lighthouse in a storm, spike take {i}"}}
                try:
                    async with session.post(f"{url}/v1/jobs", json=body) as resp:
                        if resp.status == 202:
                            self.accepted += 1
                except aiohttp.ClientError as exc:
                    log.info("spike request failed: %s", exc)

            started = time.monotonic()
            tasks = []
            for i in range(jobs):
                delay = started + i / rate + rng.uniform(0, 0.5 / rate) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the arrival schedule of an open-loop spike
                self.sent += 1
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Dashboard:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        settings = deps.settings
        self.operator_key = settings.operator_key.reveal()
        self.keys_required = bool(settings.api_key_map) or bool(self.operator_key)
        self.targets = Targets(settings.dashboard_targets)
        self.history = History()
        self.down: list[str] = []
        self.scraped = 0
        self.spike = Spike()
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def refused(self, request: web.Request) -> web.Response | None:
        """The refusal for a request without the operator key, or None."""
        if not self.keys_required:
            return None
        if not self.operator_key:
            return problem_response(403, "Forbidden", type_=UNAUTHORIZED,
                                    detail="API keys are configured and no operator key is: the dashboard is closed")
        given = request.headers.get("X-Operator-Key", "")
        if not given:
            return problem_response(401, "Unauthorized", type_=UNAUTHORIZED, detail="X-Operator-Key header required",
                                    headers=OPERATOR_CHALLENGE)
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.operator_key.encode("utf-8")):
            return problem_response(403, "Forbidden", type_=UNAUTHORIZED, detail="unknown operator key")
        return None

    async def _scrape(self, url: str, session: aiohttp.ClientSession) -> list[Sample] | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        try:
            return [s for family in text_string_to_metric_families(text) for s in family.samples]
        except ValueError:
            return None

    async def refresh(self) -> None:
        """Take a reading unless one was taken less than ``SCRAPE_EVERY`` seconds ago."""
        async with self._lock:
            now = time.time()
            last = self.history.last_at
            if last is not None and now - last < SCRAPE_EVERY:
                return
            if self._session is None:
                self._session = aiohttp.ClientSession()
            urls = self.targets.current()
            found = await asyncio.gather(*(self._scrape(url, self._session) for url in urls))
            samples: list[Sample] = [s for family in self.deps.metrics.registry.collect() for s in family.samples]
            for batch in found:
                samples.extend(batch or [])
            self.down = [url for url, batch in zip(urls, found, strict=True) if batch is None]
            self.scraped = 1 + len(urls) - len(self.down)
            self.history.add(read(samples, time.time()))

    async def data(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        await self.refresh()
        body = {"now": time.time(), "dev_mode": self.deps.settings.dev_mode,
                "processes": {"scraped": self.scraped, "down": self.down},
                "unavailable": self.unavailable(datetime.now(UTC)),
                "spike": self.spike.state(), **self.history.figures()}
        return json_response(body, headers={"Cache-Control": "no-store"})

    def unavailable(self, now: datetime) -> dict[str, str]:
        """Provider → why it takes no new jobs (``retired <when>``, ``disabled``), from the routing
        this API loaded: a retired provider's breaker is closed and its pace unknown, as an idle
        one's, and the dashboard says which it is."""
        providers = self.deps.setup.routing.providers
        return {name: why for name, spec in providers.items() if (why := spec.why_unavailable(now)) is not None}

    async def fire(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        if not self.deps.settings.dev_mode:
            return problem_response(403, "Forbidden", detail="the spike is a dev-mode tool (FLOODGATE_DEV_MODE)")
        if self.spike.running:
            return problem_response(409, "Conflict", detail="a spike is already running")
        try:
            payload = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return _invalid(Problem("body", "must be a JSON object"))
        jobs, rate = payload.get("jobs", 300), payload.get("rate", 100)
        problems = []
        if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_SPIKE_JOBS:
            problems.append(Problem("jobs", f"must be an integer from 1 to {MAX_SPIKE_JOBS}"))
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= MAX_SPIKE_RATE:
            problems.append(Problem("rate", f"must be a number above 0 and at most {MAX_SPIKE_RATE:g}"))
        if problems:
            return _invalid(*problems)
        models = known_models(self.deps.setup.routing, datetime.now(UTC))
        if not models:
            return problem_response(409, "Conflict", detail="no model can take jobs now")
        target = own_url(request, self.deps.settings)
        if target is None:
            return problem_response(409, "Conflict",
                                    detail="this API's own address is unknown; set FLOODGATE_PUBLIC_URL")
        keys = self.deps.settings.api_key_map
        self.spike.start(target, int(jobs), float(rate), models, next(iter(keys), None))
        return json_response({"jobs": jobs, "rate": rate, "models": list(models)}, status=202)

    async def close(self) -> None:
        await self.spike.stop()
        if self._session is not None:
            await self._session.close()


def _invalid(*problems: Problem) -> web.Response:
    return problem_response(400, "Bad Request", type_=VALIDATION, detail="the spike's parameters are invalid",
                            errors=problems)


def add_routes(app: web.Application, deps: Deps) -> Dashboard:
    dashboard = Dashboard(deps)
    app.router.add_get("/dashboard/data", dashboard.data, allow_head=False)
    app.router.add_post("/dashboard/spike", dashboard.fire)

    async def close(_: web.Application) -> None:
        await dashboard.close()

    app.on_shutdown.append(close)
    return dashboard


__all__ = ["Dashboard", "Spike", "Targets", "add_routes", "own_url"]
