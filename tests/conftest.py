"""Session fixtures. The Kafka broker comes from, in order:
1. ``FLOODGATE_KAFKA_BOOTSTRAP`` (an existing cluster),
2. a reachable Docker engine (testcontainers' Kafka, official apache/kafka image),
3. the project's own local KRaft broker (official jars from Maven Central; no Docker needed).
Each test isolates itself with unique topic names and group ids (see ``kafka_util``), so one
broker serves a whole run: when pytest-xdist spreads the run over processes (``make test``
runs two), the controlling process starts it once and hands its address to every worker.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from floodgate.settings import Settings

# The address the xdist controller hands to its workers (``workerinput``), and where it keeps
# the broker it started until the run ends.
_BOOTSTRAP_INPUT = "floodgate_kafka_bootstrap"
_BOOTSTRAP = pytest.StashKey[str]()
_SHARED_BROKER = pytest.StashKey[contextlib.ExitStack]()


def _docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "not here"
        return False


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    """A broker's bootstrap address for as long as the context lasts, from the first source above."""
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
        shutil.rmtree(home, ignore_errors=True)  # a run's topics: 100-200 MB, of no use after it


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", 0)) and not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist, the controller starts the run's one broker before its workers start (they
    would otherwise start one each, and a local broker started by a worker dies with it)."""
    config = session.config
    if not _xdist_controller(config):
        return
    stack = contextlib.ExitStack()
    config.stash[_BOOTSTRAP] = stack.enter_context(_broker())
    config.stash[_SHARED_BROKER] = stack


def pytest_sessionfinish(session: pytest.Session) -> None:
    stack = session.config.stash.get(_SHARED_BROKER, None)
    if stack is not None:
        stack.close()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown, and never called, without xdist
def pytest_configure_node(node: object) -> None:
    config: pytest.Config = node.config  # type: ignore[attr-defined]
    bootstrap = config.stash.get(_BOOTSTRAP, None)
    if bootstrap is not None:
        node.workerinput[_BOOTSTRAP_INPUT] = bootstrap  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    shared = getattr(pytestconfig, "workerinput", {}).get(_BOOTSTRAP_INPUT)
    if shared is not None:
        yield shared
        return
    with _broker() as bootstrap:
        yield bootstrap


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
