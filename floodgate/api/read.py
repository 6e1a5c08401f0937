"""Reading jobs: ``GET /v1/jobs/{job_id}``, its Server-Sent Events stream, and the WebSocket
``/v1/stream`` that multiplexes many jobs. All three are served from the ``JobView``.

A job's token is its only credential: a missing token is 401, a wrong one is 404 exactly like an
unknown job, so a token-less caller learns nothing about which ids exist.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from floodgate.api.common import Deps, base_url, json_response
from floodgate.api.heard import Told, final
from floodgate.api.resources import job_resource, presumed_queued
from floodgate.api.view import STANDING, JobView, Snapshot
from floodgate.errors import Problem
from floodgate.ids import check_token
from floodgate.problems import FORBIDDEN_ORIGIN, NOT_FOUND, UNAUTHORIZED, VALIDATION, problem_response
from floodgate.tasks import cancel_and_wait

MAX_SUBSCRIPTIONS = 100
"""Live subscriptions one WebSocket may hold at once. Each costs a pump task and a queue of up to
``SUBSCRIBER_QUEUE`` snapshots, so the cap is what bounds a connection's memory; a subscription
ends by itself at its job's terminal state (or on ``unsubscribe``), which frees its place, so a
client follows any number of jobs over time, at most this many of them unfinished at once."""
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"


def token_of(request: web.Request) -> str | None:
    """The bearer token from ``Authorization`` or, for EventSource clients that cannot set
    headers, the ``token`` query parameter."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def _unauthorized() -> web.Response:
    return problem_response(401, "Unauthorized", type_=UNAUTHORIZED, detail="the job's token is required",
                            headers={"WWW-Authenticate": 'Bearer realm="floodgate"'})


def _not_found() -> web.Response:
    return problem_response(404, "Not Found", type_=NOT_FOUND, detail="no such job")


def authorize(secret: bytes, request: web.Request) -> tuple[str, web.Response | None]:
    """The path's job id, and the refusal to send instead of the job (None: the token is right)."""
    job_id = request.match_info["job_id"]
    token = token_of(request)
    if token is None:
        return job_id, _unauthorized()
    if not check_token(secret, job_id, token):
        return job_id, _not_found()
    return job_id, None


async def current(view: JobView, job_id: str, wait: float) -> Snapshot:
    """The job's snapshot; a token-bearing job not (yet) in this instance's view is queued."""
    return await view.wait_for(job_id, wait) or presumed_queued(job_id)


