"""What every HTTP handler module shares: its dependencies (passed in, never global), bounded
body reading and a few response helpers."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from floodgate.api.idempotency import IdempotencyCache
from floodgate.api.kafka_io import Sender
from floodgate.api.view import JobView
from floodgate.errors import Problem
from floodgate.metrics import ApiMetrics, api_metrics
from floodgate.problems import problem_response
from floodgate.provider_config import ProviderSetup
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from floodgate.videolinks import VideoLinks

ROLES = frozenset({"ingress", "read", "bridge"})
API_KEY_CHALLENGE = {"WWW-Authenticate": 'ApiKey realm="floodgate", header="X-API-Key"'}
"""RFC 9110 wants a challenge with every 401; an API key is no registered scheme, so the challenge
names the header that carries it."""


@dataclass
class Deps:
    """Everything the handlers use. ``producer`` is needed by ingress and bridge, ``view`` by
    ingress and read; ``build_app`` checks that before any request arrives."""

    settings: Settings
    setup: ProviderSetup
    producer: Sender | None
    view: JobView | None
    keepalive: float = 15.0
    """Seconds between SSE keep-alive comments (load balancers drop idle connections at ~60 s)."""
    wait_for_job: float = 2.0
    """Seconds a read waits for a job another instance accepted to show up in this one's view."""
    clock: Callable[[], float] = time.time
    idempotency: IdempotencyCache = field(default_factory=IdempotencyCache)
    metrics: ApiMetrics = field(default_factory=api_metrics)
    video_links: VideoLinks | None = None
    """Set when videos are kept in our store: a completed job's ``result.video_url`` is then our
    signed link to ``/v1/videos/{job_id}``, made when the job is read."""
    intake: Sender | None = None
    """The ingress's producer of ``requests``, when it is not ``producer`` (the server gives the
    ingress one that lingers longer, so accepted requests share batches)."""

    def video_url(self, snapshot: dict[str, Any], base: str) -> str | None:
        """Our signed link for a completed job read at ``base``; None to show the provider's URL."""
        if self.video_links is None or snapshot.get("status") != "completed" or not snapshot.get("video_url"):
            return None
        return self.video_links.url(base, snapshot["job_id"], self.clock())

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.settings)

    @property
    def secret(self) -> bytes:
        return self.settings.secret.reveal().encode("utf-8")


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds {limit} bytes")
        self.limit = limit


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The request body, refusing (``BodyTooLarge``) as soon as it passes ``limit`` bytes.

    Reads incrementally so a lying or absent Content-Length cannot make us buffer more.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def body_too_large(limit: int) -> Problem:
    """What a 413 names: the body, with the limit it passed (RFC 9457 problems name the field at fault)."""
    return Problem("body", f"must be at most {limit} bytes")


def too_large(limit: int) -> web.Response:
    return problem_response(413, "Content Too Large", detail=f"the request body must be at most {limit} bytes",
                            errors=[body_too_large(limit)])


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


def base_url(request: web.Request, settings: Settings) -> str:
    """Where clients reach this API: ``public_url`` when set (behind a proxy), else the request's host."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


__all__ = ["ROLES", "BodyTooLarge", "Deps", "base_url", "body_too_large", "json_response", "read_bounded",
           "too_large"]
