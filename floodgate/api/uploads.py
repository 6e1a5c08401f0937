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
stored as, with ``nosniff`` and a policy that runs nothing; no listing. Files older than
``FLOODGATE_UPLOAD_TTL`` are deleted (checked on upload, at most once a minute).

Files live under ``<cache_dir>/api/<topic prefix>/uploads/``: API processes that should all serve
them need that directory on shared storage.
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

from aiohttp import web

from floodgate import images
from floodgate.api.common import BodyTooLarge, Deps, base_url, json_response, read_bounded, too_large
from floodgate.api.ingress import tenant_for
from floodgate.errors import Problem
from floodgate.problems import NOT_FOUND, UNAUTHORIZED, VALIDATION, problem_response
from floodgate.settings import Settings

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0
"""Seconds between two sweeps of expired files (each one lists the directory)."""


def upload_dir(settings: Settings) -> Path:
    return settings.cache_dir / "api" / (settings.topic_prefix.strip(".") or "default") / "uploads"


class UploadStore:
    """Stored images in one directory; blocking file calls, run in threads by the handlers."""

    def __init__(self, root: Path, ttl: float, max_total: int = 1 << 30) -> None:
        self.root = root
        self.ttl = ttl
        self.max_total = max_total
        self.used = 0
        """Bytes held, as of the last sweep plus what was stored since."""
        self._last_sweep: float | None = None

    def has_room(self, size: int) -> bool:
        return self.used + size <= self.max_total

    def put(self, data: bytes, kind: images.ImageKind) -> str:
        """Store ``data`` under a fresh name and return the name. Written whole, then renamed, so
        a reader never sees half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        name = images.new_name(kind)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.used += len(data)
        return name

    def path(self, name: str, now: float) -> Path | None:
        """The file of a stored ``name`` still within its time to live, or None."""
        if images.kind_of_name(name) is None:
            return None
        path = self.root / name
        try:
            if now - path.stat().st_mtime > self.ttl:
                return None
        except OSError:
            return None
        return path

    def sweep(self, now: float) -> int:
        """Delete files past their time to live (and incoming files a crash left), count the bytes
        left in ``used``; how many files went."""
        self._last_sweep = now
        removed, used = 0, 0
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                stat = entry.stat()
                if now - stat.st_mtime > self.ttl:
                    os.unlink(entry.path)
                    removed += 1
                else:
                    used += stat.st_size
            except OSError:
                continue  # gone already, or not ours to remove
        self.used = used
        return removed

    def sweep_due(self, now: float) -> bool:
        return self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY


class Uploads:
    def __init__(self, deps: Deps, store: UploadStore | None = None) -> None:
        self.deps = deps
        settings = deps.settings
        self.store = store or UploadStore(upload_dir(settings), settings.upload_ttl, settings.upload_max_total_bytes)
        self.limit = settings.upload_max_bytes
        self.api_keys = settings.api_key_map

    def _refuse_key(self, request: web.Request) -> web.Response | None:
        if not self.api_keys:
            return None
        api_key = request.headers.get("X-API-Key")
        if not api_key:
            return problem_response(401, "Unauthorized", type_=UNAUTHORIZED, detail="X-API-Key header required")
        if tenant_for(api_key, self.api_keys) is None:
            return problem_response(403, "Forbidden", type_=UNAUTHORIZED, detail="unknown API key")
        return None

    async def create(self, request: web.Request) -> web.Response:
        refused = self._refuse_key(request)
        if refused is not None:
            return refused
        wanted = {k.content_type: k for k in images.KINDS}
        if request.content_type not in wanted:
            return _not_an_image(415, "send the image itself with Content-Type image/jpeg, image/png or image/webp")
        try:
            data = await read_bounded(request, self.limit)
        except BodyTooLarge as exc:
            return too_large(exc.limit)
        kind = images.sniff(data[:images.SNIFF_BYTES])
        if kind is None:
            return _not_an_image(415, "the body is not a JPEG, PNG or WebP image")
        if kind is not wanted[request.content_type]:
            return _not_an_image(415, f"the body is a {kind.content_type} image, not {request.content_type}")
        now = time.time()
        if self.store.sweep_due(now):
            removed = await asyncio.to_thread(self.store.sweep, now)
            if removed:
                log.info("upload store: %d expired images deleted", removed)
        if not self.store.has_room(len(data)):
            return problem_response(503, "Service Unavailable", detail="the upload store is full; retry later",
                                    headers={"Retry-After": str(int(SWEEP_EVERY))})
        name = await asyncio.to_thread(self.store.put, data, kind)
        url = f"{base_url(request, self.deps.settings)}/v1/uploads/{name}"
        body = {"url": url, "content_type": kind.content_type, "bytes": len(data),
                "expires_in": int(self.store.ttl)}
        return json_response(body, status=201, headers={"Location": url})

    async def read(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = await asyncio.to_thread(self.store.path, name, time.time())
        kind = images.kind_of_name(name)
        if path is None or kind is None:
            return problem_response(404, "Not Found", type_=NOT_FOUND, detail="no such upload")
        return web.FileResponse(path, headers={
            "Content-Type": kind.content_type, "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "private, max-age=3600"})


def _not_an_image(status: int, why: str) -> web.Response:
    return problem_response(status, "Unsupported Media Type", type_=VALIDATION, detail=why,
                            errors=[Problem("body", why)])


def add_routes(app: web.Application, deps: Deps, store: UploadStore | None = None) -> Uploads:
    uploads = Uploads(deps, store)
    app.router.add_post("/v1/uploads", uploads.create)
    app.router.add_get("/v1/uploads/{name}", uploads.read, allow_head=False)
    return uploads


__all__ = ["UploadStore", "Uploads", "add_routes", "upload_dir"]
