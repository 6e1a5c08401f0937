"""The pages' routes in memory (no Kafka): the upload store's checks, the model list, the pages
and their policy headers, and the dashboard's key, dev-mode gate and spike."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from connectors.storage.uploads import LocalUploadStore
from floodgate import images
from floodgate.api import uploads
from floodgate.api.app import build_app
from floodgate.api.view import JobView
from floodgate.errors import StorageError
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from tests.helpers import app_clients

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
SETUP = dev_setup("http://127.0.0.1:9")


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        self.sent.append((topic, key))


class CountingSender(RecordingSender):
    """Sets ``all_in`` once ``expected`` records have been written."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.all_in = asyncio.Event()

    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        await super().send_and_wait(topic, key, value, headers)
        if len(self.sent) >= self.expected:
            self.all_in.set()


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with app_clients() as serve:
        async def build(sender: RecordingSender | None = None, **overrides: Any) -> TestClient:
            settings = Settings(secret=Secret("s" * 32), cache_dir=tmp_path, **overrides)
            return await serve(build_app(settings, SETUP, producer=sender or RecordingSender(), view=JobView(),
                                         wait_for_job=0.05))

        yield build


async def test_an_image_is_stored_and_served_by_its_unguessable_url(make: Any) -> None:
    client = await make()
    resp = await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["content_type"] == "image/png" and body["bytes"] == len(PNG)
    path = body["url"].split(str(client.server.port), 1)[1]
    assert path.startswith("/v1/uploads/img_") and resp.headers["Location"] == body["url"]
    got = await client.get(path)
    assert got.status == 200 and await got.read() == PNG
    assert got.headers["Content-Type"] == "image/png" and got.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in got.headers["Content-Security-Policy"]


@pytest.mark.parametrize(("content_type", "data", "why", "at_fault"), [
    ("image/png", b"<html><script>alert(1)</script></html>", "not a JPEG, PNG or WebP", "body"),
    ("image/png", JPEG, "is a image/jpeg image", "body"),
    # No image type at all: the header is what to fix, whatever the body holds.
    ("application/json", b"{}", "Content-Type image/jpeg", "Content-Type"),
    ("image/gif", b"GIF89a", "Content-Type image/jpeg", "Content-Type"),
])
async def test_anything_but_a_matching_image_is_refused(make: Any, content_type: str, data: bytes, why: str,
                                                        at_fault: str) -> None:
    client = await make()
    resp = await client.post("/v1/uploads", data=data, headers={"Content-Type": content_type})
    assert resp.status == 415
    problem = await resp.json()
    assert resp.content_type == "application/problem+json" and why in problem["detail"]
    assert [e["field"] for e in problem["errors"]] == [at_fault]


async def test_an_image_past_the_limit_is_413(make: Any) -> None:
    client = await make(upload_max_bytes=50)
    resp = await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    assert resp.status == 413 and resp.content_type == "application/problem+json"


async def test_a_full_store_refuses_with_503_until_images_expire(make: Any) -> None:
    client = await make(upload_max_total_bytes=len(PNG) * 2)
    for _ in range(2):
        assert (await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})).status == 201
    full = await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    assert full.status == 503 and full.headers["Retry-After"] == "60"


class HeldStore(LocalUploadStore):
    """Saves wait until ``opened`` is set; ``saving`` is set as each one starts."""

    def __init__(self, root: Path, max_total: int) -> None:
        super().__init__(root, ttl=3600.0, max_total=max_total)
        self.opened = asyncio.Event()
        self.saving = asyncio.Event()
        self.started = 0

    async def save(self, data: bytes, kind: images.ImageKind) -> str:
        self.started += 1
        self.saving.set()
        await self.opened.wait()
        return await super().save(data, kind)


async def settle(store: HeldStore, posts: list[asyncio.Task[Any]]) -> None:
    """Until every upload has either started its save or been answered."""
    async with asyncio.timeout(5):
        while store.started + sum(p.done() for p in posts) < len(posts):
            store.saving.clear()  # no await since the count: a save starting from here sets it again
            started = asyncio.ensure_future(store.saving.wait())
            await asyncio.wait([started, *(p for p in posts if not p.done())], return_when=asyncio.FIRST_COMPLETED)
            started.cancel()


