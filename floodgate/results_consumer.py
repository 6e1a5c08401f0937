"""The consumer of ``results`` for the services off the job's path: outgoing webhooks, pushes and
the video copier.

Each runs its own group over ``results`` with manual commits (``floodgate.commit_tracker``), and
each fetches in batches rather than record by record. With aiokafka's defaults (a fetch returns
as soon as one byte is there) such a consumer sends a fetch for almost every record once results
trickle in, and each fetch costs its Python fetch loop hundreds of microseconds: alone on a
broker, at 267 results/s, one consumer used 0.10-0.12 of a core (380-480 µs per record). Asking
the broker to hold each fetch until 64 KiB are there, or a wait has passed, cut that to 0.010
with a 100 ms wait (10 fetches/s) and 0.005 with 500 ms (4/s). The API hosts two of these
consumers (three with pushes); in the pipeline bench, its CPU per job went down by a tenth
(2.24-2.54 → 2.12-2.16 ms at 244-278 jobs/s).

The wait is also the most a result waits to be read when few arrive, and what an idle consumer
costs (a fetch per wait: 0.004 of a core at aiokafka's 500 ms, 0.009 at 100 ms). Deliveries
(webhooks, pushes) wait at most 100 ms; copies 500 ms, since a video link leads to the
provider's copy until Floodgate's own is stored (``floodgate.api.videos``).
"""
from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from floodgate.settings import Settings

FETCH_MIN_BYTES = 64 * 1024
"""A fetch returns at once when this much is there (about 50 results): under load."""
DELIVERY_WAIT_MS = 100
"""Longest the broker holds a fetch for the outgoing webhooks and pushes."""
COPY_WAIT_MS = 500
"""Longest the broker holds a fetch for the video copier."""


def results_consumer_options(settings: Settings, group_id: str, max_wait_ms: int) -> dict[str, Any]:
    """``AIOKafkaConsumer`` keyword arguments for the group ``group_id`` reading ``results``, its
    fetches held by the broker for ``max_wait_ms`` at most."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "client_id": f"{group_id}-consumer",
        "enable_auto_commit": False,
        # A new group starts at the beginning: results written before the first deploy are
        # handled too (a webhook delivered, a video copied).
        "auto_offset_reset": "earliest",
        # Nothing writes `results` in transactions today (Faust runs at-least-once); this keeps a
        # future transactional writer's aborted snapshots from ever being acted on.
        "isolation_level": "read_committed",
        "session_timeout_ms": int(settings.session_timeout * 1000),
        "fetch_max_wait_ms": max_wait_ms,
        "fetch_min_bytes": FETCH_MIN_BYTES,
    }


def results_consumer(settings: Settings, group_id: str, max_wait_ms: int) -> AIOKafkaConsumer:
    """A consumer (not started) in ``group_id`` with the options above."""
    return AIOKafkaConsumer(**results_consumer_options(settings, group_id, max_wait_ms))


__all__ = ["COPY_WAIT_MS", "DELIVERY_WAIT_MS", "FETCH_MIN_BYTES", "results_consumer", "results_consumer_options"]
