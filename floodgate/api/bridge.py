"""``POST /webhooks/{provider}``: the provider-facing edge. Verify, wrap, write to ``webhooks``,
answer 200 — nothing more, so providers get a fast answer and never time out on us.

Verification happens here *and* the raw body and headers travel on: only authentic deliveries
reach Kafka (a forged flood costs us no storage), and the jobs agent can still re-check or
re-parse the original bytes later. A delivery that says a provider job ended also frees its slot
at once: a release (status ``ended``, with the provider job id) goes to ``release.<provider>``,
written after the webhook record is on Kafka and before the 200, so the next waiting order is
submitted one Kafka hop after the provider's news, not three. In that order because the two are
not one write: a release without its webhook would free the slot (and end the poller's watch
over the job) while the jobs table never learns that the job ended; a webhook without its release
is answered 503 like any failed write, and the provider's redelivery, or the poller finding the
job ended, frees the slot.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from connectors.providers.base import (
    CALLBACK_HEADER,
    CONFIRMED_HEADER,
    TERMINAL_STATES,
    ProviderEvent,
    WebhookDelivery,
)
from floodgate import codec
from floodgate.api.common import BodyTooLarge, Deps, json_response, read_bounded, too_large
from floodgate.api.heard import Heard
from floodgate.api.kafka_io import KafkaUnavailable, RecordTooLarge
from floodgate.dispatch import ENDED
from floodgate.errors import ProviderError, WebhookVerificationError
from floodgate.headers import lowered
from floodgate.metrics import UNKNOWN_PROVIDER
from floodgate.problems import NOT_FOUND, UNAUTHORIZED, problem_response
from floodgate.signing import HEADER_ID

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 1024 * 1024
WEBHOOK_CHALLENGE = {"WWW-Authenticate": 'Signature realm="floodgate-webhooks"'}
"""RFC 9110 wants a challenge with every 401. A delivery proves itself by its provider's signature
(or, for providers that do not sign, the callback path's MAC and the provider's word), which no
registered scheme describes and which differs by provider, so the challenge names no header; its
realm is not the API's ("floodgate"): a provider's webhook secret opens nothing else."""


def envelope(provider: str, headers: dict[str, str], body: bytes, event_webhook_id: str | None,
             received_ms: int) -> dict[str, Any]:
    # Redeliveries of one event keep their webhook-id; without one, the body's digest is the
    # next most stable identity.
    webhook_id = headers.get(HEADER_ID) or event_webhook_id or "sha256:" + hashlib.sha256(body).hexdigest()
    return {"webhook_id": webhook_id, "provider": provider, "received_at": received_ms,
            "headers": headers, "body": body}


class Bridge:
    def __init__(self, deps: Deps, connectors: Mapping[str, Any]) -> None:
        self.deps = deps
        self.connectors = dict(connectors)
        # Connectors may call their provider while authenticating (a JWKS, a status check).
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self, _: web.Application | None = None) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()

    async def receive(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        deps = self.deps
        name = request.match_info["provider"]
        connector = self.connectors.get(name)
        received = deps.metrics.webhooks_received
        if connector is None:
            received.labels(UNKNOWN_PROVIDER, "unknown_provider").inc()
            return problem_response(404, "Not Found", type_=NOT_FOUND, detail="no such provider")
        try:
            body = await read_bounded(request, MAX_WEBHOOK_BYTES)
        except BodyTooLarge as exc:
            received.labels(name, "too_large").inc()
            return too_large(exc.limit)
        # The per-job path after the provider's name, as the connector made it (job_id/mac[/extra]).
        info = request.match_info
        callback = "/".join(info[part] for part in ("job_id", "mac", "extra") if part in info)
        delivery = await self.authenticate(name, connector, lowered(request.headers), body, callback)
        if isinstance(delivery, web.Response):
            return delivery
        headers, body = dict(delivery.headers), delivery.body
        if callback:
            headers[CALLBACK_HEADER] = callback
        event = parse(name, connector, headers, body)
        job_id = event.job_id if event is not None else None
        now_ms = int(deps.clock() * 1000)
        value, kafka_headers = codec.encode("WebhookEnvelope", envelope(
            name, headers, body, event.webhook_id if event is not None else None, now_ms))
        refused = await self.store(name, job_id, value, kafka_headers, ended_job(event), now_ms)
        if refused is not None:
            return refused
        received.labels(name, "accepted").inc()
        deps.metrics.webhook_answer.observe(time.perf_counter() - started)
        if event is not None and event.job_id and deps.view is not None:
            # On Kafka now: this process's own watchers of the job may hear the word at once
            # rather than after the worker's turn (floodgate.api.heard).
            deps.view.heard(Heard(name, event.job_id, event))
        return json_response({"received": True})

    async def authenticate(self, name: str, connector: Any, headers: dict[str, str], body: bytes,
                           callback: str) -> WebhookDelivery | web.Response:
        """The delivery to forward, as the connector vouches for it, or the answer that refuses it."""
        received = self.deps.metrics.webhooks_received
        for ours in (CALLBACK_HEADER, CONFIRMED_HEADER):  # only ever set by us, never by the sender
            headers.pop(ours, None)
        try:
            delivery: WebhookDelivery = await connector.authenticate_webhook(
                self.session(), WebhookDelivery(headers, body, callback), now=self.deps.clock())
        except WebhookVerificationError as exc:
            log.info("rejected webhook for %s: %s", name, exc)
            received.labels(name, "bad_signature").inc()
            return problem_response(401, "Unauthorized", type_=UNAUTHORIZED, detail="webhook verification failed",
                                    headers=WEBHOOK_CHALLENGE)
        except ProviderError as exc:
            # Confirming the callback needed the provider, which did not answer: ask for a redelivery.
            log.info("webhook for %s not confirmed yet: %s", name, exc)
            received.labels(name, "unconfirmed").inc()
            return problem_response(503, "Service Unavailable", detail="webhook not confirmed; retry later",
                                    headers={"Retry-After": str(int(exc.retry_after or 5))})
        return delivery

    async def store(self, name: str, job_id: str | None, value: bytes, kafka_headers: Any,
                    ended: ProviderEvent | None, now_ms: int) -> web.Response | None:
        """Write the webhook, then, for a job that ended, its slot's release; None once both are on
        Kafka, else the answer that asks the provider to deliver again."""
        deps = self.deps
        assert deps.producer is not None  # build_app guarantees it
        try:
            await deps.producer.send_and_wait(deps.topics.webhooks, job_id, value, kafka_headers)
            if ended is not None:
                # The provider's slot is free the moment its job ended: tell the dispatcher directly,
                # one Kafka hop, rather than after the jobs agent has recorded the end (two hops).
                # Only once the webhook itself is on Kafka: a release that lands while the webhook
                # does not (the broker going away between the two) frees the slot, and with it the
                # poller's watch over the job, while the jobs table never learns that it ended.
                release, release_headers = codec.encode("SlotRelease", {
                    "job_id": ended.job_id, "provider": name, "attempt": 0, "status": ENDED, "at": now_ms,
                    "provider_job_id": ended.provider_job_id})
                await deps.producer.send_and_wait(deps.topics.release(name), ended.job_id, release, release_headers)
        except KafkaUnavailable as exc:
            # Providers retry non-2xx deliveries: this is how we ask for one.
            deps.metrics.webhooks_received.labels(name, "kafka_unavailable").inc()
            return problem_response(503, "Service Unavailable", detail="webhook not stored; retry later",
                                    headers={"Retry-After": str(int(exc.retry_after or 1))})
        except RecordTooLarge:
            deps.metrics.webhooks_received.labels(name, "too_large").inc()
            return too_large(MAX_WEBHOOK_BYTES)
        return None


def parse(name: str, connector: Any, headers: dict[str, str], body: bytes) -> ProviderEvent | None:
    """The event an authentic delivery tells of; None when it does not parse: it is forwarded
    keyless, and the jobs agent dead-letters it."""
    try:
        event: ProviderEvent = connector.parse_webhook(headers, body)
    except Exception as exc:
        log.info("webhook for %s does not parse (%s); forwarding without a key", name, exc)
        return None
    return event


def ended_job(event: ProviderEvent | None) -> ProviderEvent | None:
    """``event`` if it says a provider job of ours ended (its slot can be freed), else None."""
    if event is None or event.state not in TERMINAL_STATES or not event.job_id or not event.provider_job_id:
        return None
    return event


def add_routes(app: web.Application, deps: Deps, connectors: Mapping[str, Any]) -> None:
    bridge = Bridge(deps, connectors)
    app.router.add_post("/webhooks/{provider}", bridge.receive)
    # Per-job callback paths (connectors.providers.callback): /webhooks/{provider}/{job_id}/{mac},
    # with one more segment for providers whose bodies lack something the bridge needs.
    app.router.add_post("/webhooks/{provider}/{job_id}/{mac}", bridge.receive)
    app.router.add_post("/webhooks/{provider}/{job_id}/{mac}/{extra:.+}", bridge.receive)  # fal apps hold slashes
    app.on_cleanup.append(bridge.close)


__all__ = ["MAX_WEBHOOK_BYTES", "WEBHOOK_CHALLENGE", "Bridge", "add_routes", "envelope"]
