"""Signed, expiring links to the videos Floodgate keeps: ``/v1/videos/{job_id}?expires=…&sig=…``.

Pure: no I/O, the clock passed in. The link is the credential (a browser or a phone's video
player cannot send the job's bearer token), so it has to be unguessable and short-lived:

* ``sig`` is base64url HMAC-SHA256 over ``"floodgate-video\\n<job_id>\\n<expires>"`` with the link
  key; without the key no link can be made, and one link says nothing about another's.
* ``expires`` is a Unix time in seconds inside the signed text, so it cannot be stretched.
* checking compares in constant time, and looks at the signature before the expiry: a forged
  link learns nothing, not even whether it would have expired.

The key comes from ``FLOODGATE_VIDEO_LINK_SECRET`` or, when that is empty, is derived from
``FLOODGATE_SECRET`` (which every process of a deployment shares), so any API instance can check
a link another made.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote

_DOMAIN = b"floodgate-video"
_KEY_DOMAIN = b"floodgate video links"
_SIG_CHARS = 43  # base64url of 32 bytes, unpadded
MAX_EXPIRES_DIGITS = 12  # seconds until the year 33658: longer is not a time we made


class LinkVerdict(Enum):
    """Why a link is refused (or ``VALID``)."""

    VALID = "valid"
    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"


def link_key(link_secret: str, server_secret: str) -> bytes:
    """The HMAC key: ``link_secret`` when set, else one derived from the server secret (kept
    apart from job tokens by its own domain, so a token never doubles as a link)."""
    if link_secret:
        return link_secret.encode("utf-8")
    return hmac.new(server_secret.encode("utf-8"), _KEY_DOMAIN, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class VideoLinks:
    """Makes and checks video links. ``ttl``: seconds a link stays valid after it was made."""

    key: bytes
    ttl: float = 3600.0

    def signature(self, job_id: str, expires: int) -> str:
        message = b"\n".join((_DOMAIN, job_id.encode("utf-8"), str(expires).encode("ascii")))
        digest = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def expiry(self, now: float) -> int:
        """The ``expires`` of a link made at ``now``."""
        return math.ceil(now + self.ttl)

    def path(self, job_id: str, now: float) -> str:
        """``/v1/videos/<job_id>?expires=…&sig=…`` for a link made at ``now``."""
        expires = self.expiry(now)
        return f"/v1/videos/{quote(job_id, safe='')}?expires={expires}&sig={self.signature(job_id, expires)}"

    def url(self, base_url: str, job_id: str, now: float) -> str:
        return base_url.rstrip("/") + self.path(job_id, now)

    def check(self, job_id: str, expires: str | None, sig: str | None, now: float) -> LinkVerdict:
        """Whether the query parameters of a request for ``job_id`` at ``now`` make a valid link."""
        if (expires is None or sig is None or not expires.isascii() or not expires.isdigit()
                or len(expires) > MAX_EXPIRES_DIGITS or len(sig) != _SIG_CHARS):
            return LinkVerdict.MALFORMED
        expected = self.signature(job_id, int(expires))
        if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii", "replace")):
            return LinkVerdict.FORGED
        if int(expires) <= now:
            return LinkVerdict.EXPIRED
        return LinkVerdict.VALID


__all__ = ["MAX_EXPIRES_DIGITS", "LinkVerdict", "VideoLinks", "link_key"]
