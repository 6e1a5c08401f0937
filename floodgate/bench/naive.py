"""The design Floodgate replaces, for comparison: a synchronous endpoint that submits to the provider and
holds the HTTP request open until the video exists (polling the provider meanwhile).

``python -m floodgate.bench.naive --simulator URL --routing FILE`` serves ``POST /v1/jobs``
(the same body as Floodgate's) and prints ``naive=http://HOST:PORT``. Answers: 200 with the
video URL; the provider's 429 passed through (with its Retry-After); 502 if the render failed.
A request nobody waits for any more keeps its provider slot until the render ends, as it would.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime

import aiohttp
import orjson
from aiohttp import web

from floodgate import provider_config
from floodgate.routing import RoutingTable, chain_for

TERMINAL = {"completed", "failed", "cancelled", "expired"}


def _json(status: int, data: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


class Naive:
    def __init__(self, simulator_url: str, routing: RoutingTable, api_key: str, poll_seconds: float) -> None:
        self.simulator_url = simulator_url.rstrip("/")
        self.routing = routing
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.poll_seconds = poll_seconds
        self.session: aiohttp.ClientSession | None = None

    async def create(self, request: web.Request) -> web.Response:
        assert self.session is not None
        try:
            payload = orjson.loads(await request.read())
            model, prompt = payload["model"], payload["input"]["prompt"]
            target = chain_for(self.routing, model, datetime.now(UTC))[0]
        except Exception as exc:  # any bad input is the client's 400
            return _json(400, {"detail": str(exc)})
        base = f"{self.simulator_url}/{target.provider}/v1/videos"
        body = {"model": target.provider_model, "prompt": prompt}
        async with self.session.post(base, json=body, headers=self.headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status == 429:
                return _json(429, data, {"Retry-After": resp.headers.get("Retry-After", "1")})
            if resp.status >= 300:
                return _json(502, {"detail": f"provider answered {resp.status}"})
        video_id = data["id"]
        while data.get("status") not in TERMINAL:
            await asyncio.sleep(self.poll_seconds)
            async with self.session.get(f"{base}/{video_id}", headers=self.headers) as resp:
                data = await resp.json(content_type=None)
        if data["status"] != "completed":
            return _json(502, {"detail": f"render {data['status']}"})
        return _json(200, {"video_url": data.get("video_url")})


async def serve_app(app: web.Application, host: str, port: int, marker: str) -> None:
    """Serve ``app`` on ``host:port`` (0: a free one), print ``<marker>http://HOST:PORT``, and run
    until SIGINT or SIGTERM."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    print(f"{marker}http://{host}:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve(args: argparse.Namespace) -> None:
    setup = provider_config.load_file(args.routing)
    naive = Naive(args.simulator, setup.routing, args.api_key, args.poll)
    naive.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app = web.Application()
    app.router.add_post("/v1/jobs", naive.create)
    try:
        await serve_app(app, args.host, args.port, "naive=")
    finally:
        await naive.session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m floodgate.bench.naive", description=__doc__)
    parser.add_argument("--simulator", required=True, help="the simulator's base URL")
    parser.add_argument("--routing", required=True, help="routing file (which provider serves a model)")
    parser.add_argument("--api-key", default="floodgate-bench")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between status polls")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
