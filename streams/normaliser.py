"""webhooks → canonical job events. Stateless: an LRU of webhook ids drops most duplicates
cheaply here, and the job state machine (idempotent per event id) drops the rest."""
from __future__ import annotations

import logging
from collections import OrderedDict

import faust

from floodgate import codec
from floodgate.errors import FloodgateError
from streams.context import Pipeline

log = logging.getLogger(__name__)

_KIND = {"queued": None, "running": "running", "completed": "completed", "failed": "failed", "cancelled": "cancelled"}


class SeenIds:
    """Bounded memory of recently seen ids."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """True if ``key`` is new."""
        if key in self._ids:
            self._ids.move_to_end(key)
            return False
        self._ids[key] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


def register(pipe: Pipeline) -> None:
    app, names, emit = pipe.app, pipe.names, pipe.emit
    source = emit.topic(names.webhooks, partitions=pipe.settings.partitions)
    seen = SeenIds()

    @app.agent(source, name="normaliser")
    async def normaliser(stream: faust.StreamT) -> None:
        async for ev in stream.events():
            msg = ev.message
            pipe.metrics.events_processed.labels("normaliser").inc()
            try:
                env = codec.decode("WebhookEnvelope", msg.value, msg.headers)
                provider = pipe.providers.get(env["provider"])
                if provider is None:
                    raise FloodgateError(f"unknown provider {env['provider']!r}")
                event = provider.parse_webhook(env["headers"], env["body"])
                if not event.job_id:
                    raise FloodgateError("webhook names no job (metadata.job_id missing)")
            except Exception as exc:  # poison webhooks go to the DLQ, the agent goes on
                pipe.metrics.dead_letters.labels("normaliser").inc()
                await emit.dead_letter(names.dlq, msg, f"unusable webhook: {exc}", exc)
                continue
            if not seen.add(f"{env['provider']}:{event.webhook_id}"):
                continue
            kind = _KIND.get(event.state)
            if kind is None:
                continue
            if kind == "running" and event.progress:
                kind = "progress"
            pipe.metrics.webhooks.labels(env["provider"]).inc()
            await emit.send(names.events, "JobEvent", event.job_id, {
                "event_id": f"wh:{env['provider']}:{event.webhook_id}", "job_id": event.job_id, "kind": kind,
                "at": int(event.occurred_at * 1000), "provider": env["provider"],
                "provider_job_id": event.provider_job_id, "attempt": 0,
                "progress": event.progress, "video_url": event.video_url, "error": event.error,
            })
