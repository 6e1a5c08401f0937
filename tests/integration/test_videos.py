"""Videos in our own store: the guarded fetch, the copier's rules, both stores (a local directory
and a real S3-compatible server, moto's), and the API serving signed, expiring links."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import CollectorRegistry

from connectors.storage import LocalVideoStore, VideoRecord, VideoStore
from connectors.storage.fetch import VideoFetcher, guarded_fetch_session
from floodgate.errors import StorageError
from floodgate.ids import job_token, new_job_id
from floodgate.kafka_admin import ensure_topics
from floodgate.metrics import ApiMetrics
from floodgate.netguard import IPAddress
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.videolinks import VideoLinks
from floodgate.videos.copier import AGAIN_AFTER, CopyPolicy, VideoCopier
from tests.helpers import moto_s3
from tests.integration.api_helpers import aproduce_snapshots, running_api, snapshot
from tests.kafka_util import committed_offsets, unique_name, wait_for_commits

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400  # ~100 KiB


def public_only_loopback(address: IPAddress) -> bool:
    """A guard that calls 127.0.0.1 "public" (it is where the test's provider listens) and
    forbids everything else that is private, 127.0.0.2 included."""
    return address != ipaddress.ip_address("127.0.0.1") and not address.is_global


class Names(AbstractResolver):
    """Resolves the test's names; anything else is unknown."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        return [{"hostname": host, "host": self.table[host], "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


async def serve(app: web.Application, host: str) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, runner.addresses[0][1]


class Provider:
    """A provider's file server on 127.0.0.1, and a trap on 127.0.0.2 that must never be reached."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.trap_hits = 0
        self.fail_first = 0
        self.redirect_to = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}", self.file)
        return app

    async def file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if name == "flaky.mp4" and self.hits[name] <= self.fail_first:
            return web.Response(status=503, headers={"Retry-After": "0"})
        if name == "redirect.mp4":
            raise web.HTTPFound(self.redirect_to)
        if name == "page.html":
            return web.Response(text="<html>", content_type="text/html")
        if name == "huge.mp4":  # no Content-Length: the cap must hold while streaming
            response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"x" * 65536)
            return response
        return web.Response(body=VIDEO, content_type="video/mp4")

    async def trap(self, request: web.Request) -> web.Response:
        self.trap_hits += 1
        return web.Response(body=VIDEO, content_type="video/mp4")


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str, int]]:
    p = Provider()
    runner, port = await serve(p.app(), "127.0.0.1")
    trap_app = web.Application()
    trap_app.router.add_get("/{tail:.*}", p.trap)
    trap_runner, trap_port = await serve(trap_app, "127.0.0.2")
    try:
        yield p, f"http://video.test:{port}", trap_port
    finally:
        await runner.cleanup()
        await trap_runner.cleanup()


@pytest.fixture
async def fetcher() -> AsyncIterator[VideoFetcher]:
    names = Names({"video.test": "127.0.0.1", "internal.test": "127.0.0.2"})
    session = guarded_fetch_session(allow_private=False, forbidden=public_only_loopback, inner_resolver=names)
    async with session:
        yield VideoFetcher(session, allow_private=False, max_bytes=1_000_000, forbidden=public_only_loopback)


async def read_all(fetcher: VideoFetcher, url: str) -> tuple[bytes, str, str]:
    async with fetcher.open(url) as download:
        body = b"".join([chunk async for chunk in download.chunks()])
        return body, download.content_type, download.hexdigest


async def test_a_video_is_streamed_checked_and_hashed(provider: tuple[Provider, str, int],
                                                      fetcher: VideoFetcher) -> None:
    _, base, _ = provider
    body, content_type, digest = await read_all(fetcher, f"{base}/v.mp4")
    assert (body, content_type, digest) == (VIDEO, "video/mp4", hashlib.sha256(VIDEO).hexdigest())


@pytest.mark.parametrize("target", ["http://127.0.0.2:{trap}/meta", "http://internal.test:{trap}/meta",
                                    "http://localhost:{trap}/meta", "http://[::ffff:127.0.0.2]:{trap}/meta",
                                    "http://169.254.169.254/latest/meta-data"])
async def test_a_redirect_to_a_private_address_is_never_fetched(provider: tuple[Provider, str, int],
                                                                fetcher: VideoFetcher, target: str) -> None:
    p, base, trap_port = provider
    p.redirect_to = target.format(trap=trap_port)
    with pytest.raises(StorageError) as caught:
        await read_all(fetcher, f"{base}/redirect.mp4")
    assert not caught.value.retriable and "private" in str(caught.value)
    assert p.hits["redirect.mp4"] == 1 and p.trap_hits == 0


async def test_a_redirect_to_a_public_address_is_followed(provider: tuple[Provider, str, int],
                                                          fetcher: VideoFetcher) -> None:
    p, base, _ = provider
    p.redirect_to = "/v.mp4"  # relative, on the same (allowed) host
    body, _, _ = await read_all(fetcher, f"{base}/redirect.mp4")
    assert body == VIDEO and p.hits["v.mp4"] == 1


@pytest.mark.parametrize(("name", "why"), [("huge.mp4", "byte cap"), ("page.html", "not a video"),
                                           ("missing", "HTTP 200")])
async def test_refusals_are_permanent(provider: tuple[Provider, str, int], fetcher: VideoFetcher,
                                      name: str, why: str) -> None:
    _, base, _ = provider
    if name == "missing":  # a 404 from the provider: the aiohttp router answers it
        with pytest.raises(StorageError, match="HTTP 404") as caught:
            await read_all(fetcher, f"{base}/a/b")
    else:
        with pytest.raises(StorageError, match=why) as caught:
            await read_all(fetcher, f"{base}/{name}")
    assert not caught.value.retriable


# --- the copier's rules, on both stores -------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VideoStore]:
    if request.param == "local":
        yield LocalVideoStore(tmp_path / "videos")
        return
    from connectors.storage.s3 import S3VideoStore

    with moto_s3(unique_name("videos").replace(".", "-").replace("_", "-").lower()) as env:
        yield S3VideoStore(bucket=env["FLOODGATE_VIDEO_S3_BUCKET"], endpoint=env["FLOODGATE_VIDEO_S3_ENDPOINT"],
                           access_key_id="testing", secret_access_key="testing")


def copier_for(settings: Settings, store: VideoStore, fetcher: VideoFetcher) -> VideoCopier:
    return VideoCopier(settings, store, fetcher=fetcher, policy=CopyPolicy(base_delay=0.01, max_delay=0.05),
                       rand=lambda: 0.0)


async def stored_bytes(store: VideoStore, job_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.open(job_id)])


async def test_copy_stores_the_bytes_and_their_checksum_once(
        settings_for: Callable[..., Settings], store: VideoStore, provider: tuple[Provider, str, int],
        fetcher: VideoFetcher) -> None:
    p, base, _ = provider
    copier = copier_for(settings_for(), store, fetcher)
    job_id = new_job_id()
    assert await store.record(job_id) is None
    record = await copier.copy(job_id, f"{base}/v.mp4")
    assert (record.status, record.size, record.sha256, record.content_type) == (
        "stored", len(VIDEO), hashlib.sha256(VIDEO).hexdigest(), "video/mp4")
    assert await store.record(job_id) == record
    assert await stored_bytes(store, job_id) == VIDEO
    again = await copier.copy(job_id, f"{base}/v.mp4")  # a redelivered result: nothing fetched again
    assert again == record and p.hits["v.mp4"] == 1


async def test_a_passing_failure_is_retried_and_a_permanent_one_recorded(
        settings_for: Callable[..., Settings], store: VideoStore, provider: tuple[Provider, str, int],
        fetcher: VideoFetcher) -> None:
    p, base, _ = provider
    copier = copier_for(settings_for(), store, fetcher)
    p.fail_first = 2
    flaky = await copier.copy(new_job_id(), f"{base}/flaky.mp4")
    assert flaky.status == "stored" and p.hits["flaky.mp4"] == 3
    huge_id = new_job_id()
    huge = await copier.copy(huge_id, f"{base}/huge.mp4")
    assert huge.status == "failed" and "cap" in huge.reason and p.hits["huge.mp4"] == 1
    assert not huge.gave_up  # refused: the video itself is what is wrong
    assert await store.record(huge_id) == huge
    # A source that fails in a way that may pass, every time, until the budget (6 attempts) is spent.
    p.fail_first, down_id = 100, new_job_id()
    p.hits.pop("flaky.mp4")
    down = await copier.copy(down_id, f"{base}/flaky.mp4")
    assert down.status == "failed" and down.gave_up and "503" in down.reason and p.hits["flaky.mp4"] == 6
    assert await store.record(down_id) == down


async def test_a_copy_given_up_on_starts_again_when_asked_for_and_not_more_often(
        settings_for: Callable[..., Settings], store: VideoStore, provider: tuple[Provider, str, int],
        fetcher: VideoFetcher) -> None:
    p, base, _ = provider
    now = [1_900_000_000.0]
    registry = CollectorRegistry()
    copier = VideoCopier(settings_for(), store, fetcher=fetcher, policy=CopyPolicy(base_delay=0.01, max_delay=0.05),
                         rand=lambda: 0.0, clock=lambda: now[0], metrics=ApiMetrics(registry))

    def counted(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    url, job_id = f"{base}/flaky.mp4", new_job_id()
    p.fail_first = 100  # the source is down for the whole first copy
    down = await copier.copy(job_id, url)
    assert down.gave_up and p.hits["flaky.mp4"] == 6
    refused = await copier.copy(new_job_id(), f"{base}/page.html")
    assert refused.status == "failed" and not refused.gave_up
    # Asked for within a minute of giving up: not yet. A refusal: never.
    now[0] += AGAIN_AFTER - 1
    assert not copier.copy_again(down, url) and not copier.copy_again(refused, f"{base}/page.html")
    assert copier.copies_again() == []
    # The source is back; asked for a minute after: one copy starts, and only one however many ask.
    p.fail_first, now[0] = 0, now[0] + 1
    assert copier.copy_again(down, url)
    assert not copier.copy_again(down, url)
    (running,) = copier.copies_again()
    await running
    stored = await store.record(job_id)
    assert stored is not None and stored.status == "stored" and stored.size == len(VIDEO)
    assert await stored_bytes(store, job_id) == VIDEO and copier.copies_again() == []
    # Counted as a copy started again, not as one more result handled (each result counted once).
    assert counted("floodgate_video_copies_again_total") == 1
    assert counted("floodgate_videos_total", outcome="failed") == 2
    assert counted("floodgate_videos_total", outcome="stored") == 0
    # Asked for again with the stale record (another viewer's request, already on its way): the store
    # holds another record now, so nothing is fetched again.
    hits = p.hits["flaky.mp4"]
    assert copier.copy_again(down, url)
    await asyncio.gather(*copier.copies_again())
    assert p.hits["flaky.mp4"] == hits and await store.record(job_id) == stored
    # Failing again: a new record, so the next try waits a minute from now.
    again_id = new_job_id()
    p.fail_first, p.hits["flaky.mp4"] = 100, 0
    first = await copier.copy(again_id, url)
    now[0] += AGAIN_AFTER
    assert copier.copy_again(first, url)
    await asyncio.gather(*copier.copies_again())
    second = await store.record(again_id)
    assert second is not None and second.gave_up and second.at_ms == int(now[0] * 1000) > first.at_ms
    assert not copier.copy_again(second, url)


class FailingSync(LocalVideoStore):
    """A local store whose sync fails (a full or broken disk) until ``healed``; each attempt is
    counted and signalled."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.healed = False
        self.attempts = 0
        self.tried = asyncio.Event()

    async def sync(self) -> None:
        self.attempts += 1
        self.tried.set()
        if not self.healed:
            raise StorageError("no space left on device", retriable=True)
        await super().sync()


async def test_the_copier_commits_past_a_copy_only_once_the_store_has_it_on_disk(
        settings_for: Callable[..., Settings], provider: tuple[Provider, str, int], fetcher: VideoFetcher,
        tmp_path: Path) -> None:
    """The local store writes without an fsync per file: a crash of the host may lose a copy made
    since its last sync, so the copier's offsets pass a copy only after a sync that succeeded."""
    _, base, _ = provider
    settings = settings_for()
    topic = TopicNames(settings).results
    await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, TopicNames(settings).layout({}), 1)
    store = FailingSync(tmp_path / "videos")
    copier = VideoCopier(settings, store, fetcher=fetcher, commit_interval=0.05)
    job_id = new_job_id()
    await copier.start()
    try:
        await aproduce_snapshots(settings.kafka_bootstrap, topic, snapshot(
            job_id, 5, "completed", progress=1.0, video_url=f"{base}/v.mp4"))
        async with asyncio.timeout(30):
            while await store.record(job_id) is None:
                store.tried.clear()
                await store.tried.wait()  # the commit loop's next round
            # Two more rounds with the copy there to commit past, and the sync failing in each.
            for _ in range(2):
                store.tried.clear()
                await store.tried.wait()
        committed = await asyncio.to_thread(committed_offsets, settings.kafka_bootstrap, copier.group_id, topic)
        assert all(offset <= 0 for offset in committed.values()), committed
        store.healed = True
        committed = await asyncio.to_thread(wait_for_commits, settings.kafka_bootstrap, copier.group_id, topic,
                                            lambda offsets: any(offset > 0 for offset in offsets.values()))
    finally:
        await copier.stop()
    assert max(committed.values()) == 1 and store.attempts >= 4


