"""``POST /v1/uploads`` and ``GET /v1/uploads/{name}``: the small image store behind the
generation page's selfie.

A job carries its image as ``input.image_url``, a URL the provider fetches; a user's browser has a
file, not a URL. The page sends the file here (the raw bytes, ``Content-Type: image/jpeg``,
``image/png`` or ``image/webp``), gets back a URL on this API and puts it in the job. What is
checked: the API key (as for ``POST /v1/jobs``), the size (``FLOODGATE_UPLOAD_MAX_BYTES``, read
incrementally) and the kind, by magic bytes (:mod:`floodgate.images`); the store as a whole
holds at most ``FLOODGATE_UPLOAD_MAX_TOTAL_BYTES`` (503 past it), so anonymous uploads on an open
API cannot fill the disk. What is served: only names
this store made (192 random bits each), from its own directory, as the image type they were
stored as, with ``nosniff`` and a policy that runs nothing; no listing. Images older than
``FLOODGATE_UPLOAD_TTL`` are not served, and are deleted by a sweep (on upload, at most once a
minute).

Where they live follows ``FLOODGATE_VIDEO_STORE`` (:func:`connectors.storage.build_upload_store`):
with ``s3``, ``uploads/<name>`` in the video bucket, so every API process serves every upload;
otherwise ``<cache_dir>/api/<topic prefix>/uploads/``, which API processes that should all serve
them need on shared storage. A store that cannot be reached answers 503 with Retry-After.
"""
from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from connectors.storage import UploadStore, build_upload_store
from connectors.storage.uploads import SWEEP_EVERY
from floodgate import images
from floodgate.api.common import API_KEY_CHALLENGE, BodyTooLarge, Deps, base_url, json_response, read_bounded, too_large
from floodgate.api.ingress import tenant_for
from floodgate.errors import Problem, StorageError
from floodgate.problems import NOT_FOUND, UNAUTHORIZED, VALIDATION, problem_response

log = logging.getLogger(__name__)

STORE_RETRY_AFTER = 5
"""Seconds a client is told to wait when the store cannot be reached (an outage, we hope a short one)."""
SERVED_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                  "Cache-Control": "private, max-age=3600"}
"""Sent with every image beside its Content-Type: never sniffed as anything else, never run."""


class Uploads:
    def __init__(self, deps: Deps, store: UploadStore | None = None) -> None:
        self.deps = deps
        settings = deps.settings
        self.store = store if store is not None else build_upload_store(settings)
        self.limit = settings.upload_max_bytes
        self.api_keys = settings.api_key_map

    def _refuse_key(self, request: web.Request) -> web.Response | None:
        if not self.api_keys:
            return None
        api_key = request.headers.get("X-API-Key")
        if not api_key:
            return problem_response(401, "Unauthorized", type_=UNAUTHORIZED, detail="X-API-Key header required",
                                    headers=API_KEY_CHALLENGE)
        if tenant_for(api_key, self.api_keys) is None:
            return problem_response(403, "Forbidden", type_=UNAUTHORIZED, detail="unknown API key")
        return None

    async def create(self, request: web.Request) -> web.Response:
        refused = self._refuse_key(request)
        if refused is not None:
            return refused
        wanted = {k.content_type: k for k in images.KINDS}
        if request.content_type not in wanted:
            return _not_an_image("send the image itself with Content-Type image/jpeg, image/png or image/webp",
                                 Problem("Content-Type", "must be image/jpeg, image/png or image/webp"))
        try:
            data = await read_bounded(request, self.limit)
        except BodyTooLarge as exc:
            return too_large(exc.limit)
        kind = images.sniff(data[:images.SNIFF_BYTES])
        if kind is None:
            why = "the body is not a JPEG, PNG or WebP image"
            return _not_an_image(why, Problem("body", why))
        if kind is not wanted[request.content_type]:
            why = f"the body is a {kind.content_type} image, not {request.content_type}"
            return _not_an_image(why, Problem("body", why))
        now = self.deps.clock()
        try:
            if self.store.sweep_due(now):
                removed = await self.store.expire(now)
                if removed:
                    log.info("upload store: %d expired images deleted", removed)
            # Reserved before the save, not checked: uploads being saved at once each hold their share.
            if not self.store.reserve(len(data)):
                return problem_response(503, "Service Unavailable", detail="the upload store is full; retry later",
                                        headers={"Retry-After": str(int(SWEEP_EVERY))})
            try:
                name = await self.store.save(data, kind)
            finally:
                self.store.release(len(data))
        except StorageError as exc:
            return _unavailable(exc)
        url = f"{base_url(request, self.deps.settings)}/v1/uploads/{name}"
        body = {"url": url, "content_type": kind.content_type, "bytes": len(data),
                "expires_in": int(self.store.ttl)}
        return json_response(body, status=201, headers={"Location": url})

    async def read(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        kind = images.kind_of_name(name)
        if kind is None:  # not a name this store makes: refused before any file or request
            return _no_such_upload()
        try:
            found = await self.store.load(name, self.deps.clock())
        except StorageError as exc:
            return _unavailable(exc)
        if found is None:
            return _no_such_upload()
        headers = {"Content-Type": kind.content_type, **SERVED_HEADERS}
        if isinstance(found, Path):
            return web.FileResponse(found, headers=headers)
        return web.Response(body=found, headers=headers)


def _no_such_upload() -> web.Response:
    return problem_response(404, "Not Found", type_=NOT_FOUND, detail="no such upload")


def _unavailable(exc: StorageError) -> web.Response:
    log.warning("upload store: %s", exc)
    return problem_response(503, "Service Unavailable", detail="the upload store cannot be reached; retry later",
                            headers={"Retry-After": str(STORE_RETRY_AFTER)})


def _not_an_image(why: str, at_fault: Problem) -> web.Response:
    """415: ``at_fault`` names the ``Content-Type`` header when that is not an image type we store,
    else the body, whose first bytes are not what it says."""
    return problem_response(415, "Unsupported Media Type", type_=VALIDATION, detail=why, errors=[at_fault])


def add_routes(app: web.Application, deps: Deps, store: UploadStore | None = None) -> Uploads:
    uploads = Uploads(deps, store)
    app.router.add_post("/v1/uploads", uploads.create)
    app.router.add_get("/v1/uploads/{name}", uploads.read, allow_head=False)
    return uploads


__all__ = ["Uploads", "add_routes"]
