"""A tiny webhook receiver for tests and demos: records every delivery, answers a chosen status.

It does not verify anything itself; callers verify with the connector (``verify_webhook``),
which is the code path the pipeline uses.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from floodgate.procs import bind_socket


@dataclass(frozen=True)
class Delivery:
    headers: CIMultiDictProxy[str]  # case-insensitive, as a real server sees them
    body: bytes
    received_at: float
    callback: str = ""  # the path after the receiver's own (a per-job callback path), without "/"


Responder = Callable[[Delivery, int], int]  # (delivery, how many came before it) -> HTTP status


class WebhookReceiver:
    def __init__(self, respond: Responder | None = None) -> None:
        self.url = ""
        self.deliveries: list[Delivery] = []
        self._respond = respond
        self._changed = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        delivery = Delivery(CIMultiDictProxy(CIMultiDict(request.headers)), await request.read(), time.time(),
                            request.match_info.get("callback", ""))
        status = self._respond(delivery, len(self.deliveries)) if self._respond else 200
        async with self._changed:
            self.deliveries.append(delivery)
            self._changed.notify_all()
        return web.Response(status=status)

    async def wait_for(self, predicate: Callable[[list[Delivery]], bool], timeout: float = 5.0) -> list[Delivery]:
        """Wait until ``predicate(deliveries)`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.deliveries))
        return list(self.deliveries)

    async def wait_count(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        return await self.wait_for(lambda seen: len(seen) >= count, timeout)


@contextlib.asynccontextmanager
async def run_receiver(
    respond: Responder | None = None, *, host: str = "127.0.0.1", port: int = 0, path: str = "/hooks"
) -> AsyncIterator[WebhookReceiver]:
    """Serve a ``WebhookReceiver`` at ``receiver.url`` (POST ``path``) until the block exits."""
    receiver = WebhookReceiver(respond)
    app = web.Application()
    app.router.add_post(path, receiver.handle)
    app.router.add_post(path.rstrip("/") + "/{callback:.+}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    sock = bind_socket(host, port)
    serving = False
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        serving = True
        receiver.url = f"http://{host}:{sock.getsockname()[1]}{path}"
        yield receiver
    finally:
        if not serving:
            sock.close()
        await runner.cleanup()
