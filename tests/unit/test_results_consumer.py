"""The results consumers (outgoing webhooks, pushes, the video copier) fetch in batches, bounded
in how long a result may wait to be read."""
from __future__ import annotations

import dataclasses
from typing import cast

import pytest
from aiokafka import AIOKafkaConsumer

from connectors.notifiers.base import Notifier
from connectors.storage import VideoStore
from connectors.storage.fetch import VideoFetcher
from floodgate.notify import outgoing
from floodgate.results_consumer import (
    COPY_WAIT_MS,
    DELIVERY_WAIT_MS,
    FETCH_MIN_BYTES,
    results_consumer,
    results_consumer_options,
)
from floodgate.settings import Settings
from floodgate.videos import copier


def settings() -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:9", session_timeout=7.0)


def test_fetches_wait_for_a_batch_but_not_long() -> None:
    options = results_consumer_options(settings(), "fg-webhooks", DELIVERY_WAIT_MS)
    # More than aiokafka's one byte (a fetch per record); a delivery leaves at most 100 ms late,
    # a copy starts at most half a second late (the link leads to the provider's copy meanwhile).
    assert options["fetch_min_bytes"] == FETCH_MIN_BYTES >= 16 * 1024
    assert options["fetch_max_wait_ms"] == DELIVERY_WAIT_MS <= 100
    assert results_consumer_options(settings(), "fg-videos", COPY_WAIT_MS)["fetch_max_wait_ms"] == COPY_WAIT_MS <= 500


def test_each_group_commits_by_hand_from_the_start_and_skips_aborted_writes() -> None:
    options = results_consumer_options(settings(), "fg-videos", COPY_WAIT_MS)
    assert (options["group_id"], options["client_id"]) == ("fg-videos", "fg-videos-consumer")
    assert options["enable_auto_commit"] is False
    assert options["auto_offset_reset"] == "earliest"
    assert options["isolation_level"] == "read_committed"
    assert options["session_timeout_ms"] == 7000
    assert options["bootstrap_servers"] == "127.0.0.1:9"


async def test_the_consumer_is_built_with_those_options() -> None:
    consumer = results_consumer(settings(), "fg-webhooks", DELIVERY_WAIT_MS)
    assert consumer._fetch_min_bytes == FETCH_MIN_BYTES
    assert consumer._fetch_max_wait_ms == DELIVERY_WAIT_MS
    assert consumer._group_id == "fg-webhooks"


class Built(Exception):
    """Stops a service's start right after it asked for its consumer."""


async def test_the_services_read_results_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int]] = []

    def recording(settings: Settings, group_id: str, max_wait_ms: int) -> AIOKafkaConsumer:
        asked.append((group_id, max_wait_ms))
        raise Built

    monkeypatch.setattr(outgoing, "results_consumer", recording)
    monkeypatch.setattr(copier, "results_consumer", recording)
    monkeypatch.setattr(outgoing, "AIOKafkaProducer", lambda **_: None)  # its dlq producer: never started here
    s = dataclasses.replace(settings(), app_id="fg")
    with pytest.raises(Built):
        await outgoing.OutgoingWebhooks(s, notifier=cast(Notifier, object())).start()
    with pytest.raises(Built):
        await copier.VideoCopier(s, cast(VideoStore, object()), fetcher=cast(VideoFetcher, object())).start()
    assert asked == [("fg-webhooks", DELIVERY_WAIT_MS), ("fg-videos", COPY_WAIT_MS)]
