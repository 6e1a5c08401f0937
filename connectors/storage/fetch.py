"""Fetching a provider's output video: untrusted URL in, checked bytes out.

A provider's ``video_url`` is input we did not write, so it gets the SSRF guard that outgoing
webhooks get: the URL is checked before every request (an IP literal never reaches a resolver),
the session's resolver drops private and link-local addresses at connection time (DNS
rebinding), and redirects are followed by hand, at most ``max_redirects``, each new location
checked the same way (aiohttp following them itself would connect to an IP literal unchecked).

The body is streamed: counted against ``max_bytes`` as it arrives (a lying or absent
Content-Length changes nothing), hashed with SHA-256, and refused unless its Content-Type is a
video type. Errors are :class:`StorageError` whose ``retriable`` says whether another attempt may
succeed (timeouts, 5xx, 408, 429) or not (4xx, too large, not a video, a forbidden address).
Their text names the host, never the URL: a provider's video URL is signed in its query
(``X-Amz-Signature``), and the text is logged and kept as a failed copy's reason.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urljoin, urlsplit

import aiohttp

from floodgate.errors import StorageError, ValidationError
from floodgate.netguard import ForbiddenDestination, GuardedResolver, IPAddress, check_url_target
from floodgate.throttle import parse_retry_after

CHUNK = 256 * 1024
_RETRIABLE_4XX = {408, 425, 429}
_VIDEO_TYPES_BESIDES_VIDEO = {"application/mp4", "application/octet-stream"}


def video_content_type(header: str | None) -> str | None:
    """The media type if it can be a video (``video/*``, ``application/mp4``, or the generic
    ``application/octet-stream`` object stores answer with), else None."""
    media = (header or "").split(";", 1)[0].strip().lower()
    if media.startswith("video/") and len(media) > len("video/"):
        return media
    return media if media in _VIDEO_TYPES_BESIDES_VIDEO else None


class Download:
    """An open download: its media type, and its body as one-shot stream of checked chunks
    (``size`` and ``hexdigest`` cover what was read so far)."""

    def __init__(self, response: aiohttp.ClientResponse, content_type: str, max_bytes: int) -> None:
        self.content_type = content_type
        self._host = _host_of(str(response.url))
        self.size = 0
        self._response = response
        self._max_bytes = max_bytes
        self._sha256 = hashlib.sha256()

    @property
    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                self.size += len(chunk)
                if self.size > self._max_bytes:
                    raise StorageError(f"video is over the {self._max_bytes}-byte cap", retriable=False)
                self._sha256.update(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageError(f"video download broke off: {_failure(exc, self._host)}", retriable=True) from exc


def guarded_fetch_session(*, allow_private: bool, forbidden: Callable[[IPAddress], bool] | None = None,
                          inner_resolver: aiohttp.abc.AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A session that connects only to allowed addresses; the caller closes it (inside a loop)."""
    resolver = GuardedResolver(allow_private=allow_private, inner=inner_resolver, forbidden=forbidden)
    connector = aiohttp.TCPConnector(resolver=resolver, limit=32)
    # trust_env=False: a proxy from the environment would connect on our behalf, unguarded.
    # A whole download may take 30 minutes: a source trickling bytes cannot hold a copy forever.
    return aiohttp.ClientSession(connector=connector, trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=1800, connect=10, sock_read=60))


class VideoFetcher:
    """Streams videos from untrusted URLs over a guarded session (see the module docstring)."""

    def __init__(self, session: aiohttp.ClientSession, *, allow_private: bool, max_bytes: int,
                 max_redirects: int = 5, forbidden: Callable[[IPAddress], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self._allow_private = allow_private
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._forbidden = forbidden
        self._clock = clock

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Download]:
        """Open ``url`` (following checked redirects); the download's chunks are checked as read."""
        for _ in range(self._max_redirects + 1):
            self._check(url)
            try:
                response = await self._session.get(url, allow_redirects=False,
                                                   headers={"Accept": "video/*, application/octet-stream"})
            except aiohttp.ClientConnectorDNSError as exc:
                if isinstance(exc.os_error, ForbiddenDestination):
                    raise StorageError(f"video URL resolves only to private addresses: {exc.host}",
                                       retriable=False) from exc
                raise StorageError(f"video host not found: {_failure(exc, _host_of(url))}", retriable=True) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StorageError(f"video fetch failed: {_failure(exc, _host_of(url))}", retriable=True) from exc
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise StorageError(f"redirect {response.status} without a Location", retriable=False)
                    url = urljoin(url, location)
                    continue
                self._check_status(response)
                content_type = video_content_type(response.headers.get("Content-Type"))
                if content_type is None:
                    raise StorageError(f"not a video: Content-Type {response.headers.get('Content-Type')!r}",
                                       retriable=False)
                if response.content_length is not None and response.content_length > self._max_bytes:
                    raise StorageError(f"video of {response.content_length} bytes is over the "
                                       f"{self._max_bytes}-byte cap", retriable=False)
                yield Download(response, content_type, self._max_bytes)
                return
            finally:
                response.release()
        raise StorageError(f"more than {self._max_redirects} redirects", retriable=False)

    def _check(self, url: str) -> None:
        try:
            check_url_target(url, allow_private=self._allow_private, field="video_url", forbidden=self._forbidden)
        except ValidationError as exc:
            raise StorageError(f"refused video URL: {exc}", retriable=False) from exc

    def _check_status(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        if 200 <= status <= 299:
            return
        retriable = status in _RETRIABLE_4XX or 500 <= status <= 599
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock()) if retriable else None
        raise StorageError(f"video URL answered HTTP {status}", retriable=retriable, retry_after=retry_after)


def _host_of(url: str) -> str:
    """``url``'s host and port, without userinfo, path, query or fragment."""
    return urlsplit(url).netloc.rpartition("@")[2]


def _failure(exc: BaseException, host: str) -> str:
    """An aiohttp error as text fit to log: its type and the host, never ``str(exc)``. aiohttp's
    connection timeouts ("Connection timeout to host <URL>") and response errors
    (``ClientResponseError``: "..., url=<URL>") quote the whole URL, signed query included. A failed
    connection keeps the operating system's reason ("Connection refused"), which knows no URL."""
    reason = exc.os_error.strerror if isinstance(exc, aiohttp.ClientConnectorError) else None
    return f"{type(exc).__name__} from {host}" + (f" ({reason})" if reason else "")


__all__ = ["Download", "VideoFetcher", "guarded_fetch_session", "video_content_type"]