async def test_uploads_saved_at_once_never_pass_the_stores_cap(make: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = HeldStore(tmp_path / "held", max_total=len(PNG) * 2)
    monkeypatch.setattr(uploads, "build_upload_store", lambda settings: store)
    client = await make()
    posts = [asyncio.create_task(client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"}))
             for _ in range(5)]
    try:
        await settle(store, posts)
        started, refused = store.started, [p.result() for p in posts if p.done()]
    finally:
        store.opened.set()  # a failing test leaves no save waiting for ever
    answers = [await p for p in posts]
    # Two fit; the other three were refused while the two were still being written.
    assert started == 2 and [r.status for r in refused] == [503] * 3
    for r in refused:
        assert "full" in (await r.json())["detail"] and r.headers["Retry-After"] == "60"
    assert sorted(r.status for r in answers) == [201, 201, 503, 503, 503]
    on_disk = sum(f.stat().st_size for f in (tmp_path / "held").iterdir())
    assert on_disk == store.used == len(PNG) * 2 and store.reserved == 0


async def test_a_failed_save_gives_its_share_of_the_cap_back(make: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    class FailsOnce(LocalUploadStore):
        failed = False

        async def save(self, data: bytes, kind: images.ImageKind) -> str:
            if not self.failed:
                self.failed = True
                raise StorageError("upload store: disk full", retriable=True)
            return await super().save(data, kind)

    store = FailsOnce(tmp_path / "once", ttl=3600.0, max_total=len(PNG))
    monkeypatch.setattr(uploads, "build_upload_store", lambda settings: store)
    client = await make()
    failed = await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    assert failed.status == 503 and "cannot be reached" in (await failed.json())["detail"]
    assert (await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})).status == 201
    assert store.used == len(PNG) and store.reserved == 0


async def test_uploads_want_an_api_key_when_keys_are_configured(make: Any) -> None:
    client = await make(api_keys=Secret("k1=acme"))
    headers = {"Content-Type": "image/png"}
    missing = await client.post("/v1/uploads", data=PNG, headers=headers)
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("ApiKey ")
    assert 'header="X-API-Key"' in missing.headers["WWW-Authenticate"]
    assert (await client.post("/v1/uploads", data=PNG, headers={**headers, "X-API-Key": "nope"})).status == 403
    assert (await client.post("/v1/uploads", data=PNG, headers={**headers, "X-API-Key": "k1"})).status == 201


@pytest.mark.parametrize("path", ["/v1/uploads/img_" + "a" * 32 + ".png", "/v1/uploads/..%2F..%2Fsettings.py",
                                  "/v1/uploads/.incoming-x", "/v1/uploads/%2e%2e"])
async def test_only_stored_names_are_served(make: Any, path: str) -> None:
    client = await make()
    resp = await client.get(path)
    assert resp.status == 404


def test_expired_images_are_not_served_and_are_swept(tmp_path: Path) -> None:
    store = LocalUploadStore(tmp_path / "uploads", ttl=60.0)
    name = store.put(PNG, images.PNG)
    now = time.time()
    assert store.path(name, now) is not None
    assert store.path(name, now + 61) is None
    assert store.used == len(PNG) and not store.has_room(1 << 30)
    assert store.sweep(now + 61) == 1 and not list((tmp_path / "uploads").iterdir())
    assert store.used == 0


async def test_models_say_which_provider_serves_them_now(make: Any) -> None:
    client = await make()
    body = await (await client.get("/v1/models")).json()
    sora = next(m for m in body["models"] if m["model"] == "sora-2")
    assert sora["serving"] == "kling"
    assert sora["providers"][0] == {"provider": "sora", "available": False,
                                    "why_unavailable": "retired 2026-09-24T00:00:00+00:00"}


@pytest.mark.parametrize(("path", "content_type"), [
    ("/", "text/html"), ("/dashboard", "text/html"), ("/static/generate.js", "text/javascript"),
    ("/static/dashboard.js", "text/javascript"), ("/static/app.css", "text/css")])
async def test_pages_and_assets_are_served_with_a_strict_policy(make: Any, path: str, content_type: str) -> None:
    client = await make()
    resp = await client.get(path)
    assert resp.status == 200 and resp.content_type == content_type
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    text = await resp.text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # no CDN


async def test_an_unknown_asset_is_a_problem_404(make: Any) -> None:
    client = await make()
    for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/__init__.py"):
        resp = await client.get(path)
        assert resp.status == 404 and resp.content_type == "application/problem+json", path


async def test_the_dashboard_is_open_without_api_keys(make: Any) -> None:
    client = await make()
    resp = await client.get("/dashboard/data")
    assert resp.status == 200
    body = await resp.json()
    assert body["dev_mode"] is False and body["processes"] == {"scraped": 1, "down": []}
    assert {"providers", "points", "totals", "breakers", "spike"} <= set(body)
    # The dev table's sora is retired: the dashboard is told so (its breaker alone says "closed").
    assert body["unavailable"] == {"sora": "retired 2026-09-24T00:00:00+00:00"}


async def test_with_api_keys_the_dashboard_wants_the_operator_key(make: Any) -> None:
    closed = await make(api_keys=Secret("k1=acme"))
    assert (await closed.get("/dashboard/data", headers={"X-Operator-Key": "anything"})).status == 403
    client = await make(api_keys=Secret("k1=acme"), operator_key=Secret("op-secret"))
    missing = await client.get("/dashboard/data")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("ApiKey ")
    assert 'header="X-Operator-Key"' in missing.headers["WWW-Authenticate"]
    assert (await client.get("/dashboard/data", headers={"X-Operator-Key": "k1"})).status == 403
    assert (await client.get("/dashboard/data", headers={"X-Operator-Key": "op-secret"})).status == 200
    spike = await client.post("/dashboard/spike", json={})
    assert spike.status == 401 and "WWW-Authenticate" in spike.headers


async def test_the_spike_is_dev_mode_only_and_checks_its_parameters(make: Any) -> None:
    client = await make()
    resp = await client.post("/dashboard/spike", json={})
    assert resp.status == 403 and "dev-mode" in (await resp.json())["detail"]
    dev = await make(dev_mode=True)
    resp = await dev.post("/dashboard/spike", json={"jobs": 0, "rate": "fast"})
    assert resp.status == 400
    assert {e["field"] for e in (await resp.json())["errors"]} == {"jobs", "rate"}


async def test_a_spike_sends_its_jobs_through_the_ingress(make: Any) -> None:
    sender = RecordingSender()
    client = await make(sender, dev_mode=True)
    resp = await client.post("/dashboard/spike", json={"jobs": 6, "rate": 200})
    assert resp.status == 202
    deadline = time.monotonic() + 10
    while len(sender.sent) < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    topics = {topic for topic, _ in sender.sent}
    assert len(sender.sent) >= 6 and topics == {"floodgate.requests"}
    state = (await (await client.get("/dashboard/data")).json())["spike"]
    assert state["sent"] >= 1 and state["accepted"] >= 1


async def test_the_spike_goes_to_this_server_whatever_host_the_request_names(make: Any) -> None:
    """The spike carries a tenant's API key: a foreign Host header must not send it elsewhere."""
    foreign_seen: list[str | None] = []
    foreign_hit = asyncio.Event()

    async def catch(request: web.Request) -> web.Response:
        foreign_seen.append(request.headers.get("X-API-Key"))
        foreign_hit.set()
        return web.Response(status=202)

    foreign_app = web.Application()
    foreign_app.router.add_route("*", "/{tail:.*}", catch)
    async with app_clients() as serve:
        foreign = await serve(foreign_app)
        sender = CountingSender(2)
        client = await make(sender, dev_mode=True, api_keys=Secret("tenant-key=acme"),
                            operator_key=Secret("op-key"))
        resp = await client.post("/dashboard/spike", json={"jobs": 2, "rate": 100},
                                 headers={"X-Operator-Key": "op-key", "Host": f"127.0.0.1:{foreign.server.port}"})
        assert resp.status == 202
        ours, theirs = asyncio.ensure_future(sender.all_in.wait()), asyncio.ensure_future(foreign_hit.wait())
        await asyncio.wait([ours, theirs], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ours.cancel()
        theirs.cancel()
        assert foreign_seen == []
        assert [topic for topic, _ in sender.sent] == ["floodgate.requests"] * 2  # accepted here, with the key
