"""The job WebSocket's guards on the real broker: which origins may open it, a peer that stops
answering pings is dropped, an idle socket is closed, and a subscribed one is not. Timeouts are
configured short and every test waits on the close itself (with a deadline), never on a sleep."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from floodgate.api.server import ApiServer
from floodgate.ids import job_token, new_job_id
from floodgate.settings import Settings
from tests.integration.api_helpers import DEV_SIMULATOR, running_api

pytestmark = pytest.mark.kafka

DEADLINE = 15.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def ws_url(api: ApiServer) -> str:
    return api.url.replace("http://", "ws://") + "/v1/stream"


async def test_only_allowed_origins_may_open_the_stream(settings_for: Callable[..., Settings],
                                                        http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, ws_allowed_origins="https://app.example, http://localhost:3000")
    async with running_api(settings, roles={"read"}) as api:
        for origin in (None, "https://app.example", "HTTPS://APP.EXAMPLE:443", "http://localhost:3000", api.url):
            headers = {} if origin is None else {"Origin": origin}
            async with http.ws_connect(ws_url(api), headers=headers) as ws:
                assert not ws.closed, origin
        for origin in ("https://evil.example", "http://localhost:3001", "https://app.example.evil", "null"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url(api), headers={"Origin": origin})
            assert refused.value.status == 403, origin
        # The refusal is a problem document, like every other error of the API.
        async with http.get(ws_url(api).replace("ws://", "http://"),
                            headers={"Origin": "https://evil.example", "Connection": "Upgrade", "Upgrade": "websocket",
                                     "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
                            ) as resp:
            assert resp.status == 403 and resp.headers["Content-Type"] == "application/problem+json"
            assert (await resp.json())["type"] == "urn:floodgate:problem:forbidden-origin"


async def test_a_websocket_version_other_than_13_is_refused_with_426_naming_13(
        settings_for: Callable[..., Settings], http: aiohttp.ClientSession) -> None:
    """RFC 6455 §4.4: the drafts' versions 7 and 8, which aiohttp would accept, and anything else are
    refused before the upgrade, with the version the stream speaks; 13 is upgraded."""
    handshake = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with running_api(settings_for(simulator_url=DEV_SIMULATOR), roles={"read"}) as api:
        plain = ws_url(api).replace("ws://", "http://")
        for version in ("8", "7", "14", "13, 8"):
            async with http.get(plain, headers={**handshake, "Sec-WebSocket-Version": version}) as resp:
                assert resp.status == 426, version
                assert resp.headers["Sec-WebSocket-Version"] == "13"
                assert resp.headers["Content-Type"] == "application/problem+json"
                body = await resp.json()
                assert body["errors"] == [{"field": "Sec-WebSocket-Version", "message": "must be 13"}]
        async with http.get(plain, headers={**handshake, "Sec-WebSocket-Version": "13"}) as resp:
            assert resp.status == 101


async def test_by_default_only_the_apis_own_origin_may(settings_for: Callable[..., Settings],
                                                        http: aiohttp.ClientSession) -> None:
    async with running_api(settings_for(simulator_url=DEV_SIMULATOR), roles={"read"}) as api:
        async with http.ws_connect(ws_url(api), headers={"Origin": api.url}) as ws:
            assert not ws.closed
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(api), headers={"Origin": "https://app.example"})
        assert refused.value.status == 403


async def test_a_peer_that_stops_answering_pings_is_dropped(settings_for: Callable[..., Settings],
                                                             http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, ws_ping_interval=0.3, ws_idle_timeout=60.0)
    async with running_api(settings, roles={"read"}) as api:
        job_id = new_job_id()
        token = job_token(settings.secret.reveal().encode(), job_id)
        # autoping off: this client reads the server's pings but never answers them (a dead peer).
        ws = await http.ws_connect(ws_url(api), autoping=False, params={"job_id": job_id, "token": token})
        kinds = []
        started = time.monotonic()
        while True:
            msg = await asyncio.wait_for(ws.receive(), DEADLINE)
            kinds.append(msg.type)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        await ws.close()
    assert aiohttp.WSMsgType.PING in kinds, kinds
    # One interval to the ping, half of one for the pong: dropped then, despite its subscription.
    assert 0.3 <= time.monotonic() - started < DEADLINE


async def test_an_idle_socket_is_closed_and_a_subscribed_one_is_not(settings_for: Callable[..., Settings],
                                                                     http: aiohttp.ClientSession) -> None:
    settings = settings_for(simulator_url=DEV_SIMULATOR, ws_ping_interval=0.2, ws_idle_timeout=0.8)
    async with running_api(settings, roles={"read"}) as api:
        job_id = new_job_id()
        token = job_token(settings.secret.reveal().encode(), job_id)
        opened = time.monotonic()
        idle = await http.ws_connect(ws_url(api))
        busy = await http.ws_connect(ws_url(api), autoping=False)
        await busy.send_json({"type": "subscribe", "job_id": job_id, "token": token})
        # The subscribed socket answers pings by hand and counts them: they are the clock (one
        # per ping interval), so "it outlived three idle timeouts" needs no sleep.
        enough = asyncio.Event()
        pings = 0

        async def answer_pings() -> aiohttp.WSMessage:
            nonlocal pings
            while True:
                msg = await busy.receive()
                if msg.type is aiohttp.WSMsgType.PING:
                    pings += 1
                    await busy.pong(msg.data)
                    if pings * 0.2 >= 3 * 0.8:
                        enough.set()
                elif msg.type is not aiohttp.WSMsgType.TEXT:
                    return msg

        async def until_closed() -> aiohttp.WSMessage:
            while True:
                msg = await idle.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return msg

        answering = asyncio.create_task(answer_pings())
        closing = await asyncio.wait_for(until_closed(), DEADLINE)
        idle_for = time.monotonic() - opened
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.OK
        assert closing.extra == "idle" and idle_for >= 0.8
        await asyncio.wait_for(enough.wait(), DEADLINE)
        assert not answering.done() and not busy.closed
        assert time.monotonic() - opened >= 3 * 0.8
        answering.cancel()
        await busy.close()
        await idle.close()
