"""Session fixtures. The Kafka broker comes from, in order:
1. ``FLOODGATE_KAFKA_BOOTSTRAP`` (an existing cluster),
2. a reachable Docker engine (testcontainers' Kafka, official apache/kafka image),
3. the project's own local KRaft broker (official jars from Maven Central; no Docker needed).
Each test isolates itself with unique topic names and group ids (see ``kafka_util``), so one
broker serves a whole run: when pytest-xdist spreads the run over processes (``make test``
runs three), the controlling process starts it once and hands its address to every worker.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest

from floodgate.settings import Settings

# Every test asserts what is computed, never how fast (speed is the bench's): Hypothesis's
# per-example deadline is a timing check, which a loaded two-core machine trips (350 ms against
# its 200 ms seen in the unit tier beside a broker test).
hypothesis.settings.register_profile("floodgate", deadline=None)
hypothesis.settings.load_profile("floodgate")

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


# The order in which pytest-xdist hands out test files (``make test``: ``--dist loadfile
# --no-loadscope-reorder``): a file goes whole to the next worker free, in collection order. Files
# that start a stack first (a single one takes up to two minutes), the many small unit files last,
# so that whatever one worker still has to run at the end, the others fill with small files
# instead of waiting idle. (xdist's own reorder puts the files with the most tests first, which
# leaves the longest files, one or two tests each, for the end of the run.)
_TIERS = ("tests/e2e/", "tests/browser/", "tests/integration/", "tests/unit/")


def _tier(item: pytest.Item) -> int:
    path = item.nodeid
    return next((i for i, prefix in enumerate(_TIERS) if path.startswith(prefix)), len(_TIERS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_tier)  # stable: each file's tests stay together and in their order


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
