"""The contract every video-provider connector implements, and the shared HTTP-error mapping.

A connector owns one provider's wire format: it builds requests, parses responses and
webhooks into the normalised records below, and turns HTTP failures into the
``floodgate.errors`` tree. It never owns an ``aiohttp.ClientSession``: the caller passes one in,
so connection pooling, shutdown and tests stay in the caller's hands.

Webhooks: the bridge hands each raw delivery to ``authenticate_webhook`` before anything reaches
Kafka. A provider that signs its webhooks is checked there (signature, timestamp window); one
that does not is believed only after the connector asked the provider itself (a status call),
and what is forwarded is then the provider's answer, not the callback's claim. Callbacks
arrive on a per-job path (``callback_url``): the job id plus a MAC only Floodgate can make.

Normalised states: ``queued``, ``running``, ``completed``, ``failed``, ``cancelled``.
``progress`` is a fraction in ``[0.0, 1.0]`` (providers report percentages or fractions;
connectors convert), or ``None`` when the provider does not report it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp

from floodgate import codec
from floodgate.errors import (
    FloodgateError,
    ProviderError,
    ProviderGone,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from floodgate.headers import header
from floodgate.throttle import parse_retry_after

CALLBACK_HEADER = "x-floodgate-callback"
"""Set by the bridge (never taken from the sender) to the per-job callback path of a delivery."""
CONFIRMED_HEADER = "x-floodgate-confirmed"
"""Set by a connector (never taken from the sender) on a delivery whose body is the provider's
answer to a status call rather than the callback's own body."""
STATES = frozenset({"queued", "running", "completed", "failed", "cancelled"})
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class SubmitOrder:
    """One job to hand to a provider. ``model`` is the provider's own model name."""

    job_id: str
    model: str
    prompt: str
    image_url: str | None
    webhook_url: str | None
    idempotency_key: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    """The request's ``input.params``, passed to the provider as model inputs."""


@dataclass(frozen=True)
class SubmitResult:
    provider_job_id: str
    state: str


@dataclass(frozen=True)
class ProviderStatus:
    provider_job_id: str
    state: str
    progress: float | None
    video_url: str | None
    error: str | None
    queue_position: int | None = None
    """Jobs ahead of this one in the provider's own queue, when the provider says."""
    reads: int = 1
    """Status calls this answer took at the provider: what a read budget pays for it (fal's end
    takes two, its status and then its result)."""


@dataclass(frozen=True)
class WebhookDelivery:
    """One provider callback as the bridge received it. ``callback`` is the path after
    ``/webhooks/{provider}/`` (empty for the bare route): the per-job part of ``callback_url``."""

    headers: Mapping[str, str]
    body: bytes
    callback: str = ""


@dataclass(frozen=True)
class ProviderEvent:
    """A verified webhook, normalised. ``job_id`` is ours, echoed back through request metadata."""

    webhook_id: str
    provider_job_id: str
    job_id: str | None
    state: str
    progress: float | None
    video_url: str | None
    error: str | None
    occurred_at: float
    queue_position: int | None = None


def read_webhook(value: bytes | None, headers: Any,
                 connectors: Mapping[str, Any]) -> tuple[str, str, ProviderEvent]:
    """The provider, the job and the event a ``webhooks`` record tells of: the bridge's
    ``WebhookEnvelope``, parsed by that provider's connector (``connectors``: name → connector).
    The jobs agent and the API's feed read webhooks alike through it. Raises ``FloodgateError``
    for an unknown provider or an event that names no job, and whatever the decoding or the
    connector's parse raises for bytes that are not one."""
    env = codec.decode("WebhookEnvelope", value or b"", headers)
    connector = connectors.get(env["provider"])
    if connector is None:
        raise FloodgateError(f"unknown provider {env['provider']!r}")
    event: ProviderEvent = connector.parse_webhook(env["headers"], env["body"])
    if not event.job_id:
        raise FloodgateError("webhook names no job (metadata.job_id missing)")
    return env["provider"], event.job_id, event


