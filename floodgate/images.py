"""Uploaded images: what kind a file is, by its first bytes, the names the upload store gives
them and how long they live; pure (the stores, local or S3, do the I/O and ask these rules).

A file's kind is read from its magic bytes, never from the name or the Content-Type the client
sent, so a script or an HTML page renamed ``.jpg`` is refused. A stored name carries 192 random
bits: the name is the only thing that lets anyone (a provider fetching the selfie) read the file,
so it must not be guessable, and its strict shape lets the store refuse any other path outright.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


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


def expired(modified_at: float, now: float, ttl: float) -> bool:
    """Whether an image last written at ``modified_at`` (epoch seconds: a file's mtime, an
    object's last-modified) is past its ``ttl`` at ``now``. Asked on every read as well as by
    the sweep, so an image is gone at its time even if no sweep has deleted it yet."""
    return now - modified_at > ttl


def sort_out(entries: Iterable[tuple[T, float, int]], now: float, ttl: float) -> tuple[list[T], int]:
    """A sweep's decision over ``(key, modified_at, size)`` entries: the keys to delete (past
    their ``ttl``) and the bytes the rest hold, which become the store's ``used``."""
    doomed: list[T] = []
    kept = 0
    for key, modified_at, size in entries:
        if expired(modified_at, now, ttl):
            doomed.append(key)
        else:
            kept += size
    return doomed, kept


__all__ = ["JPEG", "KINDS", "PNG", "SNIFF_BYTES", "WEBP", "ImageKind", "expired", "kind_of_name", "new_name", "sniff",
           "sort_out"]
