"""Session fixtures. The Kafka broker comes from, in order:
1. ``FLOODGATE_KAFKA_BOOTSTRAP`` (an existing cluster),
2. a reachable Docker engine (testcontainers' Kafka, official apache/kafka image),
3. the project's own local KRaft broker (official jars from Maven Central; no Docker needed).
Each test isolates itself with unique topic names and group ids (see ``kafka_util``).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from floodgate.settings import Settings


def _docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "not here"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    explicit = os.environ.get("FLOODGATE_KAFKA_BOOTSTRAP")
    if explicit:
        yield explicit
        return
    if os.environ.get("FLOODGATE_TEST_DOCKER", "1") != "0" and _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.9.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from floodgate.broker.local import LocalBroker

    settings = Settings.from_env()
    home = Path(tempfile.mkdtemp(prefix="floodgate-test-broker-"))
    broker = LocalBroker(home, version=settings.kafka_version, cache_dir=settings.cache_dir, heap="768m")
    info = broker.start(detach=False, timeout=90)
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def settings_for(kafka_bootstrap: str, tmp_path: Path):
    """Settings bound to the test broker with a topic prefix unique to the test."""
    from tests.kafka_util import unique_name

    def make(**overrides: object) -> Settings:
        base = Settings.from_env({}).with_overrides(
            kafka_bootstrap=kafka_bootstrap,
            topic_prefix=unique_name("t") + ".",
            cache_dir=tmp_path / "cache",
            partitions=2,
        )
        return base.with_overrides(**overrides) if overrides else base

    return make
