"""The consumer of ``results`` for the services off the job's path: outgoing webhooks, pushes and
the video copier.

Each runs its own group over ``results`` with manual commits (``floodgate.commit_tracker``), and
each fetches in batches rather than record by record. With aiokafka's defaults (a fetch returns
as soon as one byte is there) such a consumer sends a fetch for almost every record once results
trickle in, and each fetch costs its Python fetch loop hundreds of microseconds: alone on a
broker, at 267 results/s, one consumer used 0.10 of a core (380-480 µs per record), and asking
the broker to hold each fetch until 64 KiB or 50 ms cut it to 0.018 (67 µs per record; 20
fetches/s instead of 250). The API hosts two of these consumers (three with pushes), so that was
a quarter of its CPU per job at the pipeline's pace. The price is at most 50 ms before a result
is read: a webhook or a push leaves that much later at worst, and a video link points at the
provider's copy until Floodgate's own is stored (``floodgate.api.videos``).
"""
from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from floodgate.settings import Settings

FETCH_MAX_WAIT_MS = 50
"""Longest the broker holds a fetch for more records: the most a result waits to be read."""
FETCH_MIN_BYTES = 64 * 1024
"""A fetch returns at once when this much is there (about 50 results), under load."""


def results_consumer_options(settings: Settings, group_id: str) -> dict[str, Any]:
    """``AIOKafkaConsumer`` keyword arguments for the group ``group_id`` reading ``results``."""
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
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "fetch_min_bytes": FETCH_MIN_BYTES,
    }


def results_consumer(settings: Settings, group_id: str) -> AIOKafkaConsumer:
    """A consumer (not started) in ``group_id`` with the options above."""
    return AIOKafkaConsumer(**results_consumer_options(settings, group_id))


__all__ = ["FETCH_MAX_WAIT_MS", "FETCH_MIN_BYTES", "results_consumer", "results_consumer_options"]
