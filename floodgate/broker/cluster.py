"""A local KRaft cluster of several nodes on loopback, from the same jars as the single broker.

Each node is a ``LocalBroker`` (combined broker + controller) in ``home/node-<id>/`` with its own
``server.properties``, ``data/``, ``broker.log`` and ``broker.json``; ``home/cluster.json`` keeps
the cluster id and every node's ports, so a node killed by a test (or a crash) restarts on the
same ports with the same storage. Every node is a voter: with three, the quorum and every topic
(replication 3, ``min.insync.replicas`` 2) survive the loss of any one node.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from floodgate.broker.local import BrokerInfo, LocalBroker, new_cluster_id
from floodgate.errors import BrokerError
from floodgate.kafka_admin import cluster_replication
from floodgate.procs import port_in_use, quiet_ports

# A node's heap: see README ("Local broker"). Three nodes at 512 MiB take less than two single
# brokers at the default 1 GiB, and a loopback cluster carrying test and demo traffic never
# comes near it (its working set is metadata, request buffers and the replica fetchers).
NODE_HEAP = "512m"


def cluster_properties(nodes: int) -> dict[str, str]:
    """What a node of an ``nodes``-node cluster sets on top of the single broker's properties:
    internal topics (consumer offsets, transactions) and auto-created defaults replicated like
    Floodgate's own topics, so no topic depends on one node."""
    replication, min_isr = cluster_replication(nodes)
    return {
        "offsets.topic.replication.factor": str(replication),
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min_isr),
        "default.replication.factor": str(replication),
        "min.insync.replicas": str(min_isr),
        # Two cores for three JVMs: fewer threads per node than the single broker's 2 + 4.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.replica.fetchers": "1",
    }


@dataclass(frozen=True)
class ClusterInfo:
    nodes: tuple[BrokerInfo, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)


