"""The video store on any S3-compatible object store (AWS S3, MinIO, Ceph, R2, ...), via obstore;
:func:`open_bucket` builds the client the upload store (:mod:`connectors.storage.s3_uploads`) shares.

Layout in the bucket (under the optional prefix): ``videos/<job_id>`` (the bytes, with their
Content-Type) and ``records/<job_id>.json``. Uploads stream in multipart chunks, so a video is
never held in memory whole; a failed upload is aborted by obstore and leaves no object.

obstore rather than aiobotocore: one small Rust-backed dependency with a typed, native async
API (streamed multipart put from an async iterator, streamed get), and no botocore pin that
would have to agree with the one moto (the test server) brings. Installed by the ``s3`` extra.
"""
from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from connectors.storage.base import VideoRecord, check_key
from floodgate.errors import ConfigError, StorageError

PART_SIZE = 8 * 1024 * 1024


class S3VideoStore:
    """Videos in ``bucket`` at ``endpoint`` (empty: AWS); see :func:`open_bucket`."""

    def __init__(self, *, bucket: str, endpoint: str = "", region: str = "", access_key_id: str = "",
                 secret_access_key: str = "", prefix: str = "") -> None:
        self._store = open_bucket(bucket=bucket, endpoint=endpoint, region=region, access_key_id=access_key_id,
                                  secret_access_key=secret_access_key, prefix=prefix)

    async def record(self, job_id: str) -> VideoRecord | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = await obstore.get_async(self._store, f"records/{check_key(job_id)}.json")
            data = await result.bytes_async()
        except (NotFoundError, FileNotFoundError):  # obstore raises the builtin for a missing object
            return None
        except Exception as exc:
            raise wrap("read the record of", job_id, exc) from exc
        return VideoRecord.decode(bytes(data))

    async def put_video(self, job_id: str, chunks: AsyncIterable[bytes], content_type: str,
                        record: Callable[[], VideoRecord] | None = None) -> None:
        await self._put_bytes(job_id, chunks, content_type)
        if record is not None:
            await self.put_record(record())

    async def _put_bytes(self, job_id: str, chunks: AsyncIterable[bytes], content_type: str) -> None:
        import obstore

        path = f"videos/{check_key(job_id)}"
        try:
            await obstore.put_async(self._store, path, chunks, attributes={"Content-Type": content_type},
                                    chunk_size=PART_SIZE, max_concurrency=2)
        except StorageError:
            raise
        except Exception as exc:
            # Our own refusal (too large, not a video) raised inside the iterator comes back wrapped.
            cause = _own_cause(exc)
            if cause is not None:
                raise cause from exc
            raise wrap("store the video of", job_id, exc) from exc

    async def put_record(self, record: VideoRecord) -> None:
        import obstore

        try:
            await obstore.put_async(self._store, f"records/{check_key(record.job_id)}.json", record.encode(),
                                    attributes={"Content-Type": "application/json"})
        except Exception as exc:
            raise wrap("store the record of", record.job_id, exc) from exc

    async def open(self, job_id: str) -> AsyncIterator[bytes]:
        import obstore

        try:
            result = await obstore.get_async(self._store, f"videos/{check_key(job_id)}")
            async for chunk in result.stream(min_chunk_size=256 * 1024):
                yield bytes(chunk)
        except StorageError:
            raise
        except Exception as exc:
            raise wrap("read the video of", job_id, exc) from exc

    async def sync(self) -> None:
        return None  # an object the store answered for is durable already

    def local_path(self, job_id: str) -> Path | None:
        return None

    async def close(self) -> None:
        return None


def open_bucket(*, bucket: str, endpoint: str = "", region: str = "", access_key_id: str = "",
                secret_access_key: str = "", prefix: str = "", patience: float | None = None) -> Any:
    """The obstore client of ``bucket`` at ``endpoint`` (empty: AWS), shared by the video and the
    upload stores. Credentials are passed in, never read from the environment behind the
    settings' back. ``patience``: seconds a request may take, retries included (None: obstore's
    retries and a 120 s timeout, for the copier, which nobody waits on). ``Any``: obstore is an
    optional extra, imported only here."""
    if not bucket:
        raise ConfigError("FLOODGATE_VIDEO_S3_BUCKET is required when FLOODGATE_VIDEO_STORE=s3")
    try:
        from obstore.store import S3Store
    except ImportError as exc:  # the s3 extra is not installed
        raise ConfigError("FLOODGATE_VIDEO_STORE=s3 needs obstore: pip install 'floodgate[s3]'") from exc
    config: dict[str, Any] = {"region": region or "us-east-1"}
    if endpoint:
        config["endpoint"] = endpoint
        # Self-hosted stores answer on the path, not on bucket sub-domains.
        config["virtual_hosted_style_request"] = False
    if access_key_id:
        config["access_key_id"] = access_key_id
        config["secret_access_key"] = secret_access_key
    client = {"allow_http": endpoint.startswith("http://"), "timeout": timedelta(seconds=patience or 120),
              "connect_timeout": timedelta(seconds=min(10.0, patience or 10.0))}
    # A person waits on an upload's request: two retries within the patience, then a 503.
    retry = None if patience is None else {"max_retries": 2, "retry_timeout": timedelta(seconds=patience)}
    return S3Store(bucket, prefix=prefix.strip("/") or None, config=config,  # type: ignore[arg-type]
                   client_options=client, retry_config=retry)  # type: ignore[arg-type]


def _own_cause(exc: BaseException) -> StorageError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, StorageError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def wrap(doing: str, what: str, exc: Exception) -> StorageError:
    """``exc`` from obstore as a :class:`StorageError`, always retriable: whatever the store
    answers is the store's state, not the video's. That includes a refusal of our credentials
    (401/403: AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch; ExpiredToken comes as a
    400): keys are rotated and policies changed while we run, and a copy recorded as refused for
    it would be lost for good once the credentials work again."""
    return StorageError(f"S3 store: cannot {doing} {what}: {type(exc).__name__}: {exc}", retriable=True)


__all__ = ["S3VideoStore", "open_bucket", "wrap"]