@runtime_checkable
class VideoProvider(Protocol):
    """What the submitter, reconciler and webhook edge need from a provider.

    Every coroutine raises only ``floodgate.errors.ProviderError`` subclasses: transport
    failures and timeouts arrive as ``ProviderUnavailable`` (chained with ``from``).
    """

    name: str
    # Optional: ``callbacks``, what the provider's webhooks tell: ``"all"`` (every change; the
    # default), ``"end"`` (only the end: fal, RunPod, WaveSpeed) or ``"none"`` (no webhooks: Runway).
    # For "end" and "none" the dispatcher follows the jobs with status calls every
    # ``FLOODGATE_PROVIDER_STATUS_POLL`` seconds, until they start or until they end
    # (``floodgate.following``); a status may give the place in the provider's own queue.
    # Optional: ``status_rate_per_second``, the provider's documented limit on status calls
    # (Replicate 50, RunPod 200); the routing file's ``status_rate_per_second`` overrides it.
    # Optional: ``same_job(a, b) -> bool``, whether two unequal provider job ids name one job, for
    # a provider whose webhook may name a job otherwise than its submission did (fal: the app path
    # of a model's first requests). Without it, ids are compared exactly (``same_provider_job``).

    async def submit(self, session: aiohttp.ClientSession, order: SubmitOrder) -> SubmitResult:
        """Create the job. Safe to repeat with the same ``order.idempotency_key``."""
        ...

    async def status(self, session: aiohttp.ClientSession, provider_job_id: str) -> ProviderStatus:
        """Poll one job; used by the reconciler because webhooks can be lost."""
        ...

    async def cancel(self, session: aiohttp.ClientSession, provider_job_id: str) -> None:
        """Ask the provider to stop the job; a job already terminal is not an error."""
        ...

    async def authenticate_webhook(self, session: aiohttp.ClientSession, delivery: WebhookDelivery, *,
                                   now: float) -> WebhookDelivery:
        """Called by the webhook bridge for every delivery, before anything is stored.

        Returns the delivery to forward: the same one when its signature and timestamp check
        out, or, for a provider that does not sign, one whose body is the provider's answer to
        a status call. Raises ``WebhookVerificationError`` when the delivery is not to be
        believed (bad or stale signature, wrong per-job path, a job the provider denies).
        """
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> ProviderEvent:
        """Normalise a delivery ``authenticate_webhook`` returned (its ``headers`` carry the
        callback path under ``CALLBACK_HEADER``). Raises ``SchemaError`` for unparseable bodies."""
        ...


def same_provider_job(connector: object, a: str | None, b: str | None) -> bool:
    """Whether provider job ids ``a`` and ``b`` name one job at ``connector``'s provider: equal, or
    unequal and the same by the connector's own ``same_job`` (see ``VideoProvider``). None names
    no job. Where they are equal, as nearly always, nothing more is asked."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    same = getattr(connector, "same_job", None)
    return same is not None and bool(same(a, b))


def error_for_response(status: int, headers: Mapping[str, str], body_text: str, now: float) -> ProviderError:
    """The error to raise for a non-2xx provider response.

    429 → ``RateLimited`` (``retry_after`` from the header, else ``None``), 5xx and 408 (the
    provider gave up waiting for the request: a timeout, not a refusal of the job) →
    ``ProviderUnavailable``, 410 → ``ProviderGone``, any other status → ``ProviderRejected``.
    """
    snippet = " ".join(body_text.split())[:300]
    message = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
    retry_after = parse_retry_after(header(headers, "Retry-After"), now)
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if 500 <= status <= 599 or status == 408:
        return ProviderUnavailable(message, status=status, retry_after=retry_after)
    if status == 410:
        return ProviderGone(message, status=status)
    return ProviderRejected(message, status=status)


__all__ = [
    "CALLBACK_HEADER",
    "CONFIRMED_HEADER",
    "STATES",
    "TERMINAL_STATES",
    "ProviderEvent",
    "ProviderStatus",
    "SubmitOrder",
    "SubmitResult",
    "VideoProvider",
    "WebhookDelivery",
    "error_for_response",
    "read_webhook",
    "same_provider_job",
]
