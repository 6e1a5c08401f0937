"""``GET /v1/videos/{job_id}?expires=…&sig=…``: a stored video, for whoever holds a valid link.

The link (made when the job is read, :mod:`floodgate.videolinks`) is the only credential. Its
signature is checked before the store is asked anything, so a forged link learns nothing about
which jobs exist. Answers:

* 200 with the bytes (local store: aiohttp's ``FileResponse``, with Range support; it reads the
  file in 256 KiB chunks in a thread, since uvloop, the API's loop, has no ``sendfile``; S3:
  streamed through, Range ignored);
  ``Content-Type`` as copied, ``Repr-Digest`` and ``ETag`` from the SHA-256 the copy recorded.
  That ETag is the one validator, on every answer (200, 206, 304, 412, 416): If-Match,
  If-None-Match and If-Range are checked against it here, before aiohttp (whose own ETag, the
  file's modification time and size, never shows) sees the request. As RFC 9110 (14.2) allows, a
  Range is ignored (200, the whole video) when it is malformed, asks for several ranges, or comes
  with an If-Range naming another validator; ``bytes=-0`` (a suffix of no bytes) is 416, as is a
  range starting past the end.
* 403 for a malformed, forged or expired link (the detail says which, except for a forgery).
* 307 to the provider's own copy while ours is not done yet (the job view knows the provider's URL;
  503 + ``Retry-After`` where it does not, or while the store is unreachable).
* 502 when the copy was refused for good (too large, not a video, a private address). A copy that
  failed only because its failures, each of which might have passed, outlasted the copier's retry
  budget (``VideoRecord.gave_up``) leads to the provider's own copy, as a pending one does, while
  the job view knows it; 502 where it does not. Such a request also starts the copy again where
  the copier runs in this process (at most once a minute per video, ``VideoCopier.copy_again``):
  the provider's copy expires, and ours then is the only one left.
"""
from __future__ import annotations

import base64
import enum
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from aiohttp import ETag, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from connectors.storage import VideoRecord, VideoStore
from floodgate.api.common import Deps
from floodgate.errors import StorageError, ValidationError
from floodgate.netguard import check_url_syntax
from floodgate.problems import problem_response
from floodgate.videolinks import LinkVerdict, VideoLinks

log = logging.getLogger(__name__)

LINK_REFUSED = "urn:floodgate:problem:video-link-refused"
VIDEO_PENDING = "urn:floodgate:problem:video-pending"
VIDEO_UNAVAILABLE = "urn:floodgate:problem:video-unavailable"
RETRY_AFTER_SECONDS = 5
_REFUSAL_DETAIL = {
    LinkVerdict.MALFORMED: "the link is incomplete: expires and sig are required",
    LinkVerdict.FORGED: "the link is not valid",
    LinkVerdict.EXPIRED: "the link has expired; read the job again for a fresh one",
}


class CopiesAgain(Protocol):
    """The video copier, as the video route sees it."""

    def copy_again(self, record: VideoRecord, url: str) -> bool:
        """Start a copy given up on again, in the background (when it is due)."""
        ...


