"""Standard Webhooks signing (symmetric ``v1``, HMAC-SHA256), pure: no I/O, clock injected.

Signed content is ``f"{msg_id}.{timestamp}."`` followed by the raw body bytes, exactly as
sent; re-serialised JSON would not verify. Headers are ``webhook-id``,
``webhook-timestamp`` (integer unix seconds of this attempt) and ``webhook-signature`` (a
space-separated list of ``v1,<base64>`` entries, so a sender can sign with an old and a new
key while a secret rotates).

Secrets: ``whsec_<base64>`` means "the HMAC key is the base64-decoded part", as in the
Standard Webhooks reference libraries (Replicate and OpenAI hand out such secrets). Any other
string is used as raw UTF-8 bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Iterable, Mapping

from floodgate.errors import ConfigError, WebhookVerificationError
from floodgate.headers import lowered as lowered_headers

SECRET_PREFIX = "whsec_"
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
DEFAULT_TOLERANCE = 300.0

__all__ = [
    "DEFAULT_TOLERANCE",
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SECRET_PREFIX",
    "new_secret",
    "secret_key",
    "sign",
    "signature_headers",
    "verify",
]


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key for ``secret``. Raises ``ConfigError`` for a ``whsec_`` secret that is not base64."""
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError("webhook secret has the whsec_ prefix but is not valid base64") from exc
    return secret.encode("utf-8")


def new_secret(nbytes: int = 32) -> str:
    """A fresh random ``whsec_`` secret (the spec asks for 24-64 random bytes)."""
    if not 24 <= nbytes <= 64:
        raise ValueError("nbytes must be between 24 and 64")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` for this message id and timestamp."""
    digest = _digest(secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret: str | bytes, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt made at ``now`` (unix seconds)."""
    timestamp = int(now)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secret, msg_id, timestamp, body),
    }


def _candidates(header: str) -> Iterable[bytes]:
    """Decoded ``v1`` signatures in the header; other schemes and junk entries are skipped."""
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1":
            continue
        try:
            yield base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check one webhook delivery; return ``None`` if it is authentic and fresh.

    Raises ``WebhookVerificationError`` whose message starts with one of: ``missing header``,
    ``bad timestamp format``, ``timestamp too old``, ``timestamp too new``,
    ``no matching signature``. Raises ``ConfigError`` if ``secret`` itself is malformed.
    """
    lowered = lowered_headers(headers)
    missing = [h for h in (HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE) if not lowered.get(h)]
    if missing:
        raise WebhookVerificationError(f"missing header: {', '.join(missing)}")
    msg_id = lowered[HEADER_ID]
    raw_ts = lowered[HEADER_TIMESTAMP].strip()
    # Only plain digits: int() alone would also accept "+1", "1_000" or " 1 ", which no sender emits.
    if not (raw_ts.isascii() and raw_ts.isdigit()):
        raise WebhookVerificationError(f"bad timestamp format: {raw_ts[:32]!r}")
    timestamp = int(raw_ts)
    if now - timestamp > tolerance:
        raise WebhookVerificationError(f"timestamp too old: {timestamp} is more than {tolerance:g}s before {int(now)}")
    if timestamp - now > tolerance:
        raise WebhookVerificationError(f"timestamp too new: {timestamp} is more than {tolerance:g}s after {int(now)}")
    expected = _digest(secret_key(secret), msg_id, timestamp, body)
    # Check every entry (no early exit) so timing does not reveal which entry matched.
    matched = False
    for candidate in _candidates(lowered[HEADER_SIGNATURE]):
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature")