class Reader:
    def __init__(self, deps: Deps) -> None:
        assert deps.view is not None
        self.deps = deps
        self.view: JobView = deps.view
        self.sockets: set[web.WebSocketResponse] = set()
        self.closing = asyncio.Event()
        self.origins = deps.settings.origin_policy

    def _authorize(self, request: web.Request) -> tuple[str, web.Response | None]:
        return authorize(self.deps.secret, request)

    async def get_job(self, request: web.Request) -> web.Response:
        job_id, refused = self._authorize(request)
        if refused is not None:
            return refused
        snapshot = await current(self.view, job_id, self.deps.wait_for_job)
        return json_response(self.resource(snapshot, base_url(request, self.deps.settings)),
                             headers={"Cache-Control": "no-store"})

    def worth_telling(self, snapshot: Snapshot, told: Told) -> bool:
        """Whether a subscriber should hear of ``snapshot``: news to it (``Told.news``: a newer
        version, or the same version further on), or the same one again with the job's place
        moved (``STANDING``), unless the job has left the line meanwhile (the board saw it start,
        its new snapshot is on its way): told as ``queued`` with no place, the subscriber would
        lose its place for that moment."""
        if told.news(snapshot):
            return True
        board = self.view.board
        return bool(snapshot.get(STANDING)) and board is not None and board.position(snapshot["job_id"]) is not None

    def resource(self, snapshot: Snapshot, base: str) -> dict[str, Any]:
        """The public job, with our signed video link when videos are kept in our store."""
        board = self.view.board
        standing = board.standing(snapshot, self.view.clock()) if board is not None else None
        return job_resource(snapshot, self.deps.video_url(snapshot, base), standing)

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        job_id, refused = self._authorize(request)
        if refused is not None:
            return refused
        queue = self.view.subscribe(job_id)  # before reading the current state: no change slips between
        self.deps.metrics.subscribers.labels("sse").inc()
        try:
            told = Told.resumed(_last_event_id(request))
            first = await current(self.view, job_id, self.deps.wait_for_job)
            if final(first) and not self.worth_telling(first, told):
                # A reconnect after the end was told: nothing will follow. 204 is what stops an
                # EventSource reconnecting (WHATWG HTML, "server-sent events"); a 200 with an
                # empty body has it come back every few seconds for ever.
                return web.Response(status=204, headers={"Cache-Control": "no-store"})
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
            await response.prepare(request)
            base = base_url(request, self.deps.settings)
            snapshot: Snapshot | None = first
            live = False  # the first snapshot is the current state, not a change being pushed
            while not self.closing.is_set():
                if snapshot is not None and self.worth_telling(snapshot, told):
                    await response.write(sse_event(snapshot, self.resource(snapshot, base)))
                    told.sent(snapshot)
                    if live and not snapshot.get(STANDING):
                        self.pushed("sse", snapshot)
                if snapshot is not None and final(snapshot):
                    break
                snapshot, live = await self._next(queue), True
                if snapshot is None and not self.closing.is_set():
                    await response.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the client went away; nothing left to tell it
        finally:
            self.view.unsubscribe(job_id, queue)
            self.deps.metrics.subscribers.labels("sse").dec()
        return response

    def pushed(self, channel: str, snapshot: Snapshot) -> None:
        """Record how long a change took from its ``updated_at`` to a client on ``channel``."""
        delay = self.deps.clock() - snapshot["updated_at"] / 1000
        self.deps.metrics.notification_latency.labels(channel).observe(max(0.0, delay))

    async def _next(self, queue: asyncio.Queue[Snapshot]) -> Snapshot | None:
        """The next snapshot, or None after ``keepalive`` seconds (or at shutdown)."""
        getter = asyncio.ensure_future(queue.get())
        closer = asyncio.ensure_future(self.closing.wait())
        try:
            done, _ = await asyncio.wait({getter, closer}, timeout=self.deps.keepalive,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getter, closer):
                task.cancel()
        return getter.result() if getter in done else None

    async def stream(self, request: web.Request) -> web.StreamResponse:
        settings = self.deps.settings
        if not self.origins.allows(request.headers.get("Origin"), [base_url(request, settings)]):
            return problem_response(403, "Forbidden", type_=FORBIDDEN_ORIGIN,
                                    detail="this origin may not open the job stream")
        version = request.headers.get("Sec-WebSocket-Version")
        if version is not None and version != WS_VERSION:
            return wrong_version(version)
        # Protocol-level pings keep the socket alive through load balancers' idle timeouts, and a
        # peer that stops answering them (half the interval) is dropped.
        ws = web.WebSocketResponse(heartbeat=settings.ws_ping_interval)
        await ws.prepare(request)
        self.sockets.add(ws)
        session = _StreamSession(self, ws, base_url(request, self.deps.settings))
        idle = asyncio.create_task(session.close_when_idle(settings.ws_idle_timeout), name="ws-idle")
        try:
            if "job_id" in request.query:
                await session.subscribe(request.query.get("job_id"), request.query.get("token"))
            async for msg in ws:
                session.activity.set()
                if msg.type != WSMsgType.TEXT:
                    continue
                await session.handle(msg.data)
        finally:
            idle.cancel()
            await session.close()
            self.sockets.discard(ws)
        return ws

    async def shutdown(self) -> None:
        """End every open stream so the server can stop without waiting on idle clients."""
        self.closing.set()
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"server shutting down")


WS_VERSION = "13"
"""The WebSocket protocol version the stream speaks: RFC 6455's. aiohttp would also accept the
drafts' 7 and 8, which the API does not document and no browser has sent since 2012."""


def wrong_version(version: str) -> web.Response:
    """RFC 6455 §4.4: a handshake in a version the server does not speak is refused with 426 and
    the version it does speak, so the client can retry in it."""
    return problem_response(426, "Upgrade Required", type_=VALIDATION,
                            detail=f"WebSocket version {version[:16]!r} is not spoken here; use {WS_VERSION}",
                            errors=[Problem("Sec-WebSocket-Version", f"must be {WS_VERSION}")],
                            headers={"Sec-WebSocket-Version": WS_VERSION})