class LocalCluster:
    def __init__(self, home: Path, *, nodes: int, version: str, cache_dir: Path, heap: str = NODE_HEAP) -> None:
        if nodes < 2:
            raise BrokerError("a local cluster has at least 2 nodes; one node is `floodgate broker start`")
        self.home = home
        self.size = nodes
        self.version = version
        self.cache_dir = cache_dir
        self.heap = heap
        self._nodes: dict[int, LocalBroker] = {}

    @property
    def _state_file(self) -> Path:
        return self.home / "cluster.json"

    @staticmethod
    def exists(home: Path) -> bool:
        """Whether ``home`` holds a cluster (rather than a single broker)."""
        return (home / "cluster.json").exists()

    @classmethod
    def open(cls, home: Path, *, version: str, cache_dir: Path, heap: str = NODE_HEAP) -> LocalCluster:
        """The cluster recorded in ``home`` (for ``status`` and ``stop``)."""
        state = json.loads((home / "cluster.json").read_text())
        return cls(home, nodes=len(state["nodes"]), version=version, cache_dir=cache_dir, heap=heap)

    def node(self, node_id: int) -> LocalBroker:
        """Node ``node_id`` (1-based), built from the recorded ports and cluster id."""
        if node_id not in self._nodes:
            state = self._state()
            nodes = state["nodes"]
            assert isinstance(nodes, dict)
            quorum = {int(n): int(ports["controller_port"]) for n, ports in nodes.items()}
            self._nodes[node_id] = LocalBroker(
                self.home / f"node-{node_id}", version=self.version, cache_dir=self.cache_dir, heap=self.heap,
                node_id=node_id, quorum=quorum, properties=cluster_properties(self.size),
                cluster_id=str(state["cluster_id"]))
        return self._nodes[node_id]

    def log_file(self, node_id: int) -> Path:
        return self.home / f"node-{node_id}" / "broker.log"

    def _state(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self._state_file.read_text())
        return data

    def _ports(self, node_id: int) -> dict[str, int]:
        nodes = self._state()["nodes"]
        assert isinstance(nodes, dict)
        ports = nodes[str(node_id)]
        return {"port": int(ports["port"]), "controller_port": int(ports["controller_port"])}

    # ------------------------------------------------------------------ status
    def info(self) -> list[BrokerInfo | None]:
        """Each node's running broker, or None for a node that is down."""
        if not self._state_file.exists():
            return [None] * self.size
        return [self.node(i).info() for i in range(1, self.size + 1)]

    # ------------------------------------------------------------------- start
    def start(self, *, port: int = 0, detach: bool = True, timeout: float = 120.0) -> ClusterInfo:
        """Start every node that is not running and wait until the cluster serves metadata with
        all nodes registered. ``port`` is node 1's listener; node N takes ``port + N - 1``.

        The first start records fresh ports and a cluster id; later starts reuse them (a node's
        storage belongs to that cluster id). Ports that turn out taken by someone else on a first
        start are drawn again."""
        for attempt in range(3):
            first = not self._state_file.exists()
            if first:
                self._record(port)
            try:
                return self._start(detach=detach, timeout=timeout)
            except BrokerError as exc:
                if not first or port or attempt == 2 or "Address already in use" not in str(exc):
                    raise
                self.stop()
                self._forget()
        raise AssertionError("unreachable")

    def _record(self, port: int) -> None:
        # Recorded ports are reused when a node restarts, maybe a minute after it died: drawn below
        # the ephemeral range, where no outgoing connection can have taken them meanwhile.
        ports = {}
        drawn = quiet_ports(2 * self.size)
        for i in range(1, self.size + 1):
            listener = port + i - 1 if port else drawn + i - 1
            if port and port_in_use(listener):
                raise BrokerError(f"port {listener} (node {i}) is already in use by another process; "
                                  "choose another with --port")
            ports[str(i)] = {"port": listener, "controller_port": drawn + self.size + i - 1}
        self.home.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"cluster_id": new_cluster_id(), "nodes": ports}, indent=1))

    def _forget(self) -> None:
        self._state_file.unlink(missing_ok=True)
        self._nodes.clear()
        for i in range(1, self.size + 1):
            meta = self.home / f"node-{i}" / "data" / "meta.properties"
            meta.unlink(missing_ok=True)  # formatted for the forgotten cluster id

    def _start(self, *, detach: bool, timeout: float) -> ClusterInfo:
        down = [i for i, running in enumerate(self.info(), start=1) if running is None]
        # Formatting is a JVM run per node: prepare the nodes side by side, then start them from
        # this thread (a child tied to its parent would die with a pool thread).
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            prepared = list(pool.map(lambda i: (i, self.node(i).prepare(**self._ports(i))), down))
        launched = []
        try:
            for i, spec in prepared:
                launched.append((i, self.node(i).spawn(spec, detach=detach)))
            for i, info in launched:
                self.node(i).wait(info, timeout=timeout)
            infos = tuple(node for node in self.info() if node is not None)
            wait_for_brokers(",".join(i.bootstrap for i in infos), self.size, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return ClusterInfo(infos)

    def _launch(self, node_id: int, detach: bool) -> BrokerInfo:
        return self.node(node_id).launch(**self._ports(node_id), detach=detach)

    def start_node(self, node_id: int, *, detach: bool = False, timeout: float = 120.0) -> BrokerInfo:
        """Restart one node (after ``kill_node`` or a crash) on its ports, with its storage."""
        info = self._launch(node_id, detach)
        self.node(node_id).wait(info, timeout=timeout)
        return info

    # -------------------------------------------------------------------- stop
    def kill_node(self, node_id: int) -> int:
        """SIGKILL one node (fault tests); returns its pid."""
        import os
        import signal

        info = self.node(node_id).info()
        if info is None:
            raise BrokerError(f"node {node_id} is not running")
        os.kill(info.pid, signal.SIGKILL)
        self.node(node_id).stop()  # reaps the process and clears its pid file
        return info.pid

    def stop(self) -> bool:
        """Stop every node. Returns False when none was running."""
        if not self._state_file.exists():
            return False
        # Side by side: a node stopped after the others would wait out its controlled shutdown
        # for a quorum that is gone already.
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            stopped = list(pool.map(lambda i: self.node(i).stop(), range(1, self.size + 1)))
        return any(stopped)


def wait_for_brokers(bootstrap: str, count: int, *, timeout: float) -> None:
    """Wait until the cluster's metadata lists ``count`` brokers."""
    import time

    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            seen = len(admin.list_topics(timeout=2).brokers)
            if seen >= count:
                return
        except Exception:  # not ready yet
            pass
        time.sleep(0.2)
    raise BrokerError(f"the cluster at {bootstrap} listed {seen} of {count} brokers after {timeout:.0f}s")


def run_cli(action: str, home: Path, *, nodes: int, version: str, cache_dir: Path, port: int,
            timeout: float) -> int:
    """``floodgate broker start|stop|status`` for a cluster: every action acts on every node."""
    import sys

    if action == "start":
        if nodes > 1 and (home / "broker.json").exists():
            raise BrokerError(f"a single broker runs from {home}; stop it first or choose another --dir")
        if LocalCluster.exists(home) and nodes > 1:
            recorded = LocalCluster.open(home, version=version, cache_dir=cache_dir)
            if recorded.size != nodes:
                raise BrokerError(f"{home} holds a {recorded.size}-node cluster; stop it and remove the "
                                  f"directory, or choose another --dir, for {nodes} nodes")
        cluster = (LocalCluster.open(home, version=version, cache_dir=cache_dir) if nodes <= 1
                   else LocalCluster(home, nodes=nodes, version=version, cache_dir=cache_dir))
        info = cluster.start(port=port, detach=True, timeout=timeout)
        replication, min_isr = cluster_replication(cluster.size)
        print(f"broker={info.bootstrap}")
        for i, node in enumerate(info.nodes, start=1):
            print(f"node-{i} pid={node.pid} log={cluster.log_file(i)}", file=sys.stderr)
        print(f"set FLOODGATE_REPLICATION_FACTOR={replication} FLOODGATE_MIN_INSYNC_REPLICAS={min_isr} "
              "for Floodgate's topics on this cluster", file=sys.stderr)
        return 0
    if not LocalCluster.exists(home):
        print("no broker running")
        return 3
    cluster = LocalCluster.open(home, version=version, cache_dir=cache_dir)
    if action == "stop":
        print("stopped" if cluster.stop() else "no broker running")
        return 0
    running = cluster.info()
    up = [info for info in running if info is not None]
    if not up:
        print("no broker running")
        return 3
    print(f"broker={','.join(info.bootstrap for info in up)} nodes={len(up)}/{cluster.size}")
    for i, maybe in enumerate(running, start=1):
        print(f"node-{i} " + (f"{maybe.bootstrap} pid={maybe.pid} version={maybe.version}" if maybe else "down"))
    return 0 if len(up) == cluster.size else 1
