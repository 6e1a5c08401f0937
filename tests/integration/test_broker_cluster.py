"""`floodgate broker start --nodes 3` as a user runs it: three KRaft nodes on loopback, Floodgate's
topics replicated 3 times with min.insync.replicas 2, and one node SIGKILLed without losing an
acknowledged record or refusing an acks=all write. Starts brokers of its own (the cluster is
what is under test) and stops them at the end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource

from floodgate.kafka_admin import cluster_replication, ensure_topics
from floodgate.settings import Settings
from floodgate.topics import TopicNames
from tests.kafka_util import consume_until, unique_name

pytestmark = pytest.mark.kafka


def floodgate(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOODGATE_KAFKA_BOOTSTRAP"}
    return subprocess.run([sys.executable, "-m", "floodgate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def produce_acknowledged(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    """Write with acks=all and idempotence; return the values the cluster acknowledged."""
    acked: list[bytes] = []
    errors: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            acked.append(msg.value())  # type: ignore[attr-defined]
        else:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "delivery.timeout.ms": 60000})
    for value in values:
        producer.produce(topic, value=value, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(90) == 0, "records still unacknowledged after 90 s"
    assert not errors, errors[:3]
    return acked


def metadata_with(admin: AdminClient, topics: Iterable[str], timeout: float = 30.0) -> ClusterMetadata:
    """The cluster's metadata once every one of ``topics`` has a leader for every partition (a
    topic just created reaches the node answering a little later)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=10)
        known = metadata.topics
        if all(t in known and known[t].partitions and all(p.leader >= 0 for p in known[t].partitions.values())
               for t in topics):
            return metadata
        assert time.monotonic() < deadline, f"topics missing from metadata after {timeout}s"
        time.sleep(0.2)


def min_insync_replicas(admin: AdminClient, topics: Iterable[str], timeout: float = 30.0) -> dict[str, str]:
    """topic → its min.insync.replicas, asked until every node answering knows the topics."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics])
            return {r.name: fut.result(timeout=10)["min.insync.replicas"].value for r, fut in configs.items()}
        except KafkaException:
            assert time.monotonic() < deadline, f"topic configs not readable after {timeout}s"
            time.sleep(0.2)


@pytest.mark.slow  # ~50 s: three JVMs; the chaos suite kills cluster nodes under load too
def test_three_node_cluster_survives_a_sigkilled_node(tmp_path: Path) -> None:
    state = str(tmp_path / "cluster")
    started = floodgate("broker", "start", "--nodes", "3", "--dir", state)
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().removeprefix("broker=")
        assert len(bootstrap.split(",")) == 3
        assert "FLOODGATE_REPLICATION_FACTOR=3 FLOODGATE_MIN_INSYNC_REPLICAS=2" in started.stderr
        status = floodgate("broker", "status", "--dir", state)
        assert status.returncode == 0 and "nodes=3/3" in status.stdout, status.stdout

        # Floodgate's topics, created as `floodgate dev --brokers 3` configures every process.
        replication, min_isr = cluster_replication(3)
        settings = Settings.from_env({}).with_overrides(
            kafka_bootstrap=bootstrap, topic_prefix=unique_name("cluster-") + ".",
            replication_factor=replication, min_insync_replicas=min_isr)
        layout = TopicNames(settings).layout({"kling": 10})
        ensure_topics(bootstrap, layout, settings.replication_factor)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        metadata = metadata_with(admin, layout)
        for name in layout:
            assert all(len(p.replicas) == 3 for p in metadata.topics[name].partitions.values()), name
        assert set(min_insync_replicas(admin, layout).values()) == {"2"}
        offsets_topic = metadata.topics.get("__consumer_offsets")
        assert offsets_topic is None or all(len(p.replicas) == 3 for p in offsets_topic.partitions.values())

        requests = TopicNames(settings).requests
        before = produce_acknowledged(bootstrap, requests, [f"before-{i}".encode() for i in range(500)])

        # Kill the node leading partition 0 of `requests`: the hardest node to lose.
        leader = metadata.topics[requests].partitions[0].leader
        killed_port = {b.id: b.port for b in metadata.brokers.values()}[leader]
        victim = next(line for line in status.stdout.splitlines()
                      if line.startswith(f"node-{leader} "))
        pid = int(victim.split("pid=")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (degraded := floodgate("broker", "status", "--dir", state)).returncode == 0:
            assert time.monotonic() < deadline, "status still says 3/3 after the SIGKILL"
        assert degraded.returncode == 1 and "nodes=2/3" in degraded.stdout and f"node-{leader} down" in degraded.stdout

        survivors = ",".join(a for a in bootstrap.split(",") if not a.endswith(f":{killed_port}"))
        after = produce_acknowledged(survivors, requests, [f"after-{i}".encode() for i in range(500)])
        assert len(before) == len(after) == 500

        expected = set(before) | set(after)
        read = consume_until(survivors, requests,
                             lambda msgs: expected <= {m.value() for m in msgs}, timeout=90)
        assert expected <= {m.value() for m in read}
    finally:
        stopped = floodgate("broker", "stop", "--dir", state)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped"
    assert floodgate("broker", "status", "--dir", state).returncode == 3


@pytest.mark.slow
def test_a_killed_node_restarts_in_place_and_catches_up(tmp_path: Path) -> None:
    """``start`` again brings a SIGKILLed node back on its own port with its own storage, and it
    rejoins every partition's in-sync replicas (slow: a second cluster start)."""
    state = str(tmp_path / "cluster")
    started = floodgate("broker", "start", "--nodes", "3", "--dir", state)
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().removeprefix("broker=")
        topic = unique_name("restart-")
        ensure_topics(bootstrap, {topic: (3, {"min.insync.replicas": "2"})}, 3)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        metadata_with(admin, [topic])
        status = floodgate("broker", "status", "--dir", state)
        node_2 = next(line for line in status.stdout.splitlines() if line.startswith("node-2 "))
        pid = int(node_2.split("pid=")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        survivors = ",".join(bootstrap.split(",")[::2])
        produce_acknowledged(survivors, topic, [f"while-down-{i}".encode() for i in range(200)])

        again = floodgate("broker", "start", "--dir", state)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == started.stdout.strip(), "same ports as before"
        assert "nodes=3/3" in floodgate("broker", "status", "--dir", state).stdout
        deadline = time.monotonic() + 60
        while not all(2 in p.isrs for p in admin.list_topics(topic, timeout=10).topics[topic].partitions.values()):
            assert time.monotonic() < deadline, "node 2 did not rejoin the in-sync replicas"
            time.sleep(0.5)
    finally:
        stopped = floodgate("broker", "stop", "--dir", state)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped"