class _StreamSession:
    """One WebSocket's subscriptions: a pump task per job forwards snapshots to the socket."""

    def __init__(self, reader: Reader, ws: web.WebSocketResponse, base: str) -> None:
        self.reader = reader
        self.ws = ws
        self.base = base
        self.pumps: dict[str, asyncio.Task[None]] = {}
        self.activity = asyncio.Event()
        """Set by every client message and every subscription's end: the idle clock restarts."""

    async def close_when_idle(self, timeout: float) -> None:
        """Close the socket once ``timeout`` seconds pass with no subscription and no message.

        A client that answers pings but subscribes to nothing would otherwise hold a connection
        (and a file descriptor) for ever.
        """
        while not self.ws.closed:
            self.activity.clear()
            try:
                await asyncio.wait_for(self.activity.wait(), timeout)
            except TimeoutError:
                if not self.pumps:
                    await self.ws.close(code=WSCloseCode.OK, message=b"idle")
                    return

    async def send(self, message: dict[str, Any]) -> None:
        # aiohttp writes each frame whole, so pumps of several jobs may send concurrently.
        if not self.ws.closed:
            await self.ws.send_str(orjson.dumps(message).decode())

    async def handle(self, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self.send({"type": "error", "job_id": None, "detail": "messages must be JSON objects"})
            return
        if not isinstance(message, dict):
            await self.send({"type": "error", "job_id": None, "detail": "messages must be JSON objects"})
            return
        kind, job_id = message.get("type"), message.get("job_id")
        if kind == "subscribe":
            await self.subscribe(job_id, message.get("token"))
        elif kind == "unsubscribe":
            await self.unsubscribe(job_id)
        else:
            await self.send({"type": "error", "job_id": job_id if isinstance(job_id, str) else None,
                             "detail": "type must be subscribe or unsubscribe"})

    async def subscribe(self, job_id: Any, token: Any) -> None:
        if not isinstance(job_id, str) or not job_id:
            await self.send({"type": "error", "job_id": None, "detail": "job_id required"})
            return
        if not isinstance(token, str) or not token:
            await self.send({"type": "error", "job_id": job_id, "detail": "token required"})
            return
        if not check_token(self.reader.deps.secret, job_id, token):
            await self.send({"type": "error", "job_id": job_id, "detail": "no such job"})
            return
        if job_id in self.pumps:
            await self.send({"type": "subscribed", "job_id": job_id})
            return
        if len(self.pumps) >= MAX_SUBSCRIPTIONS:
            # Said in a form a client can act on (open another socket, or unsubscribe first):
            # the code and the limit, beside the sentence for people.
            await self.send({"type": "error", "job_id": job_id, "code": TOO_MANY_SUBSCRIPTIONS,
                             "limit": MAX_SUBSCRIPTIONS,
                             "detail": f"at most {MAX_SUBSCRIPTIONS} unfinished jobs per connection: "
                                       "unsubscribe from one or open another connection"})
            return
        await self.send({"type": "subscribed", "job_id": job_id})
        self.pumps[job_id] = asyncio.create_task(self._pump(job_id), name=f"ws-pump:{job_id}")

    async def unsubscribe(self, job_id: Any) -> None:
        await cancel_and_wait(self.pumps.pop(job_id, None) if isinstance(job_id, str) else None)
        await self.send({"type": "unsubscribed", "job_id": job_id if isinstance(job_id, str) else None})

    async def _pump(self, job_id: str) -> None:
        view = self.reader.view
        # Both here, not in subscribe(): a pump cancelled before its first step (an unsubscribe or
        # a close right after the subscribe) runs none of its body, so its finally would never
        # undo them. Before the first await, and before reading the current state, so no change
        # slips between.
        queue = view.subscribe(job_id)
        subscribers = self.reader.deps.metrics.subscribers.labels("websocket")
        subscribers.inc()
        try:
            snapshot = await current(view, job_id, self.reader.deps.wait_for_job)
            told, live = Told(), False
            while True:
                if self.reader.worth_telling(snapshot, told):
                    await self.send({"type": "job", "job": self.reader.resource(snapshot, self.base)})
                    told.sent(snapshot)
                    if live and not snapshot.get(STANDING):
                        self.reader.pushed("websocket", snapshot)
                if final(snapshot):
                    break  # nothing follows a terminal state; the subscription ends by itself
                snapshot, live = await queue.get(), True
        except ConnectionResetError:
            pass
        finally:
            subscribers.dec()
            view.unsubscribe(job_id, queue)
            if self.pumps.get(job_id) is asyncio.current_task():
                del self.pumps[job_id]
            self.activity.set()

    async def close(self) -> None:
        tasks = list(self.pumps.values())
        self.pumps.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse_event(snapshot: Snapshot, resource: dict[str, Any] | None = None) -> bytes:
    """One SSE ``job`` event (``resource``: the job as shown, default ``job_resource(snapshot)``);
    the id is the snapshot version so a reconnect can resume."""
    data = orjson.dumps(resource or job_resource(snapshot))  # compact JSON never contains a newline
    return b"event: job\nid: %d\ndata: %s\n\n" % (snapshot["version"], data)


def _last_event_id(request: web.Request) -> int:
    try:
        return int(request.headers.get("Last-Event-ID", "-1"))
    except ValueError:
        return -1


def add_routes(app: web.Application, deps: Deps) -> Reader:
    reader = Reader(deps)
    app.router.add_get("/v1/jobs/{job_id}", reader.get_job, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}/events", reader.job_events, allow_head=False)
    app.router.add_get("/v1/stream", reader.stream, allow_head=False)
    return reader


__all__ = ["MAX_SUBSCRIPTIONS", "TOO_MANY_SUBSCRIPTIONS", "Reader", "add_routes", "authorize", "current", "sse_event",
           "token_of"]
