"""Standard Webhooks signing (symmetric ``v1``, HMAC-SHA256), pure: no I/O, clock injected.

Signed content is ``f"{msg_id}.{timestamp}."`` followed by the raw body bytes, exactly as
sent; re-serialised JSON would not verify. Headers are ``webhook-id``,
``webhook-timestamp`` (integer unix seconds of this attempt) and ``webhook-signature`` (a
space-separated list of ``v1,<base64>`` entries, so a sender can sign with an old and a new
key while a secret rotates).

Rotation: a receiver holds a ``SecretRing`` (the current secret and, until a configured instant,
the previous one) and accepts a delivery signed with either; a sender signs with every secret of
its ring, so a receiver that still knows only the old one verifies as well. After the instant the
previous secret is refused.

Secrets: ``whsec_<base64>`` means "the HMAC key is the base64-decoded part", as in the
Standard Webhooks reference libraries (Replicate and OpenAI hand out such secrets). Any other
string is used as raw UTF-8 bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import secrets as _secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from floodgate.errors import ConfigError, WebhookVerificationError
from floodgate.headers import lowered as lowered_headers

SECRET_PREFIX = "whsec_"
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
DEFAULT_TOLERANCE = 300.0
MAX_SIGNATURES = 8
"""Signature entries verified per delivery; a sender rotating keys lists two or three."""
MAX_TIMESTAMP_DIGITS = 12
"""Digits a ``webhook-timestamp`` may have (unix seconds have 10 until the year 2286): a longer
one is a bad format, before ``int()``, which refuses strings past 4,300 digits with ValueError."""

__all__ = [
    "DEFAULT_TOLERANCE",
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SIGNATURES",
    "MAX_TIMESTAMP_DIGITS",
    "SECRET_PREFIX",
    "SecretRing",
    "new_secret",
    "rotation",
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


@dataclass(frozen=True)
class SecretRing:
    """The secrets that sign or verify now: ``current`` always, ``previous`` until
    ``previous_until`` (unix seconds) while a secret rotates. Build it with ``rotation``."""

    current: str | bytes = field(repr=False)
    previous: str | bytes | None = field(default=None, repr=False)
    previous_until: float | None = None

    def active(self, now: float) -> tuple[str | bytes, ...]:
        """The secrets valid at ``now``: the previous one only strictly before its end."""
        if self.previous is not None and self.previous_until is not None and now < self.previous_until:
            return (self.current, self.previous)
        return (self.current,)


def rotation(current: str | bytes, previous: str | bytes | None = None,
             previous_until: str | float | None = None, *, where: str = "webhook") -> SecretRing:
    """A ``SecretRing`` from configuration (``webhook_secret``, ``previous_webhook_secret``,
    ``previous_webhook_secret_until``). ``previous_until`` is unix seconds or an ISO 8601 instant
    with its offset. Raises ``ConfigError`` (prefixed with ``where``) for a malformed secret, a
    previous secret without an end (an old secret must not stay valid for ever) or an end
    without a previous secret."""
    if not current:
        raise ConfigError(f"{where}: webhook_secret must not be empty")
    secret_key(current)
    if previous is None or previous == "":
        if previous_until is not None:
            raise ConfigError(f"{where}: previous_webhook_secret_until is set but previous_webhook_secret is not")
        return SecretRing(current)
    secret_key(previous)
    if previous_until is None:
        raise ConfigError(f"{where}: previous_webhook_secret needs previous_webhook_secret_until, "
                          "when the old secret stops being accepted")
    return SecretRing(current, previous, _instant(previous_until, f"{where}: previous_webhook_secret_until"))


def _instant(value: str | float, name: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be unix seconds or an ISO 8601 instant")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{name}: {value!r} is not an ISO 8601 instant") from exc
    if moment.tzinfo is None:
        raise ConfigError(f"{name}: {value!r} needs a UTC offset (e.g. Z)")
    return moment.timestamp()


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    # surrogateescape: a received header that is not UTF-8 arrives with its bytes escaped, and
    # those bytes, as sent, are what was signed (strict encoding would raise on them).
    signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` for this message id and timestamp."""
    digest = _digest(secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret: str | bytes | SecretRing, msg_id: str, body: bytes, now: float) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt made at ``now`` (unix seconds);
    with a ``SecretRing``, one signature per secret active at ``now``, space-separated."""
    timestamp = int(now)
    secrets_ = secret.active(now) if isinstance(secret, SecretRing) else (secret,)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
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
    secret: str | bytes | SecretRing,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check one webhook delivery; return ``None`` if it is authentic and fresh.

    With a ``SecretRing``, a signature by any secret active at ``now`` is accepted. At most
    ``MAX_SIGNATURES`` entries of the signature header are looked at, so a forged header costs a
    bounded amount of work.

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
    if not (raw_ts.isascii() and raw_ts.isdigit()) or len(raw_ts) > MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError(f"bad timestamp format: {raw_ts[:32]!r}")
    timestamp = int(raw_ts)
    if now - timestamp > tolerance:
        raise WebhookVerificationError(f"timestamp too old: {timestamp} is more than {tolerance:g}s before {int(now)}")
    if timestamp - now > tolerance:
        raise WebhookVerificationError(f"timestamp too new: {timestamp} is more than {tolerance:g}s after {int(now)}")
    secrets_ = secret.active(now) if isinstance(secret, SecretRing) else (secret,)
    expected = [_digest(secret_key(s), msg_id, timestamp, body) for s in secrets_]
    # Check every pair (no early exit) so timing does not reveal which entry or secret matched.
    matched = False
    for candidate in itertools.islice(_candidates(lowered[HEADER_SIGNATURE]), MAX_SIGNATURES):
        for digest in expected:
            matched |= hmac.compare_digest(digest, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature")
