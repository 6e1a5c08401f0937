"""Uploaded images: what kind a file is, by its first bytes, and the names the upload store gives
them; pure.

A file's kind is read from its magic bytes, never from the name or the Content-Type the client
sent, so a script or an HTML page renamed ``.jpg`` is refused. A stored name carries 192 random
bits: the name is the only thing that lets anyone (a provider fetching the selfie) read the file,
so it must not be guessable, and its strict shape lets the store refuse any other path outright.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageKind:
    extension: str
    content_type: str


JPEG = ImageKind("jpg", "image/jpeg")
PNG = ImageKind("png", "image/png")
WEBP = ImageKind("webp", "image/webp")
KINDS = (JPEG, PNG, WEBP)
SNIFF_BYTES = 12
"""Bytes needed to tell the kinds apart (WebP's RIFF header is the longest)."""

_NAME = re.compile(r"img_[A-Za-z0-9_-]{32}\.(jpg|png|webp)")


def sniff(head: bytes) -> ImageKind | None:
    """The kind of image that starts with ``head`` (at least ``SNIFF_BYTES`` of it), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= SNIFF_BYTES and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def new_name(kind: ImageKind) -> str:
    """A fresh, unguessable stored name: ``img_<32 url-safe characters>.<extension>``."""
    return f"img_{secrets.token_urlsafe(24)}.{kind.extension}"


def kind_of_name(name: str) -> ImageKind | None:
    """The kind a stored name says, or None if ``name`` is not one the store could have made
    (anything with a slash, a dot too many, another length or alphabet)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return next(k for k in KINDS if k.extension == match.group(1))


__all__ = ["JPEG", "KINDS", "PNG", "SNIFF_BYTES", "WEBP", "ImageKind", "kind_of_name", "new_name", "sniff"]
