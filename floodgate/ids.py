"""Job ids, idempotent job ids, job access tokens and deterministic event ids.

A job id is ``job_`` + 26 lower-case Crockford base32 characters holding 128
bits: a 48-bit millisecond timestamp then 80 random bits (ULID layout), so
ids sort by creation time across milliseconds. Ids derived from an
Idempotency-Key use the same format with a zero timestamp: they carry no
time, sort before every time-based id, and can never collide with one.

Every HMAC input is domain-separated and length-prefixed, so one secret can
serve both purposes and ``("ab", "c")`` never hashes like ``("a", "bc")``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time

from floodgate.errors import ConfigError

JOB_PREFIX = "job_"
EVENT_PREFIX = "evt_"
MIN_SECRET_BYTES = 16

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -1, -10))  # 26 characters = 130 bits; the top 2 are always zero
_FROM_CROCKFORD = {c: i for i, c in enumerate(_CROCKFORD)}
_JOB_ID = re.compile(r"job_[0-7][0-9a-hjkmnp-tv-z]{25}")
_MAX_MS = (1 << 48) - 1


def new_job_id(now_ms: int | None = None) -> str:
    """A fresh job id: current (or given) epoch milliseconds + 80 bits from :mod:`secrets`."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"timestamp {ms} does not fit in 48 bits")
    return JOB_PREFIX + _encode128((ms << 80) | secrets.randbits(80))


def job_id_for_key(secret: bytes, tenant: str, idempotency_key: str) -> str:
    """The job id an Idempotency-Key maps to for ``tenant``: deterministic, no storage needed.

    80 bits of HMAC-SHA256 under ``secret``; a zero timestamp marks it as keyed.
    Raises :class:`ConfigError` for a secret shorter than 16 bytes.
    """
    mac = _mac(secret, b"floodgate/job-id-for-key/v1", tenant, idempotency_key)
    return JOB_PREFIX + _encode128(int.from_bytes(mac[:10], "big"))


def job_token(secret: bytes, job_id: str) -> str:
    """A bearer token granting access to one job: base64url (no padding) HMAC-SHA256, 256 bits.

    Raises :class:`ConfigError` for a secret shorter than 16 bytes.
    """
    mac = _mac(secret, b"floodgate/job-token/v1", job_id)
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def check_token(secret: bytes, job_id: str, token: object) -> bool:
    """True if ``token`` is :func:`job_token` for ``job_id``; compares in constant time."""
    if not isinstance(token, str):
        return False
    expected = job_token(secret, job_id).encode("ascii")
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))


def event_id(*parts: str | int) -> str:
    """A deterministic event id from its identifying parts, e.g. ``event_id(job_id, "queued", attempt)``.

    Replaying the same input yields the same id, so consumers can drop duplicates.
    ``"1"`` and ``1`` give the same id.
    """
    digest = hashlib.sha256(_frame(b"floodgate/event-id/v1", *(str(p) for p in parts))).digest()
    return EVENT_PREFIX + _encode128(int.from_bytes(digest[:16], "big"))


def is_job_id(value: object) -> bool:
    """True if ``value`` has the job id format."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def job_id_time(job_id: str) -> int:
    """The epoch milliseconds in a job id (0 for ids from :func:`job_id_for_key`).

    Raises ``ValueError`` for a string that is not a job id.
    """
    if not is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    value = 0
    for char in job_id[len(JOB_PREFIX) :]:
        value = (value << 5) | _FROM_CROCKFORD[char]
    return value >> 80


def _encode128(value: int) -> str:
    # Ten bits (two characters) per lookup: base64.b32encode is pure Python and twice as slow.
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def _mac(secret: bytes, domain: bytes, *parts: str) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"id secret must be at least {MIN_SECRET_BYTES} bytes")
    return hmac.digest(secret, _frame(domain, *parts), "sha256")  # OpenSSL's one-shot: ~5x hmac.new


def _frame(domain: bytes, *parts: str) -> bytes:
    out = bytearray(domain)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


__all__ = [
    "EVENT_PREFIX",
    "JOB_PREFIX",
    "check_token",
    "event_id",
    "is_job_id",
    "job_id_for_key",
    "job_id_time",
    "job_token",
    "new_job_id",
]
