"""The part every real-provider connector shares: its name and timeout, the HTTP call, and the
per-job callback path (``callback``) by which a webhook names its job."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import aiohttp

from floodgate.errors import ProviderRejected, SchemaError, WebhookVerificationError
from floodgate.headers import header

from . import callback
from .base import CALLBACK_HEADER, CONFIRMED_HEADER, SubmitOrder, WebhookDelivery
from .http import HttpAnswer, HttpRequest, send


class HttpConnector:
    """Base of the real-provider connectors. ``callback_secret`` keys the per-job callback paths;
    every process of a deployment (API and workers) must be given the same one."""

    name: str

    def __init__(self, name: str, *, callback_secret: str | None, timeout: float,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self._callback_secret = callback_secret
        if callback_secret is not None:
            callback.mac(callback_secret, name, "check")  # a bad secret fails at start, not at the first job
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    async def call(self, session: aiohttp.ClientSession, request: HttpRequest, *,
                   ok: Callable[[int], bool] = lambda status: 200 <= status <= 299) -> HttpAnswer:
        return await send(session, request, name=self.name, timeout=self._timeout, now=self._clock, ok=ok)

    def callback_for(self, order: SubmitOrder, extra: str = "") -> str | None:
        """The per-job URL to give the provider, or None when Floodgate has no public webhook base."""
        if order.webhook_url is None or self._callback_secret is None:
            return None
        return callback.callback_url(order.webhook_url, self._callback_secret, self.name, order.job_id, extra)

    def job_of(self, callback_path: str) -> callback.Callback:
        """The job a callback path names; raises ``WebhookVerificationError`` for a forged one."""
        if self._callback_secret is None:
            raise WebhookVerificationError(f"{self.name}: no callback_secret configured; callbacks are refused")
        return callback.check(self._callback_secret, self.name, callback_path)


async def confirmed(delivery: WebhookDelivery, provider_job_id: str,
                    ask: Callable[[str], Awaitable[bytes]]) -> WebhookDelivery:
    """For a provider that does not sign its callbacks: the delivery to forward is the provider's
    own answer about ``provider_job_id`` (from ``ask``), never the callback's claim. A provider
    that does not know the job (4xx) makes the callback a forgery; a provider that cannot answer
    now (429, 5xx, network) raises ``ProviderError``, so the bridge fails and the sender retries."""
    try:
        body = await ask(provider_job_id)
    except ProviderRejected as exc:
        raise WebhookVerificationError(f"the provider does not confirm {provider_job_id}: {exc}") from exc
    return WebhookDelivery({**delivery.headers, CONFIRMED_HEADER: "status"}, body, delivery.callback)


def callback_job(headers: Mapping[str, str]) -> str | None:
    """The job id of a delivery the bridge already authenticated (from its callback path)."""
    return callback.split(header(headers, CALLBACK_HEADER) or "")[0] or None


def callback_extra(headers: Mapping[str, str]) -> str:
    """The extra part of an authenticated delivery's callback path ("" when none)."""
    return callback.split(header(headers, CALLBACK_HEADER) or "")[2]


def timestamp(value: object, fallback: float) -> float:
    """Epoch seconds from an ISO 8601 string, epoch seconds or epoch milliseconds."""
    if isinstance(value, bool) or value is None:
        return fallback
    if isinstance(value, (int, float)):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError as exc:
            raise SchemaError(f"bad timestamp {value[:40]!r}") from exc
    raise SchemaError("timestamp must be a string or a number")


__all__ = ["HttpConnector", "confirmed", "callback_extra", "callback_job", "timestamp"]
