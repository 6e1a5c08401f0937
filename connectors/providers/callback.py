"""Per-job callback paths: ``{webhook_base}/{job_id}/{mac}[/{extra}]``, where ``mac`` is an HMAC of
the provider name, job id and extra under a secret only Floodgate holds. Pure. ``extra`` is what
a connector needs back from the callback that the provider's body does not carry (fal: the app
the request was queued on).

Every provider connector that takes webhooks gives the provider such a URL, so a callback names
its job by where it arrives rather than by anything in its body, and a path cannot be guessed or
moved to another job. For providers that do not sign their callbacks (Kling, RunPod) the path
is the only proof that a callback came from someone we told; it is still confirmed by a status
call before it is believed.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from floodgate.errors import ConfigError, WebhookVerificationError

MAC_HEX = 32  # 128 bits: unguessable, short enough for any provider's URL limit
MIN_SECRET_BYTES = 16
_HEX_DIGITS = frozenset("0123456789abcdef")  # what hexdigest() emits, and nothing else


def _key(secret: str) -> bytes:
    key = secret.encode("utf-8")
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(f"callback_secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def mac(secret: str, provider: str, job_id: str, extra: str = "") -> str:
    message = f"{provider}\n{job_id}" + (f"\n{extra}" if extra else "")
    return hmac.new(_key(secret), message.encode(), hashlib.sha256).hexdigest()[:MAC_HEX]


def callback_url(base: str, secret: str, provider: str, job_id: str, extra: str = "") -> str:
    """The URL a provider calls back for ``job_id``; ``base`` ends in ``/webhooks/{provider}``."""
    tail = f"/{extra}" if extra else ""
    return f"{base.rstrip('/')}/{job_id}/{mac(secret, provider, job_id, extra)}{tail}"


@dataclass(frozen=True)
class Callback:
    job_id: str
    extra: str = ""


def split(path: str) -> tuple[str, str, str]:
    """``(job_id, mac, extra)`` of a callback path, unchecked."""
    job_id, _, rest = path.strip("/").partition("/")
    given, _, extra = rest.partition("/")
    return job_id, given, extra


def check(secret: str, provider: str, path: str) -> Callback:
    """The job a callback path names; raises ``WebhookVerificationError`` unless its MAC is right."""
    job_id, given, extra = split(path)
    if not job_id or not given:
        raise WebhookVerificationError("callback path must be /{job_id}/{mac}")
    # The path is the sender's text: a MAC not of our shape is refused before comparing, and
    # the compare is of bytes (compare_digest raises TypeError on str holding non-ASCII).
    if len(given) != MAC_HEX or not set(given) <= _HEX_DIGITS:
        raise WebhookVerificationError("callback path MAC is not of the expected shape")
    if not hmac.compare_digest(mac(secret, provider, job_id, extra).encode("ascii"), given.encode("ascii")):
        raise WebhookVerificationError("callback path MAC does not match")
    return Callback(job_id, extra)


__all__ = ["Callback", "callback_url", "check", "mac", "split"]
