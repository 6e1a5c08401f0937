"""Where copied videos and uploaded images are kept: a local directory (default) or an
S3-compatible bucket.

:func:`build_store` picks the video store from the settings, :func:`build_upload_store` the
upload store (the same bucket when ``FLOODGATE_VIDEO_STORE=s3``); :mod:`connectors.storage.fetch`
streams a video from a provider's (untrusted) URL through the SSRF guard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from connectors.storage.base import VideoRecord, VideoStore, check_key
from connectors.storage.local import LocalVideoStore
from connectors.storage.uploads import LocalUploadStore, UploadStore
from floodgate.settings import Settings


def build_store(settings: Settings) -> VideoStore | None:
    """The store ``FLOODGATE_VIDEO_STORE`` names; None for ``off`` (results keep the provider's URL)."""
    kind = settings.video_store
    if kind == "off":
        return None
    if kind == "s3":
        from connectors.storage.s3 import S3VideoStore

        return S3VideoStore(**_bucket_options(settings))
    return LocalVideoStore(settings.video_dir_path)


def build_upload_store(settings: Settings) -> UploadStore:
    """The S3 bucket of the videos when ``FLOODGATE_VIDEO_STORE=s3`` (shared by every API
    process), else :func:`upload_dir` (``off`` too: the page still needs somewhere to put a selfie)."""
    if settings.video_store == "s3":
        from connectors.storage.s3_uploads import S3UploadStore

        return S3UploadStore(settings.upload_ttl, settings.upload_max_total_bytes, **_bucket_options(settings))
    return LocalUploadStore(upload_dir(settings), settings.upload_ttl, settings.upload_max_total_bytes)


def upload_dir(settings: Settings) -> Path:
    return settings.cache_dir / "api" / (settings.topic_prefix.strip(".") or "default") / "uploads"


def _bucket_options(settings: Settings) -> dict[str, Any]:
    return {"bucket": settings.video_s3_bucket, "endpoint": settings.video_s3_endpoint,
            "region": settings.video_s3_region, "access_key_id": settings.video_s3_access_key_id,
            "secret_access_key": settings.video_s3_secret_access_key.reveal(), "prefix": settings.video_s3_prefix}


__all__ = ["LocalUploadStore", "LocalVideoStore", "UploadStore", "VideoRecord", "VideoStore", "build_store",
           "build_upload_store", "check_key", "upload_dir"]
