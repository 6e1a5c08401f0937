"""The usual alternative to Floodgate, for comparison: Celery with a Redis broker, built the way a
team would build it first.

* ``python -m floodgate.bench.celerypeer api --redis URL --simulator URL --routing FILE`` serves
  ``POST /v1/jobs`` (Floodgate's body) on aiohttp: it enqueues a Celery task and answers 202 with a
  job id at once. It prints ``celery-api=http://HOST:PORT``.
* ``python -m floodgate.bench.celerypeer worker --redis URL --concurrency N --poll S`` runs a Celery
  worker (threads pool: the task is I/O-bound) and prints ``celery-worker=ready``. Its task submits
  to the provider over HTTP; a 429 is retried per the provider's ``Retry-After``
  (``self.retry(countdown=...)``, no retry cap, so no job is dropped); then the task **polls** the
  video's status every ``--poll`` seconds until it is terminal (the simplest way to wait: no public
  webhook endpoint, no second task) and records the moment it saw the end in a Redis hash (``DONE``),
  where the bench reads it, as the app would update its job row.

Celery has no notion of a provider's concurrency limit: the pool is sized for throughput, and the
provider's limit is found by its 429s. Each task holds its pool slot while it polls its render, so a
pool smaller than the limit would leave provider slots idle; the bench runs it above the limit (see
``floodgate.bench.peer``), as the usual build does, and counts the 429s that costs.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
import requests
from aiohttp import web
from celery import Celery, Task
from celery.signals import worker_ready

from floodgate import provider_config
from floodgate.bench.naive import serve_app
from floodgate.bench.stacks import API_KEY
from floodgate.routing import RoutingTable, chain_for

DONE = "floodgate-peer:done"  # hash: job id → "<wall time the task saw the render end> <status>"
TERMINAL = {"completed", "failed", "cancelled", "expired"}

app = Celery("floodgate-peer")
app.conf.update(
    task_ignore_result=True,  # the job's end is recorded in DONE, as an app updates its job row
    worker_redirect_stdouts=False,  # the ready line must reach stdout as printed
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    peer_poll=0.05,  # seconds between status polls (set by ``worker --poll``)
)
_local = threading.local()


def _http() -> requests.Session:
    """One keep-alive session per pool thread (a Session is not shared across threads)."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.headers["Authorization"] = f"Bearer {API_KEY}"
    return session


def _store() -> redis.Redis:
    client: redis.Redis | None = getattr(app, "_peer_store", None)
    if client is None:  # thread-safe: redis-py's pool hands each thread its own connection
        client = redis.Redis.from_url(app.conf.broker_url)
        app._peer_store = client
    return client


@app.task(bind=True, max_retries=None, name="floodgate.peer.render")
def render(self: Task, job_id: str, videos_url: str, provider_model: str, prompt: str) -> None:
    http = _http()
    resp = http.post(videos_url, json={"model": provider_model, "prompt": prompt}, timeout=30)
    if resp.status_code == 429:
        raise self.retry(countdown=float(resp.headers.get("Retry-After", "1")))
    resp.raise_for_status()
    video = resp.json()
    while video["status"] not in TERMINAL:
        time.sleep(app.conf.peer_poll)
        video = http.get(f"{videos_url}/{video['id']}", timeout=30).json()
    _store().hset(DONE, job_id, f"{time.time()} {video['status']}")


# -- the API ------------------------------------------------------------------------------
class Api:
    def __init__(self, simulator_url: str, routing: RoutingTable) -> None:
        self.simulator_url = simulator_url.rstrip("/")
        self.routing = routing

    async def create(self, request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
            model, prompt = payload["model"], payload["input"]["prompt"]
            target = chain_for(self.routing, model, datetime.now(UTC))[0]
        except Exception as exc:  # any bad input is the client's 400
            return web.json_response({"detail": str(exc)}, status=400)
        job_id = uuid.uuid4().hex
        # As the usual build does: .delay() straight from the handler (a blocking publish to Redis).
        render.delay(job_id, f"{self.simulator_url}/{target.provider}/v1/videos", target.provider_model, prompt)
        return web.Response(status=202, body=orjson.dumps({"job_id": job_id}), content_type="application/json")


async def serve_api(args: argparse.Namespace) -> None:
    app.conf.broker_url = args.redis
    api = Api(args.simulator, provider_config.load_file(args.routing).routing)
    web_app = web.Application()
    web_app.router.add_post("/v1/jobs", api.create)
    await serve_app(web_app, args.host, args.port, "celery-api=")


@worker_ready.connect
def _ready(**_: Any) -> None:
    print("celery-worker=ready", flush=True)


def run_worker(args: argparse.Namespace) -> None:
    app.conf.update(broker_url=args.redis, peer_poll=args.poll)
    app.worker_main(["worker", "--pool", "threads", "--concurrency", str(args.concurrency), "--loglevel", "WARNING",
                     "--without-mingle", "--without-gossip"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m floodgate.bench.celerypeer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    api = sub.add_parser("api", help="the HTTP API that enqueues")
    api.add_argument("--redis", required=True, help="the broker, redis://HOST:PORT/DB")
    api.add_argument("--simulator", required=True, help="the simulator's base URL")
    api.add_argument("--routing", required=True, help="routing file (which provider serves a model)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=0)
    worker = sub.add_parser("worker", help="the Celery worker that submits and waits")
    worker.add_argument("--redis", required=True, help="the broker, redis://HOST:PORT/DB")
    worker.add_argument("--concurrency", type=int, default=20, help="threads in the pool")
    worker.add_argument("--poll", type=float, default=0.05, help="seconds between status polls")
    args = parser.parse_args(argv)
    if args.role == "api":
        asyncio.run(serve_api(args))
    else:
        run_worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
