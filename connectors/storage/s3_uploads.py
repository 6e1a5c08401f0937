"""The upload store in the video store's S3 bucket, so every API process serves every upload.

Objects live at ``uploads/<name>`` (under the bucket's prefix) with their Content-Type. An image
is small (``FLOODGATE_UPLOAD_MAX_BYTES``), so it is put and read back whole in one request. Its
age is the object's last-modified time: a read past the time to live answers None even before a
sweep deletes the object, and a sweep lists ``uploads/``, deletes what expired in one batch and
counts the rest, other processes' uploads included, into ``used``.
"""
from __future__ import annotations

from typing import Any

from connectors.storage.s3 import open_bucket, wrap
from connectors.storage.uploads import UploadBudget
from floodgate import images

PREFIX = "uploads/"
PATIENCE = 10.0
"""Seconds an upload's (or an image read's) request to the bucket may take, retries included: a
person waits on the first, a provider's fetch on the second; past it the API answers 503."""


class S3UploadStore(UploadBudget):
    """Images in ``bucket`` (see :func:`connectors.storage.s3.open_bucket` for ``bucket_options``)."""

    def __init__(self, ttl: float, max_total: int, **bucket_options: Any) -> None:
        super().__init__(ttl, max_total)
        self._store = open_bucket(**bucket_options, patience=PATIENCE)

    async def save(self, data: bytes, kind: images.ImageKind) -> str:
        import obstore

        name = images.new_name(kind)
        try:
            await obstore.put_async(self._store, PREFIX + name, data, attributes={"Content-Type": kind.content_type})
        except Exception as exc:
            raise wrap("store the upload", name, exc) from exc
        self._saved(len(data))
        return name

    async def load(self, name: str, now: float) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        if images.kind_of_name(name) is None:  # not a name we made: no request at all
            return None
        try:
            result = await obstore.get_async(self._store, PREFIX + name)
            # The age is known from the response's headers, before the body is read.
            if images.expired(result.meta["last_modified"].timestamp(), now, self.ttl):
                return None
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):  # obstore raises the builtin for a missing object
            return None
        except Exception as exc:
            raise wrap("read the upload", name, exc) from exc

    async def expire(self, now: float) -> int:
        import obstore

        self._swept(now)
        mark = self._listing()  # uploads saved while the listing runs (awaits) are added to what it counts
        try:
            seen = [(meta["path"], meta["last_modified"].timestamp(), meta["size"])
                    async for chunk in obstore.list(self._store, PREFIX, chunk_size=1000) for meta in chunk]
            doomed, used = images.sort_out(seen, now, self.ttl)
            if doomed:
                await obstore.delete_async(self._store, doomed)  # batched: up to 1000 keys a request
        except Exception as exc:
            raise wrap("sweep", PREFIX, exc) from exc
        self._counted(used, mark)
        return len(doomed)


__all__ = ["S3UploadStore"]
