"""The storage side's pure rules: store keys, video records, content types, the copy's retry budget,
which of the S3 store's errors may pass."""
from __future__ import annotations

import pytest
from obstore import exceptions as obstore_errors

from connectors.storage import VideoRecord, check_key
from connectors.storage.fetch import video_content_type
from connectors.storage.s3 import wrap
from floodgate.errors import StorageError
from floodgate.videos.copier import CopyPolicy


@pytest.mark.parametrize("key", ["job_01jb0000000000000000000000", "a", "A-b_9" * 25])
def test_safe_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "../etc/passwd", "a/b", "a.b", "job 1", "é", "x" * 129, "a\x00"])
def test_unsafe_keys_never_become_paths(key: str) -> None:
    with pytest.raises(StorageError) as caught:
        check_key(key)
    assert not caught.value.retriable


def test_records_round_trip_and_refuse_garbage() -> None:
    record = VideoRecord("j", "stored", at_ms=5, size=3, sha256="ab" * 32, content_type="video/mp4")
    assert VideoRecord.decode(record.encode()) == record
    for bad in (b"{", b"[]", b'{"job_id": "j", "status": "maybe", "at_ms": 1}', b'{"job_id": "j", "x": 1}'):
        with pytest.raises(StorageError):
            VideoRecord.decode(bad)


@pytest.mark.parametrize(("header", "expected"), [
    ("video/mp4", "video/mp4"), ("Video/WebM; codecs=vp9", "video/webm"),
    ("application/octet-stream", "application/octet-stream"),
    ("application/mp4", "application/mp4"), ("video/", None), ("text/html", None), ("", None), (None, None),
    ("image/png", None)])
def test_video_content_types(header: str | None, expected: str | None) -> None:
    assert video_content_type(header) == expected


def test_the_copy_retry_budget() -> None:
    policy = CopyPolicy(max_attempts=4, base_delay=1.0, max_delay=10.0, max_elapsed=60.0)
    assert policy.next_delay(1, 0.0, None, rand=0.0) == 0.5  # equal jitter: half of 1 s at least
    assert policy.next_delay(2, 0.0, None, rand=0.999) == pytest.approx(2.0, abs=0.01)
    assert policy.next_delay(1, 0.0, 30.0, rand=0.0) == 30.0  # the source's Retry-After wins when longer
    assert policy.next_delay(4, 0.0, None, rand=0.0) is None  # out of attempts
    assert policy.next_delay(1, 59.9, None, rand=0.0) is None  # past the time budget


@pytest.mark.parametrize("error", [
    obstore_errors.PermissionDeniedError("AccessDenied"),  # 403: also InvalidAccessKeyId, SignatureDoesNotMatch
    obstore_errors.UnauthenticatedError("401 Unauthorized"),
    obstore_errors.GenericError("400 ExpiredToken"),
    obstore_errors.GenericError("503 SlowDown"),
    OSError("connection refused")])
def test_every_s3_store_error_may_pass(error: Exception) -> None:
    """A refusal of our credentials is the store's outage (a key rotated, a policy changed), not
    the video's: a copy recorded as refused for it would stay lost once the credentials work."""
    wrapped = wrap("store the video of", "job_1", error)
    assert wrapped.retriable
    assert type(error).__name__ in str(wrapped) and "job_1" in str(wrapped)
