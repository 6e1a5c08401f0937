"""The simulator's webhook timeout counts from the moment one of its senders takes a delivery, as
a real provider's does: not the time the delivery waited for a sender.

Counted from the wait (the session's connection pool was the bound), a burst of deliveries queued
behind the pool timed out while the receiver answered each well within the timeout, and their
redeliveries made the burst larger: in the pipeline bench's run with the worker alone on a core,
11,158 deliveries timed out while the bridge answered every one it got within 750 ms. The timeout
still bounds the whole attempt: a receiver that trickles its answer is timed out.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from connectors.simulator.config import Distribution, ProviderConfig, SimulatorConfig
from connectors.simulator.dialects.base import Outgoing
from connectors.simulator.jobs import CreateRequest, Job
from connectors.simulator.state import ProviderState
from connectors.simulator.webhooks import WebhookDispatcher
from floodgate.procs import bind_socket

Handler = Callable[[int], Awaitable[None]]  # (how many requests came before this one) -> when to answer


@contextlib.asynccontextmanager
async def serving(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """``handle`` served on loopback; the URL to post deliveries to."""
    app = web.Application()
    app.router.add_post("/hooks", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    sock = bind_socket("127.0.0.1", 0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hooks"
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[list[float], Callable[[Handler], str]]]:
    """A receiver whose answers wait for ``handler``; the times requests reached it."""
    arrived: list[float] = []
    handlers: list[Handler] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        arrived.append(time.monotonic())
        await handlers[0](len(arrived) - 1)
        return web.Response(status=200)

    async with serving(handle) as url:
        def serve(handler: Handler) -> str:
            handlers.append(handler)
            return url

        yield arrived, serve


def provider(timeout: float) -> ProviderState:
    config = ProviderConfig(render_time=Distribution("fixed", seconds=0.0), webhook_timeout=timeout,
                            webhook_backoff=0.01, webhook_attempts=3)
    return ProviderState("sora", config, SimulatorConfig(providers={"sora": config}, seed=1),
                         monotonic=time.monotonic, wall=time.time)


def job(n: int, url: str) -> Job:
    return Job(id=f"video_{n}", api_key="key-a", created_at=time.time(), will_fail=False,
               request=CreateRequest(model="sora-2", prompt="p", image_url=None, webhook_url=url, metadata={}))


async def deliver(state: ProviderState, session: aiohttp.ClientSession, jobs: list[Job], senders: int = 100) -> None:
    def not_spawned(_: object) -> None:
        raise AssertionError("nothing is spawned here")

    dispatcher = WebhookDispatcher(state, "http://files", session, not_spawned, time.time,
                                   senders=asyncio.Semaphore(senders))
    await asyncio.gather(*(dispatcher._attempts(j, Outgoing(b"{}", f"evt_{j.id}")) for j in jobs))


async def test_a_delivery_that_waited_for_a_sender_is_not_timed_out(receiver) -> None:
    arrived, serve = receiver
    # One sender, ten deliveries at once, each answered 0.3 s after it arrives: the last waits
    # about 2.7 s for the sender, past the 2 s timeout; each is answered within 0.3 s.
    url = serve(lambda _: asyncio.sleep(0.3))
    state = provider(timeout=2.0)
    jobs = [job(n, url) for n in range(10)]
    async with aiohttp.ClientSession() as session:
        await deliver(state, session, jobs, senders=1)
    counts = state.key("key-a").counts
    assert (counts["webhooks_sent"], counts["webhooks_timed_out"], counts["webhooks_retried"]) == (10, 0, 0)
    assert len(arrived) == 10 and arrived[-1] - arrived[0] > 2.0  # the last one did wait past the timeout
    assert all(j.delivered == [f"evt_{j.id}"] for j in jobs)


async def test_a_receiver_slower_than_the_timeout_is_timed_out_and_delivered_again(receiver) -> None:
    arrived, serve = receiver
    never = asyncio.Event()

    async def first_never(n: int) -> None:
        if n == 0:
            await never.wait()  # the first attempt is never answered

    url = serve(first_never)
    state = provider(timeout=0.3)
    async with aiohttp.ClientSession() as session:
        await deliver(state, session, [job(0, url)])
    counts = state.key("key-a").counts
    assert (counts["webhooks_sent"], counts["webhooks_timed_out"], counts["webhooks_retried"]) == (1, 1, 1)
    assert len(arrived) == 2
    never.set()


async def test_a_receiver_that_trickles_its_answer_is_timed_out() -> None:
    """A byte every 0.1 s would keep a read going for ever: the timeout bounds the attempt."""
    stop = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while not stop.is_set():
            await response.write(b" ")
            await asyncio.sleep(0.1)  # the receiver's pace, not a wait for the test
        return response

    state = provider(timeout=0.5)
    try:
        async with serving(trickle) as url, aiohttp.ClientSession() as session, asyncio.timeout(20):
            await deliver(state, session, [job(0, url)])
    finally:
        stop.set()
    counts = state.key("key-a").counts
    assert (counts["webhooks_timed_out"], counts["webhooks_failed"], counts["webhooks_sent"]) == (3, 1, 0)
