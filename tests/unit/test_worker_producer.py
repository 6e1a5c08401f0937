"""The worker's producer lingers as configured: the setting reaches the Kafka client's batches."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from floodgate.errors import ConfigError
from floodgate.settings import Settings
from streams.app import create_app


async def test_the_worker_producer_lingers_as_configured(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOODGATE_PRODUCER_LINGER_MS": "7"}).with_overrides(
        kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path)
    app = create_app(settings, datadir=tmp_path / "w0")
    producer: Any = app.producer  # Faust's aiokafka transport, whose client is built on start
    client = producer._new_producer()  # the aiokafka producer Faust starts, not yet connected
    try:
        assert client._message_accumulator._linger_time == pytest.approx(0.007)
    finally:
        await client.stop()


def test_the_default_linger_is_librdkafkas_and_bounds_are_checked() -> None:
    assert Settings.from_env({}).producer_linger_ms == 5
    for bad in ("-1", "1001"):
        with pytest.raises(ConfigError, match="PRODUCER_LINGER_MS"):
            Settings.from_env({"FLOODGATE_PRODUCER_LINGER_MS": bad})
