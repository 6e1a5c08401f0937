"""Uploads in the video store's S3 bucket (a real S3-compatible server, moto's): any API process
serves what another stored, expired images are refused and swept, the cap holds across
processes, and names the store never made are refused without a request to the bucket."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from connectors.storage import build_upload_store, upload_dir
from connectors.storage.s3_uploads import S3UploadStore
from floodgate import images
from floodgate.api.app import build_app
from floodgate.api.view import JobView
from floodgate.provider_config import dev_setup
from floodgate.settings import Secret, Settings
from tests.helpers import app_clients, moto_s3
from tests.kafka_util import unique_name

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
TTL = 600.0
SETUP = dev_setup("http://127.0.0.1:9")


class NoKafka:
    async def send_and_wait(self, topic: str, key: str | None, value: bytes, headers: Any) -> None:
        return None


class Clock:
    """The API's clock, moved forward by the test instead of waiting for an image to expire."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def bucket() -> Iterator[dict[str, str]]:
    with moto_s3(unique_name("uploads").replace(".", "-").replace("_", "-").lower()) as env:
        yield env


def s3_settings(env: dict[str, str], cache_dir: Path, **overrides: Any) -> Settings:
    return Settings(secret=Secret("s" * 32), cache_dir=cache_dir, video_store="s3",
                    video_s3_bucket=env["FLOODGATE_VIDEO_S3_BUCKET"],
                    video_s3_endpoint=env["FLOODGATE_VIDEO_S3_ENDPOINT"],
                    video_s3_access_key_id="testing", video_s3_secret_access_key=Secret("testing"),
                    video_s3_prefix="floodgate/", upload_ttl=TTL, **overrides)


@pytest.fixture
async def api() -> AsyncIterator[Callable[..., Any]]:
    """Starts API apps (each one process as far as uploads go: its own store, cache directory and clock)."""
    async with app_clients() as serve:
        async def start(settings: Settings, clock: Callable[[], float] = time.time) -> TestClient:
            return await serve(build_app(settings, SETUP, producer=NoKafka(), view=JobView(), wait_for_job=0.05,
                                         clock=clock))

        yield start


async def upload(client: TestClient) -> tuple[int, str]:
    resp = await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    if resp.status != 201:
        return resp.status, ""
    return 201, (await resp.json())["url"].split(str(client.server.port), 1)[1]


async def test_an_image_uploaded_through_one_api_is_served_by_another(
        bucket: dict[str, str], api: Any, tmp_path: Path) -> None:
    one, two = s3_settings(bucket, tmp_path / "one"), s3_settings(bucket, tmp_path / "two")
    first, second = await api(one), await api(two)
    status, path = await upload(first)
    assert status == 201
    got = await second.get(path)
    assert got.status == 200, await got.text()
    assert await got.read() == PNG
    assert got.headers["Content-Type"] == "image/png" and got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert got.headers["Cache-Control"] == "private, max-age=3600"
    assert not upload_dir(one).exists() and not upload_dir(two).exists()  # nothing on either host's disk


async def test_an_expired_image_is_refused_at_once_and_swept_by_the_next_upload(
        bucket: dict[str, str], api: Any, tmp_path: Path) -> None:
    clock = Clock()
    client = await api(s3_settings(bucket, tmp_path), clock)
    _, old = await upload(client)
    assert (await client.get(old)).status == 200
    clock.ahead = TTL + 5
    gone = await client.get(old)  # no sweep has run since: the read itself sees the age
    assert gone.status == 404 and gone.content_type == "application/problem+json"
    status, new = await upload(client)  # the first upload past a minute sweeps
    assert status == 201
    clock.ahead = 0.0  # back to when the old image was fresh: served if it were still there
    assert (await client.get(old)).status == 404
    assert (await client.get(new)).status == 200


async def test_the_sweep_deletes_expired_objects_and_counts_the_rest(bucket: dict[str, str], tmp_path: Path) -> None:
    settings = s3_settings(bucket, tmp_path)
    one, two = build_upload_store(settings), build_upload_store(settings)
    assert isinstance(one, S3UploadStore) and isinstance(two, S3UploadStore)
    now = time.time()
    old = await one.save(PNG, images.PNG)
    fresh = await two.save(PNG[:100], images.PNG)
    assert await two.load(old, now) == PNG
    assert await two.expire(now) == 0 and two.used == len(PNG) + 100  # the other process's upload counted
    later = now + TTL + 5
    assert await one.load(old, later) is None  # expired, though still in the bucket
    assert await one.expire(later) == 2 and one.used == 0
    assert await two.load(fresh, now) is None and await two.load(old, now) is None  # deleted, not only hidden


async def test_the_cap_counts_every_process_uploads_and_answers_503(
        bucket: dict[str, str], api: Any, tmp_path: Path) -> None:
    cap = {"upload_max_total_bytes": len(PNG) * 2}
    first = await api(s3_settings(bucket, tmp_path / "one", **cap))
    for _ in range(2):
        assert (await upload(first))[0] == 201
    assert (await upload(first))[0] == 503
    second = await api(s3_settings(bucket, tmp_path / "two", **cap))  # its first sweep sees the first one's images
    full = await second.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})
    assert full.status == 503 and full.headers["Retry-After"] == "60"
    assert full.content_type == "application/problem+json" and "full" in (await full.json())["detail"]


class RefusingS3:
    """An S3 endpoint that refuses every request (403), counting them."""

    def __init__(self) -> None:
        self.requests = 0

    async def refuse(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=403, content_type="application/xml",
                            text="<Error><Code>AccessDenied</Code><Message>no</Message></Error>")


async def test_names_not_made_by_the_store_404_without_a_request_and_store_errors_503(
        api: Any, tmp_path: Path) -> None:
    s3 = RefusingS3()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", s3.refuse)
    server = TestServer(app)
    await server.start_server()
    try:
        env = {"FLOODGATE_VIDEO_S3_BUCKET": "b", "FLOODGATE_VIDEO_S3_ENDPOINT": str(server.make_url("")).rstrip("/")}
        client = await api(s3_settings(env, tmp_path))
        for path in ["/v1/uploads/img_" + "a" * 31 + ".png", "/v1/uploads/..%2F..%2Fsecret",
                     "/v1/uploads/.incoming-x", "/v1/uploads/img_" + "a" * 32 + ".gif"]:
            assert (await client.get(path)).status == 404, path
        assert s3.requests == 0
        for resp in [await client.get("/v1/uploads/img_" + "a" * 32 + ".png"),
                     await client.post("/v1/uploads", data=PNG, headers={"Content-Type": "image/png"})]:
            assert resp.status == 503 and resp.headers["Retry-After"] == "5"
            problem = await resp.json()
            assert resp.content_type == "application/problem+json" and "cannot be reached" in problem["detail"]
        assert s3.requests >= 2
    finally:
        await server.close()
