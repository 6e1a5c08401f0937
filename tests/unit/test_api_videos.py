"""Serving a stored video from the local store, in memory: its Range and conditional answers, and
one validator (the checksum) on each of them."""
from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from connectors.storage import LocalVideoStore, VideoRecord
from floodgate.api.common import Deps
from floodgate.api.videos import RangeUse, add_routes, precondition, range_use
from floodgate.ids import new_job_id
from floodgate.provider_config import dev_setup
from floodgate.settings import Settings
from floodgate.videolinks import VideoLinks

VIDEO = bytes(range(100))
ETAG = f'"{hashlib.sha256(VIDEO).hexdigest()}"'
NOW = 1_900_000_000.0
LINKS = VideoLinks(b"k" * 32, ttl=60.0)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestClient, str]]:
    """A client of the video route and the signed path of a stored 100-byte video."""
    store, job_id = LocalVideoStore(tmp_path / "videos"), new_job_id()
    record = VideoRecord(job_id, "stored", at_ms=1, size=len(VIDEO), sha256=hashlib.sha256(VIDEO).hexdigest(),
                         content_type="video/mp4")
    await store.put_video(job_id, one_chunk(VIDEO), "video/mp4", lambda: record)
    app = web.Application()
    add_routes(app, Deps(Settings(), dev_setup("http://127.0.0.1:9"), None, None, clock=lambda: NOW), LINKS, store)
    async with TestClient(TestServer(app)) as client:
        yield client, LINKS.path(job_id, NOW)


async def fetch(served: tuple[TestClient, str], method: str = "GET",
                **headers: str) -> tuple[int, bytes, CIMultiDict[str]]:
    client, path = served
    async with client.request(method, path, headers=headers) as response:
        return response.status, await response.read(), CIMultiDict(response.headers)


@pytest.mark.parametrize(("range_header", "first", "last"), [
    ("bytes=0-9", 0, 9), ("bytes=-10", 90, 99), ("bytes=95-", 95, 99),
    ("bytes=99-200", 99, 99),  # an end past the last byte is the last byte
    ("Bytes=0-0", 0, 0)])
async def test_one_satisfiable_range_is_a_206_with_our_etag(
        served: tuple[TestClient, str], range_header: str, first: int, last: int) -> None:
    status, got, headers = await fetch(served, Range=range_header)
    assert (status, got, headers["Content-Range"], headers["ETag"]) == (
        206, VIDEO[first:last + 1], f"bytes {first}-{last}/100", ETAG)


@pytest.mark.parametrize("range_header", ["bytes=-0", "bytes=100-", "bytes=100-200"])
async def test_an_unsatisfiable_range_is_a_416_with_our_etag(served: tuple[TestClient, str], range_header: str) -> None:
    status, got, headers = await fetch(served, Range=range_header)
    assert (status, got, headers["Content-Range"], headers["ETag"]) == (416, b"", "bytes */100", ETAG)


@pytest.mark.parametrize("range_header", [
    "bytes=0-0,5-9", "bytes=0-4, 6-9", "bytes=-5,0-1",  # several ranges: we send no multipart/byteranges
    "bytes=abc", "bytes=5-2", "bytes=-", "bytes=", "bytes 0-9", "items=0-9", "bytes=0x1-2", "bytes=１-2"])
async def test_a_range_we_do_not_serve_is_ignored_and_the_whole_video_sent(
        served: tuple[TestClient, str], range_header: str) -> None:
    status, got, headers = await fetch(served, Range=range_header)
    assert (status, got, headers["ETag"]) == (200, VIDEO, ETAG)
    assert "Content-Range" not in headers


async def test_if_range_serves_the_part_only_for_our_etag(served: tuple[TestClient, str]) -> None:
    status, got, headers = await fetch(served, Range="bytes=0-9", **{"If-Range": ETAG})
    assert (status, got, headers["ETag"]) == (206, VIDEO[:10], ETAG)
    for stale in ('"stale"', f"W/{ETAG}", "Tue, 01 Jan 2999 00:00:00 GMT"):
        status, got, headers = await fetch(served, Range="bytes=0-9", **{"If-Range": stale})
        assert (status, got, headers["ETag"]) == (200, VIDEO, ETAG), stale