class VideoServer:
    def __init__(self, deps: Deps, links: VideoLinks, store: VideoStore, copier: CopiesAgain | None = None) -> None:
        self.deps = deps
        self.links = links
        self.store = store
        self.copier = copier

    async def get_video(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        now = self.deps.clock()
        verdict = self.links.check(job_id, request.query.get("expires"), request.query.get("sig"), now)
        if verdict is not LinkVerdict.VALID:
            self.deps.metrics.video_links_refused.labels(verdict.value).inc()
            return problem_response(403, "Forbidden", type_=LINK_REFUSED, detail=_REFUSAL_DETAIL[verdict])
        try:
            record = await self.store.record(job_id)
        except StorageError as exc:
            log.warning("videos: store unreachable for %s: %s", job_id, exc)
            return _pending("the video store is not reachable right now")
        if record is None:
            # The copy is still being made (it starts once the job is complete): meanwhile the link
            # leads to the provider's own copy, which stays valid well past that (Replicate's: an
            # hour), so a player given the link at completion plays at once. 503 when not known here.
            source = await self._provider_copy(job_id)
            if source is not None:
                return _to_provider(source)
            return _pending("the video is still being copied into storage")
        if record.status != "stored":
            log.info("videos: %s was not stored: %s", job_id, record.reason)
            # A refused video (too large, not a video, a private address) is never linked to; one
            # the copier gave up on may still be at the provider, for as long as its link lives.
            source = await self._provider_copy(job_id) if record.gave_up else None
            if source is not None:
                if self.copier is not None:
                    self.copier.copy_again(record, source)
                return _to_provider(source)
            return problem_response(502, "Bad Gateway", type_=VIDEO_UNAVAILABLE,
                                    detail="the provider's video could not be copied into storage")
        # A cache may keep it no longer than the link is valid.
        max_age = max(0, math.floor(int(request.query["expires"]) - now))
        headers = _video_headers(record, max_age)
        etag = headers["ETag"]
        refused = precondition(request.headers.get(hdrs.IF_MATCH), request.headers.get(hdrs.IF_NONE_MATCH), etag)
        if refused is not None:
            return web.Response(status=refused, headers={"ETag": etag, "Cache-Control": headers["Cache-Control"]})
        path = self.store.local_path(job_id)
        if path is not None:
            use = range_use(request.method, request.headers.get(hdrs.RANGE), request.headers.get(hdrs.IF_RANGE), etag)
            if use is RangeUse.UNSATISFIABLE:
                return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{record.size}"})
            return _StoredFile(path, headers, _left_to_aiohttp(request.headers, keep_range=use is RangeUse.PART))
        response = web.StreamResponse(headers={**headers, "Content-Length": str(record.size)})
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in self.store.open(job_id):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _provider_copy(self, job_id: str) -> str | None:
        """The provider's URL of a completed job's video, from this API's job view (None if there
        is no view here, the job is not known or not complete, or the URL is not plain http(s))."""
        view = self.deps.view
        snapshot = None if view is None else await view.lookup(job_id)
        if snapshot is None or snapshot.get("status") != "completed":
            return None
        return _http_url(snapshot.get("video_url"))


class RangeUse(enum.Enum):
    """What a request's Range asks of a stored video."""

    WHOLE = "whole"
    """No Range, or one to ignore: 200 with every byte."""
    PART = "part"
    """One byte range, for ``FileResponse`` to answer (206, or 416 if it starts past the end)."""
    UNSATISFIABLE = "unsatisfiable"
    """416 whatever the size: ``bytes=-0``, the last none of its bytes."""


_BYTE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
_ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*')


def range_use(method: str, range_header: str | None, if_range: str | None, etag: str) -> RangeUse:
    """How to answer ``range_header`` for the representation whose (strong) validator is ``etag``
    (RFC 9110, 14.2 and 13.1.5). Range means something for GET only. Several ranges are ignored,
    not refused: we send no multipart/byteranges, and the whole video answers them correctly. An
    If-Range other than ``etag`` (a stale one, a weak one, a date) means the client's part
    belongs to another version: the whole of this one."""
    if range_header is None or method != "GET":
        return RangeUse.WHOLE
    if if_range is not None and if_range.strip() != etag:
        return RangeUse.WHOLE
    match = _BYTE_RANGE.fullmatch(range_header.strip())
    if match is None:  # malformed, another unit, or several ranges
        return RangeUse.WHOLE
    first, last = match.groups()
    if not first:
        if not last:  # "bytes=-"
            return RangeUse.WHOLE
        return RangeUse.UNSATISFIABLE if int(last) == 0 else RangeUse.PART
    if last and int(last) < int(first):  # invalid, so ignored rather than refused
        return RangeUse.WHOLE
    return RangeUse.PART


def precondition(if_match: str | None, if_none_match: str | None, etag: str) -> int | None:
    """412 or 304 when If-Match or If-None-Match say so for ``etag`` (RFC 9110, 13.2.2: strong
    comparison for the first, weak for the second); None to answer the request."""
    if if_match is not None and not _names(if_match, etag, weak=False):
        return 412
    if if_none_match is not None and _names(if_none_match, etag, weak=True):
        return 304  # the route answers GET and HEAD only
    return None


def _names(header: str, etag: str, *, weak: bool) -> bool:
    """Whether the entity-tag list ``header`` names ``etag`` (``*`` names any)."""
    if header.strip() == "*":
        return True
    for item in header.split(","):
        match = _ENTITY_TAG.fullmatch(item)
        if match is not None and (weak or not match.group(1)) and match.group(2) == etag:
            return True
    return False


def _left_to_aiohttp(asked: Mapping[str, str], *, keep_range: bool) -> CIMultiDict[str]:
    """The request's headers without what was answered here: aiohttp would check these validators
    against its own ETag. A date condition goes with the tag one that overrides it (13.2.2)."""
    left = CIMultiDict(asked)
    dropped = [hdrs.IF_MATCH, hdrs.IF_NONE_MATCH, hdrs.IF_RANGE] + ([] if keep_range else [hdrs.RANGE])
    if hdrs.IF_MATCH in asked:
        dropped.append(hdrs.IF_UNMODIFIED_SINCE)
    if hdrs.IF_NONE_MATCH in asked:
        dropped.append(hdrs.IF_MODIFIED_SINCE)
    for name in dropped:
        left.popall(name, None)
    return left


class _StoredFile(web.FileResponse):
    """A ``FileResponse`` that answers the request as the route left it (``asked``) and keeps our
    ETag: aiohttp sets its own (modification time and size) as it prepares, through ``etag``."""

    def __init__(self, path: Path, headers: Mapping[str, str], asked: CIMultiDict[str]) -> None:
        super().__init__(path, headers=headers)
        self._asked = asked

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return await super().prepare(request.clone(headers=self._asked))

    @property
    def etag(self) -> ETag | None:
        return super().etag

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        return None  # ours, the checksum, was set with the headers and stays


def _http_url(value: object) -> str | None:
    """``value`` if it is a plain http(s) URL (what a redirect may lead a browser to)."""
    try:
        check_url_syntax(value, field="result.video_url")
    except ValidationError:
        return None
    return value if isinstance(value, str) else None


def _to_provider(source: str) -> web.Response:
    """A redirect to the provider's own copy (which a browser must not cache: ours replaces it)."""
    return web.Response(status=307, headers={"Location": source, "Cache-Control": "no-store"})


def _pending(detail: str) -> web.Response:
    return problem_response(503, "Service Unavailable", type_=VIDEO_PENDING, detail=detail,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def _video_headers(record: VideoRecord, max_age: int) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(record.sha256)).decode("ascii")
    return {"Content-Type": record.content_type, "ETag": f'"{record.sha256}"',
            "Repr-Digest": f"sha-256=:{digest}:", "Cache-Control": f"private, max-age={max_age}",
            "X-Content-Type-Options": "nosniff"}


def add_routes(app: web.Application, deps: Deps, links: VideoLinks, store: VideoStore,
               copier: CopiesAgain | None = None) -> VideoServer:
    server = VideoServer(deps, links, store, copier)
    app.router.add_get("/v1/videos/{job_id}", server.get_video, allow_head=True)
    return server


__all__ = ["CopiesAgain", "LINK_REFUSED", "VIDEO_PENDING", "VIDEO_UNAVAILABLE", "RangeUse", "VideoServer", "add_routes",
           "precondition", "range_use"]