async def test_a_video_over_the_cap_leaves_nothing_behind(store: VideoStore) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 1024
        raise StorageError("video is over the cap", retriable=False)

    job_id = new_job_id()
    with pytest.raises(StorageError, match="cap"):
        await store.put_video(job_id, chunks(), "video/mp4")
    with pytest.raises(StorageError):
        await stored_bytes(store, job_id)
    if isinstance(store, LocalVideoStore):
        assert not list(store.root.glob("*"))  # no temporary file either


# --- the API: our link in the job, the bytes behind it ----------------------------------------


def link_of(job: dict) -> tuple[str, dict[str, str]]:
    url = job["result"]["video_url"]
    parts = urlsplit(url)
    return url, {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_the_api_links_and_serves_stored_videos(settings_for: Callable[..., Settings],
                                                      store: VideoStore) -> None:
    settings = settings_for(video_link_ttl=30.0, simulator_url="http://127.0.0.1:9")  # never called
    now = [1_900_000_000.0]
    job_id, pending_id = new_job_id(), new_job_id()
    record = VideoRecord(job_id, "stored", at_ms=1, size=len(VIDEO), sha256=hashlib.sha256(VIDEO).hexdigest(),
                         content_type="video/mp4")

    async def chunks() -> AsyncIterator[bytes]:
        yield VIDEO[:1000]
        yield VIDEO[1000:]

    await store.put_video(job_id, chunks(), "video/mp4")
    await store.put_record(record)
    topic = TopicNames(settings).notifications
    async with running_api(settings, roles={"read"}, video_store=store, clock=lambda: now[0]) as api, \
            aiohttp.ClientSession() as http:
        assert api.view is not None
        jobs = {}
        for jid in (job_id, pending_id):
            await aproduce_snapshots(settings.kafka_bootstrap, topic, snapshot(
                jid, 4, "completed", progress=1.0, video_url="https://provider.example/out.mp4"))
            assert await api.view.wait_for(jid, 15.0) is not None
            auth = {"Authorization": f"Bearer {job_token(settings.secret.reveal().encode(), jid)}"}
            async with http.get(f"{api.url}/v1/jobs/{jid}", headers=auth) as resp:
                jobs[jid] = await resp.json()
        url, query = link_of(jobs[job_id])
        assert url.startswith(f"{api.url}/v1/videos/{job_id}?expires=1900000030&sig=")
        async with http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == VIDEO
            assert resp.headers["Content-Type"] == "video/mp4"
            digest = base64.b64encode(hashlib.sha256(VIDEO).digest()).decode()
            assert resp.headers["Repr-Digest"] == f"sha-256=:{digest}:"
            assert resp.headers["Cache-Control"] == "private, max-age=30"
        async with http.head(url) as resp:
            assert resp.status == 200
        # Forged: another job's id under this signature, a stretched expiry, no signature at all.
        base = f"{api.url}/v1/videos"
        for bad in (f"{base}/{pending_id}?expires={query['expires']}&sig={query['sig']}",
                    f"{base}/{job_id}?expires={int(query['expires']) + 3600}&sig={query['sig']}",
                    f"{base}/{job_id}"):
            async with http.get(bad) as resp:
                assert resp.status == 403, bad
                assert resp.headers["Content-Type"] == "application/problem+json"
                assert "expired" not in (await resp.json())["detail"]
        # Not copied yet: meanwhile the link leads to the provider's own copy.
        pending_url, _ = link_of(jobs[pending_id])
        async with http.get(pending_url, allow_redirects=False) as resp:
            assert resp.status == 307 and resp.headers["Location"] == "https://provider.example/out.mp4"
            assert resp.headers["Cache-Control"] == "no-store"
        # Not copied yet, and a job this API's view does not hold (the provider's URL unknown here):
        # 503 with Retry-After.
        unknown = VideoLinks(settings.video_link_key, settings.video_link_ttl).url(api.url, new_job_id(), now[0])
        async with http.get(unknown, allow_redirects=False) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "5"
            assert (await resp.json())["type"] == "urn:floodgate:problem:video-pending"
        # A copy the copier gave up on (failures that might have passed, past its budget) leads
        # to the provider's own copy, as a pending one does; a refused one never does: 502.
        given_up, refused = new_job_id(), new_job_id()
        await store.put_record(VideoRecord(given_up, "failed", at_ms=2, reason="503 from the source",
                                           gave_up=True))
        await store.put_record(VideoRecord(refused, "failed", at_ms=2, reason="not a video: text/html"))
        for jid in (given_up, refused):
            await aproduce_snapshots(settings.kafka_bootstrap, topic, snapshot(
                jid, 4, "completed", progress=1.0, video_url="https://provider.example/out.mp4"))
            assert await api.view.wait_for(jid, 15.0) is not None
        links = VideoLinks(settings.video_link_key, settings.video_link_ttl)
        async with http.get(links.url(api.url, given_up, now[0]), allow_redirects=False) as resp:
            assert resp.status == 307 and resp.headers["Location"] == "https://provider.example/out.mp4"
        async with http.get(links.url(api.url, refused, now[0]), allow_redirects=False) as resp:
            assert resp.status == 502 and "Location" not in resp.headers
            assert (await resp.json())["type"] == "urn:floodgate:problem:video-unavailable"
        # Expired: the same link once its time has passed.
        now[0] += 30
        async with http.get(url) as resp:
            assert resp.status == 403 and "expired" in (await resp.json())["detail"]


async def test_a_video_given_up_on_is_copied_again_when_someone_asks_for_it(
        settings_for: Callable[..., Settings], store: VideoStore, provider: tuple[Provider, str, int]) -> None:
    p, base, _ = provider
    source = f"http://127.0.0.1:{urlsplit(base).port}/v.mp4"  # the copier's own fetcher: no test resolver
    settings = settings_for(allow_private_webhooks=True, simulator_url="http://127.0.0.1:9")  # never called
    job_id = new_job_id()
    await store.put_record(VideoRecord(job_id, "failed", at_ms=2, reason="503 from the source", gave_up=True))
    async with running_api(settings, roles={"read"}, video_store=store, video_copier=True) as api, \
            aiohttp.ClientSession() as http:
        assert api.view is not None and api.copier is not None
        await aproduce_snapshots(settings.kafka_bootstrap, TopicNames(settings).notifications, snapshot(
            job_id, 4, "completed", progress=1.0, video_url=source))
        assert await api.view.wait_for(job_id, 15.0) is not None
        link = VideoLinks(settings.video_link_key, settings.video_link_ttl).url(api.url, job_id, time.time())
        # The provider's copy at once, and ours started again meanwhile ...
        async with http.get(link, allow_redirects=False) as resp:
            assert resp.status == 307 and resp.headers["Location"] == source
        await asyncio.gather(*api.copier.copies_again())
        assert p.hits["v.mp4"] == 1
        # ... which is what the link serves from then on.
        async with http.get(link, allow_redirects=False) as resp:
            assert resp.status == 200 and await resp.read() == VIDEO
            digest = base64.b64encode(hashlib.sha256(VIDEO).digest()).decode()
            assert resp.headers["Repr-Digest"] == f"sha-256=:{digest}:"  # checked by our copy
        assert p.hits["v.mp4"] == 1
