"""Webhook delivery with the misbehaviour real providers show: duplicates, reordering, drops.

Each event is signed per attempt with Standard Webhooks headers (``floodgate.signing``); the
``webhook-id`` is the event id, so retries and deliberate duplicates keep it, exactly what a
receiver dedupes on. Deliveries of one job are serialised so that, without chaos, a receiver
sees ``video.in_progress`` before the terminal event.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson

from floodgate import signing

from .dialects.base import IN_PROGRESS, TERMINAL, Dialect, Outgoing, View
from .jobs import Job, job_view
from .state import ProviderState

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], object]

SENDERS = 100
"""Deliveries a simulator makes at once, its providers together: its delivery workers, which the
other deliveries wait for. The wait is not part of a delivery's timeout, as a real provider's wait
in its own delivery queue is not (``WebhookDispatcher``)."""


def make_event(event_type: str, job: Job, files_base: str, state: ProviderState, wall: float) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created_at": int(wall),
        "data": job_view(job, files_base, state.now()),
    }


class WebhookDispatcher:
    """Decides each event's fate (send, duplicate, hold back, drop) and delivers it with retries."""

    def __init__(
        self,
        state: ProviderState,
        files_base: str,
        session: aiohttp.ClientSession,
        spawn: Spawn,
        wall: Callable[[], float],
        *,
        dialect: Dialect | None = None,
        view: Callable[[Job], View] | None = None,
        senders: asyncio.Semaphore | None = None,
    ) -> None:
        self.dialect = dialect
        # Shared by the simulator's providers; the session's own pool is not what bounds them.
        self.senders = senders if senders is not None else asyncio.Semaphore(SENDERS)
        self.view = view
        self.state = state
        self.files_base = files_base
        self.session = session
        self.spawn = spawn
        self.wall = wall

    def emit(self, job: Job, event_type: str) -> None:
        """Schedule delivery of ``event_type`` for ``job`` (a snapshot taken now)."""
        if job.request.webhook_url is None:
            return
        config, rng = self.state.config, self.state.rng
        event = self._event(event_type, job)
        if event is None:
            return
        if rng.random() < config.drop_rate:
            self.state.count(job.api_key, "webhooks_dropped")
            job.dropped.append(event_type)
        elif event_type == "video.in_progress" and rng.random() < config.reorder_rate:
            job.held_event = event
            self.state.count(job.api_key, "webhooks_reordered")
        else:
            copies = 1
            if rng.random() < config.duplicate_rate:
                copies = 2
                self.state.count(job.api_key, "webhooks_duplicated")
            self.spawn(self._deliver(job, event, copies))
        if job.terminal:
            self.release_held(job)

    def _event(self, event_type: str, job: Job) -> Outgoing | None:
        if self.dialect is None or self.view is None:
            event = make_event(event_type, job, self.files_base, self.state, self.wall())
            return Outgoing(orjson.dumps(event), event["id"])
        moment = IN_PROGRESS if event_type == "video.in_progress" else TERMINAL
        return self.dialect.webhook(moment, job, self.view(job))

    def release_held(self, job: Job) -> None:
        """Send a held-back (older) in_progress event now, after the terminal one."""
        held, job.held_event = job.held_event, None
        if held is not None:
            self.spawn(self._deliver(job, held, 1))

    async def _deliver(self, job: Job, event: Outgoing, copies: int) -> None:
        async with job.delivery_lock:
            for _ in range(copies):
                await self._attempts(job, event)

    async def _attempts(self, job: Job, event: Outgoing) -> None:
        event_id, body = event.event_id, event.body
        config = self.state.config
        url = job.request.webhook_url
        assert url is not None
        # The timeout runs from the moment a sender takes the delivery: connecting, sending, the
        # whole answer. The wait for a sender does not count, as a real provider's wait in its own
        # delivery queue does not: when it counted (the session's pool was the bound), a burst of
        # deliveries queued behind the pool timed out while the receiver answered each within a
        # second, and their redeliveries made the burst larger (a retry storm of the simulator's own).
        timeout = aiohttp.ClientTimeout(total=config.webhook_timeout)
        for attempt in range(config.webhook_attempts):
            if attempt:
                self.state.count(job.api_key, "webhooks_retried")
                await asyncio.sleep(config.webhook_backoff * 2 ** (attempt - 1))
            if self.dialect is None:
                headers = signing.signature_headers(config.webhook_secret, event_id, body, self.wall())
            else:
                headers = self.dialect.sign(event, job, self.wall(), config.webhook_secret)
            headers["Content-Type"] = "application/json"
            headers["User-Agent"] = "floodgate-simulator"
            try:
                async with self.senders, self.session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    await response.read()
                    status = response.status
                if 200 <= status <= 299:
                    self.state.count(job.api_key, "webhooks_sent")
                    job.delivered.append(event_id)
                    return
                log.debug("webhook %s to %s: HTTP %s", event_id, url, status)
            except TimeoutError:
                self.state.count(job.api_key, "webhooks_timed_out")
                log.debug("webhook %s to %s: no answer within %ss", event_id, url, config.webhook_timeout)
            except aiohttp.ClientError as exc:
                log.debug("webhook %s to %s: %s", event_id, url, exc)
        self.state.count(job.api_key, "webhooks_failed")