async def test_the_whole_video_and_a_head_carry_our_etag(served: tuple[TestClient, str]) -> None:
    status, got, headers = await fetch(served)
    assert (status, got, headers["ETag"], headers["Accept-Ranges"]) == (200, VIDEO, ETAG, "bytes")
    status, got, headers = await fetch(served, "HEAD", Range="bytes=0-9")  # Range means something for GET only
    assert (status, got, headers["ETag"], headers["Content-Length"]) == (200, b"", ETAG, "100")


async def test_conditions_are_checked_against_our_etag(served: tuple[TestClient, str]) -> None:
    status, got, headers = await fetch(served, **{"If-None-Match": f'"other", {ETAG}'})
    assert (status, got, headers["ETag"]) == (304, b"", ETAG)
    # The tag decides, not the date that comes with it (a browser sends both).
    later = "Tue, 01 Jan 2999 00:00:00 GMT"
    status, got, _ = await fetch(served, **{"If-None-Match": '"other"', "If-Modified-Since": later})
    assert (status, got) == (200, VIDEO)
    status, got, headers = await fetch(served, Range="bytes=0-9", **{"If-Match": ETAG})
    assert (status, got, headers["ETag"]) == (206, VIDEO[:10], ETAG)
    status, got, headers = await fetch(served, **{"If-Match": '"18eedff3af3d62d5-64"'})
    assert (status, got, headers["ETag"]) == (412, b"", ETAG)


@pytest.mark.parametrize(("method", "range_header", "if_range", "expected"), [
    ("GET", None, None, RangeUse.WHOLE),
    ("GET", "bytes=0-9", None, RangeUse.PART),
    ("GET", "bytes=10-", None, RangeUse.PART),
    ("GET", "bytes=-1", None, RangeUse.PART),
    ("GET", "bytes=5-5", None, RangeUse.PART),
    ("GET", "bytes=-0", None, RangeUse.UNSATISFIABLE),
    ("GET", "bytes=-000", None, RangeUse.UNSATISFIABLE),
    ("GET", "bytes=6-5", None, RangeUse.WHOLE),
    ("GET", "bytes=0-1,3-4", None, RangeUse.WHOLE),
    ("GET", "bytes=-0,0-1", None, RangeUse.WHOLE),
    ("GET", "bytes=0-9", ETAG, RangeUse.PART),
    ("GET", "bytes=-0", ETAG, RangeUse.UNSATISFIABLE),
    ("GET", "bytes=-0", '"stale"', RangeUse.WHOLE),
    ("GET", "bytes=0-9", '"stale"', RangeUse.WHOLE),
    ("GET", "bytes=0-9", "", RangeUse.WHOLE),
    ("HEAD", "bytes=0-9", None, RangeUse.WHOLE),
    ("HEAD", "bytes=-0", None, RangeUse.WHOLE)])
def test_range_use(method: str, range_header: str | None, if_range: str | None, expected: RangeUse) -> None:
    assert range_use(method, range_header, if_range, ETAG) is expected


@pytest.mark.parametrize(("if_match", "if_none_match", "expected"), [
    (None, None, None),
    (ETAG, None, None), ("*", None, None), (f'"a", {ETAG}', None, None),
    (f"W/{ETAG}", None, 412),  # If-Match compares strongly
    ('"a"', None, 412), ("", None, 412),
    (None, ETAG, 304), (None, f"W/{ETAG}", 304), (None, "*", 304), (None, f' "a" ,{ETAG} ', 304),
    (None, '"a"', None), (None, ETAG[:-1], None),
    ('"a"', ETAG, 412)])  # If-Match first
def test_precondition(if_match: str | None, if_none_match: str | None, expected: int | None) -> None:
    assert precondition(if_match, if_none_match, ETAG) == expected
