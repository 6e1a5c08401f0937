"""CPU per video copy, stage by stage: ``python dev/video_copy_cpu.py [--copies N] [--concurrency C]``.

The API copies every completed job's video into its store (``floodgate.videos.copier``), on the
process that answers the 202s, so each copy's CPU is CPU the accept path does not get. This
script serves the simulator's sample video from another process and copies it ``--copies``
times, ``--concurrency`` at a time (the copier's own default: 8), into a local store in a
temporary directory on the cache's disk, reading the process's CPU per thread from /proc around
each stage:

* fetch only: the guarded download, chunks hashed and dropped;
* record(): the store's look-up of a job's record (none there: what a first copy finds);
* put+record: the store's write of a video and its record, and the store's sync once a second
  (as the copier's commits call it);
* copy(): the copier's whole copy of one job (look-up, download, write), synced alike.

"main" is the event loop's thread, "pool" the threads the store writes from. Compare two trees
by running each (PYTHONPATH), in turns: the machine's noise moves both.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from connectors.simulator.jobs import SAMPLE_VIDEO
from connectors.storage.base import VideoRecord
from connectors.storage.fetch import VideoFetcher, guarded_fetch_session
from connectors.storage.local import LocalVideoStore
from floodgate.eventloop import use_uvloop
from floodgate.settings import Settings
from floodgate.videos.copier import VideoCopier

SERVER = r'''
import sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
async def get(request):
    return web.Response(body=body, headers={"Content-Type": "video/mp4"})
app = web.Application()
app.router.add_get("/files/{name}", get)
print("ready", flush=True)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
'''


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's main thread and of all its other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"main": 0.0, "pool": 0.0}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        out["main" if tid == str(os.getpid()) else "pool"] += (int(fields[11]) + int(fields[12])) / tick
    return out


async def stage(name: str, copies: int, concurrency: int, one: Callable[[int], Awaitable[object]],
                sync: Callable[[], Awaitable[None]] | None = None) -> None:
    """``copies`` calls of ``one``, ``concurrency`` at a time, timed; with ``sync``, that called
    once a second meanwhile and once at the end, as the copier syncs the store before each commit."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(i: int) -> None:
        async with gate:
            await one(i)

    async def syncing(every: float = 1.0) -> None:
        assert sync is not None
        while True:
            await asyncio.sleep(every)
            await sync()

    await asyncio.gather(*(gated(i) for i in range(200)))  # warm-up
    if sync is not None:
        await sync()
    before, t0 = thread_cpu(), time.perf_counter()
    ticking = asyncio.create_task(syncing()) if sync is not None else None
    await asyncio.gather(*(gated(1_000_000 + i) for i in range(copies)))
    if ticking is not None:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
        await sync()  # type: ignore[misc]
    after, elapsed = thread_cpu(), time.perf_counter() - t0
    per = {k: (after[k] - before[k]) * 1000 / copies for k in after}
    print(f"{name:12s} {sum(per.values()):.3f} ms CPU per copy (main {per['main']:.3f}, pool {per['pool']:.3f}), "
          f"{copies / elapsed:,.0f}/s")


async def main(copies: int, concurrency: int) -> None:
    port = random.randint(20000, 40000)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(SAMPLE_VIDEO), str(port)], stdout=subprocess.PIPE)
    assert server.stdout is not None
    server.stdout.readline()
    await asyncio.sleep(0.3)  # run_app binds after its setup
    body = SAMPLE_VIDEO.read_bytes()
    url = f"http://127.0.0.1:{port}/files/"
    session = guarded_fetch_session(allow_private=True)
    try:
        fetcher = VideoFetcher(session, allow_private=True, max_bytes=1 << 29)
        settings = Settings.from_env({**os.environ, "FLOODGATE_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
        with tempfile.TemporaryDirectory(dir=settings.cache_dir) as root:
            store = LocalVideoStore(Path(root))

            async def fetch_only(i: int) -> None:
                async with fetcher.open(f"{url}{i}.mp4") as download:
                    async for _ in download.chunks():
                        pass

            async def one_chunk() -> AsyncIterator[bytes]:
                yield body

            async def put(i: int) -> None:
                job_id = f"put{i:010d}"
                record = VideoRecord(job_id, "stored", at_ms=1, size=len(body), sha256="0" * 64,
                                     content_type="video/mp4")
                await store.put_video(job_id, one_chunk(), "video/mp4", lambda: record)

            await stage("fetch only", copies, concurrency, fetch_only)
            await stage("record()", copies, concurrency, lambda i: store.record(f"none{i:010d}"))
            await stage("put+record", copies, concurrency, put, store.sync)
            # As the copier starts them: a fetched batch at once (up to its 256 pending), the
            # copier's own semaphore letting ``concurrency`` download and write at a time.
            copier = VideoCopier(settings, store, fetcher=fetcher, concurrency=concurrency)
            await stage("copy()", copies, 256, lambda i: copier.copy(f"job{i:010d}", f"{url}{i}.mp4"), store.sync)
    finally:
        await session.close()
        server.kill()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--copies", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    Settings.from_env().cache_dir.mkdir(parents=True, exist_ok=True)
    use_uvloop()
    asyncio.run(main(args.copies, args.concurrency))
