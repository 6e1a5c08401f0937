"""Where copied videos are kept: a local directory (default) or an S3-compatible bucket.

:func:`build_store` picks one from the settings; :mod:`connectors.storage.fetch` streams a video
from a provider's (untrusted) URL through the SSRF guard.
"""
from __future__ import annotations

from connectors.storage.base import VideoRecord, VideoStore, check_key
from connectors.storage.local import LocalVideoStore
from floodgate.settings import Settings


def build_store(settings: Settings) -> VideoStore | None:
    """The store ``FLOODGATE_VIDEO_STORE`` names; None for ``off`` (results keep the provider's URL)."""
    kind = settings.video_store
    if kind == "off":
        return None
    if kind == "s3":
        from connectors.storage.s3 import S3VideoStore

        return S3VideoStore(bucket=settings.video_s3_bucket, endpoint=settings.video_s3_endpoint,
                            region=settings.video_s3_region, access_key_id=settings.video_s3_access_key_id,
                            secret_access_key=settings.video_s3_secret_access_key.reveal(),
                            prefix=settings.video_s3_prefix)
    return LocalVideoStore(settings.video_dir_path)


__all__ = ["LocalVideoStore", "VideoRecord", "VideoStore", "build_store", "check_key"]
