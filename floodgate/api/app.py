"""``build_app``: the aiohttp application for some set of roles, with its dependencies passed in.

Every error leaves as ``application/problem+json``: routing misses (404; 405, whose ``detail``
names the method and the ones served, as its ``Allow`` does), aiohttp's own size limit (413)
and unexpected exceptions (500, logged here, never described to the client).
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from connectors.storage import VideoStore
from floodgate.api import bridge, cancel, dashboard, ingress, openapi, pages, read, uploads, videos
from floodgate.api.backlog import BacklogMonitor
from floodgate.api.common import ROLES, Deps, base_url, body_too_large, json_response
from floodgate.api.idempotency import IdempotencyCache
from floodgate.api.kafka_io import Sender
from floodgate.api.view import JobView
from floodgate.errors import ConfigError
from floodgate.instances import Roster
from floodgate.looplag import LoopWatch
from floodgate.metrics import render
from floodgate.problems import problem_response
from floodgate.provider_config import ProviderSetup
from floodgate.quotas import JobsByTenant
from floodgate.routing import known_models
from floodgate.settings import Settings
from floodgate.videolinks import VideoLinks

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are not errors
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "WWW-Authenticate")}
        # aiohttp's own size limit (a handler that reads with request.read()) names the body as
        # our too_large does.
        errors = [body_too_large(request.client_max_size)] if exc.status == 413 else []
        detail = None
        if isinstance(exc, web.HTTPMethodNotAllowed):
            # The router's answer, before any handler: say in the body what Allow says, for a
            # client that shows the problem and not the headers.
            detail = (f"{exc.method} is not served on this path, which serves "
                      f"{', '.join(sorted(exc.allowed_methods))}")
        return problem_response(exc.status, exc.reason, detail=detail, headers=headers, errors=errors)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "Internal Server Error", detail="an unexpected error occurred")


def parse_roles(roles: Iterable[str] | str | None) -> frozenset[str]:
    """``"ingress,read"`` or an iterable → a checked role set; None or empty means all roles."""
    if roles is None:
        return ROLES
    items = roles.split(",") if isinstance(roles, str) else list(roles)
    chosen = frozenset(r.strip() for r in items if r.strip())
    unknown = chosen - ROLES
    if unknown:
        raise ConfigError(f"unknown API role(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(ROLES))}")
    return chosen or ROLES


def build_app(
    settings: Settings,
    setup: ProviderSetup,
    *,
    roles: Iterable[str] | None = None,
    producer: Sender | None,
    view: JobView | None,
    connectors: Mapping[str, Any] | None = None,
    keepalive: float = 15.0,
    wait_for_job: float = 2.0,
    clock: Callable[[], float] = time.time,
    video_store: VideoStore | None = None,
    video_copier: videos.CopiesAgain | None = None,
    backlog: BacklogMonitor | None = None,
    intake: Sender | None = None,
    roster: Roster | None = None,
    own_jobs: JobsByTenant | None = None,
    idempotency: IdempotencyCache | None = None,
) -> web.Application:
    """The API for ``roles`` (default: all). Raises ``ConfigError`` if a role lacks what it needs
    (ingress: producer; read: view and producer, for cancels; bridge: producer). The ingress uses
    the view when it has one (read-your-writes, Idempotency-Key checks across instances) and
    works without. ``connectors`` defaults to ``setup.build_connectors()``. ``video_store``: where
    completed jobs' videos are kept; the read role then links to them (signed, expiring) and
    serves them; ``video_copier``, the copier filling it in this process, which the video route
    asks to copy again a video it gave up on. ``backlog``: the backlog guard's monitor, when the
    ingress sheds past a bound.
    ``intake``: the producer the ingress writes ``requests`` with, when not ``producer``.
    ``roster``: the API processes taking requests, which share each tenant's rate quota.
    ``own_jobs``: without a view, the jobs this process accepted that have not ended (read from
    ``results`` by the caller), for the queued-jobs quota. ``idempotency``: the ingress's
    Idempotency-Key cache, when the caller also fills it (without a view, from ``requests``).
    Starts nothing: Kafka clients' lifecycles belong to the caller.
    """
    chosen = parse_roles(roles)
    if producer is None:
        raise ConfigError("every role needs a producer (ingress: requests, read: cancels, bridge: webhooks)")
    if "read" in chosen and view is None:
        raise ConfigError("the read role needs a job view")
    links = VideoLinks(settings.video_link_key, settings.video_link_ttl) if video_store is not None else None
    deps = Deps(settings, setup, producer, view, keepalive=keepalive, wait_for_job=wait_for_job, clock=clock,
                video_links=links, intake=intake,
                idempotency=idempotency if idempotency is not None else IdempotencyCache())
    # The bridge takes 1 MiB bodies, the ingress max_body_bytes; both also check for themselves.
    limit = max(settings.max_body_bytes, bridge.MAX_WEBHOOK_BYTES)
    app = web.Application(middlewares=[problem_middleware], client_max_size=limit)
    if "ingress" in chosen:
        ingress.add_routes(app, deps, backlog, roster, own_jobs)
        uploads.add_routes(app, deps)  # the selfie a job's image_url then points at
    if "read" in chosen:
        # A cancel's answer depends on the job's state (409 once finished), which only the view knows.
        cancel.add_routes(app, deps)
        reader = read.add_routes(app, deps)
        if video_store is not None and links is not None:
            videos.add_routes(app, deps, links, video_store, video_copier)

        async def close_streams(_: web.Application) -> None:
            await reader.shutdown()

        app.on_shutdown.append(close_streams)
    if "bridge" in chosen:
        bridge.add_routes(app, deps, setup.build_connectors() if connectors is None else connectors)
    # The pages and the dashboard wherever people's routes are (a page tells when the routes it
    # needs are elsewhere); an instance that only takes provider webhooks (the bridge alone,
    # reachable by providers) serves neither.
    if {"ingress", "read"} & chosen:
        pages.add_routes(app, deps)
        dashboard.add_routes(app, deps)

    add_service_routes(app, deps, chosen, links)
    return app


def add_service_routes(app: web.Application, deps: Deps, roles: frozenset[str], links: VideoLinks | None) -> None:
    """What every API process serves whatever its roles: ``/healthz`` (503 until the job view, if
    any, has caught up), ``/openapi.json`` for its roles, ``/metrics``, and the loop-lag probe."""
    settings, view = deps.settings, deps.view

    async def healthz(_: web.Request) -> web.Response:
        ready = view is None or view.ready.is_set()
        body = {"status": "ok" if ready else "starting", "roles": sorted(roles)}
        return json_response(body, status=200 if ready else 503)

    async def openapi_json(request: web.Request) -> web.Response:
        models = known_models(deps.setup.routing, datetime.now(UTC))
        return json_response(openapi.document(roles, base_url(request, settings), models=models,
                                              push_platforms=settings.push_platforms, videos=links is not None,
                                              high_granted=bool(settings.priority_grant_set)))

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render(deps.metrics.registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def probe_the_loop(_: web.Application) -> AsyncIterator[None]:
        # While the app serves: how long its requests wait on the loop (floodgate/looplag.py).
        watch = LoopWatch(deps.metrics.loop_lag, deps.metrics.gc_pause)
        watch.start()
        yield
        await watch.stop()

    app.cleanup_ctx.append(probe_the_loop)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/openapi.json", openapi_json, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)


__all__ = ["add_service_routes", "build_app", "parse_roles", "problem_middleware"]
