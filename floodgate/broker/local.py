"""A single-node KRaft Kafka broker run from the official jars, for dev and tests (no Docker).

State lives in one directory (``home``): ``server.properties``, ``data/``, ``broker.log``,
``broker.json`` (pid and address). ``start`` is idempotent for a live broker, clears a stale pid
file, refuses a busy port with a clear message, and waits (with a deadline) until the broker
answers a metadata request.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from floodgate.broker.jars import ensure_jars, java_binary
from floodgate.errors import BrokerError
from floodgate.procs import die_with_parent, free_port, pid_alive, port_in_use

# Settings chosen for a one-node dev/test broker; each one is explained in README ("Local broker").
BROKER_PROPERTIES = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    "delete.topic.enable": "true",
    "log.retention.hours": "24",
    "log.segment.bytes": str(64 * 1024 * 1024),
    "num.network.threads": "2",
    "num.io.threads": "4",
    "group.min.session.timeout.ms": "1000",
}


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    controller_port: int
    version: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalBroker:
    def __init__(self, home: Path, *, version: str, cache_dir: Path, heap: str = "1g", node_id: int = 1,
                 quorum: Mapping[int, int] | None = None, properties: Mapping[str, str] | None = None,
                 cluster_id: str | None = None) -> None:
        """``node_id``, ``quorum`` (node id → controller port of every voter), ``properties`` (overrides
        of ``BROKER_PROPERTIES``) and ``cluster_id`` (the id to format storage with) are for a node of
        a multi-node cluster (``floodgate.broker.cluster``); a single broker needs none of them."""
        self.home = home
        self.version = version
        self.cache_dir = cache_dir
        self.heap = heap
        self.node_id = node_id
        self.quorum = dict(quorum) if quorum else None
        self.properties = dict(properties or {})
        self.format_cluster_id = cluster_id
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def _state_file(self) -> Path:
        return self.home / "broker.json"

    # ------------------------------------------------------------------ status
    def info(self) -> BrokerInfo | None:
        """The running broker recorded in ``home``, or None (a stale record is removed)."""
        try:
            data = json.loads(self._state_file.read_text())
            info = BrokerInfo(int(data["pid"]), int(data["port"]), int(data["controller_port"]), str(data["version"]))
        except (OSError, ValueError, KeyError):
            return None
        if not pid_alive(info.pid):
            self._state_file.unlink(missing_ok=True)
            return None
        return info

    # ------------------------------------------------------------------- start
    def start(self, *, port: int = 0, detach: bool = True, timeout: float = 60.0) -> BrokerInfo:
        """Start the broker (or return the one already running) and wait until it serves metadata.

        ``detach=True`` lets it outlive this process (``floodgate broker start``); ``False`` ties
        its life to this process, so a crashed test run leaves no broker behind.
        """
        running = self.info()
        if running:
            if port and port != running.port:
                raise BrokerError(f"a broker is already running at {running.bootstrap} (pid {running.pid}); "
                                  "stop it first")
            wait_ready(running.bootstrap, timeout=timeout, proc=None, log_file=self.log_file,
                       cluster_id=self.cluster_id())
            return running
        for attempt in range(3):
            try:
                return self._start(port=port, detach=detach, timeout=timeout)
            except BrokerError as exc:
                # A free port we picked can be taken by someone else before the JVM binds it;
                # with ports of our own choosing, pick again. A port the user chose is final.
                if port or attempt == 2 or "Address already in use" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    def _start(self, *, port: int, detach: bool, timeout: float) -> BrokerInfo:
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        info = self.launch(port=port, controller_port=free_port(), detach=detach)
        self.wait(info, timeout=timeout, log_start=log_start)
        return info

    def launch(self, *, port: int, controller_port: int, detach: bool) -> BrokerInfo:
        """Write the configuration, format storage on first use and start the JVM; do not wait.

        A node of a cluster cannot answer before a majority of the controllers runs, so a cluster
        launches every node first and then waits for each (``wait``)."""
        return self.spawn(self.prepare(port=port, controller_port=controller_port), detach=detach)

    def prepare(self, *, port: int, controller_port: int) -> tuple[list[str], int, int]:
        """Write the configuration and format storage on first use: (JVM command, port,
        controller port) for ``spawn``. Safe to run from any thread (``spawn`` is not: a child
        tied to its parent dies with the thread that started it)."""
        java = java_binary()
        jars = ensure_jars(self.version, self.cache_dir)
        if port and port_in_use(port):
            raise BrokerError(f"port {port} is already in use by another process; "
                              "choose another with --port or FLOODGATE_BROKER_PORT")
        port = port or free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        data_dir = self.home / "data"
        props = self.home / "server.properties"
        self._write_properties(props, port, controller_port, data_dir)
        self._write_log4j()
        classpath = f"{jars}/*"
        jvm = [java, "-Xms128m", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}", f"-Dkafka.logs.dir={self.home}",
               "-cp", classpath]
        if not (data_dir / "meta.properties").exists():
            self._format(jvm, props)
        return [*jvm, "kafka.Kafka", str(props)], port, controller_port

    def spawn(self, prepared: tuple[list[str], int, int], *, detach: bool) -> BrokerInfo:
        """Start the JVM ``prepare`` described, from the calling thread."""
        command, port, controller_port = prepared
        with open(self.log_file, "ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                command,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(self.home), start_new_session=detach,
                preexec_fn=None if detach else die_with_parent,
            )
        self._proc = proc
        info = BrokerInfo(proc.pid, port, controller_port, self.version)
        self._state_file.write_text(json.dumps({"pid": proc.pid, "port": port, "controller_port": controller_port,
                                                "version": self.version}))
        return info

    def wait(self, info: BrokerInfo, *, timeout: float, log_start: int = 0) -> None:
        """Wait until the launched broker answers a metadata request; stop it and raise if it does not."""
        try:
            wait_ready(info.bootstrap, timeout=timeout, proc=self._proc, log_file=self.log_file,
                       cluster_id=self.cluster_id())
        except BrokerError as exc:
            self.stop()
            with open(self.log_file, "rb") as f:
                f.seek(log_start)
                lost_bind = b"Address already in use" in f.read()
            if lost_bind and "Address already in use" not in str(exc):
                # The bind error is far above the tail the message shows; ``start`` retries on it.
                raise BrokerError(
                    f"{exc}\n(the broker could not bind port {info.port}: Address already in use)") from exc
            raise

    def _write_properties(self, path: Path, port: int, controller_port: int, data_dir: Path) -> None:
        props = dict(BROKER_PROPERTIES)
        props.update({
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(
                f"{node}@127.0.0.1:{cport}" for node, cport in sorted((self.quorum or {1: controller_port}).items())),
            "log.dirs": str(data_dir),
        })
        props.update(self.properties)
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def _write_log4j(self) -> None:
        (self.home / "log4j.properties").write_text(
            "log4j.rootLogger=INFO, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={self.log_file}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
            "log4j.logger.state.change.logger=WARN\nlog4j.logger.kafka.request.logger=WARN\n"
        )

    def cluster_id(self) -> str | None:
        """The cluster id this broker's storage was formatted with (None before formatting)."""
        meta = self.home / "data" / "meta.properties"
        if not meta.exists():
            return None
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.partition("=")[2].strip()
        return None

    def _format(self, jvm: list[str], props: Path) -> None:
        cluster_id = self.format_cluster_id or new_cluster_id()
        proc = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                              capture_output=True, text=True, timeout=120, cwd=str(self.home))
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    # -------------------------------------------------------------------- stop
    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker recorded in ``home``. Returns False when none was running."""
        info = self.info()
        pid = info.pid if info else (self._proc.pid if self._proc and self._proc.poll() is None else None)
        if pid is None:
            return False
        _terminate(pid, timeout, self._proc if self._proc and self._proc.pid == pid else None)
        self._state_file.unlink(missing_ok=True)
        self._proc = None
        return True


def new_cluster_id() -> str:
    """A random KRaft cluster id (22 characters of URL-safe base64)."""
    cluster_id = "-"
    while cluster_id.startswith("-"):  # the storage tool would read a leading '-' as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def _terminate(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(timeout=10)


def wait_ready(bootstrap: str, *, timeout: float, proc: subprocess.Popen[bytes] | None, log_file: Path | None,
               cluster_id: str | None = None) -> None:
    """Poll until the broker answers a metadata request; fail fast if its process exits.

    With ``cluster_id``, only that cluster counts: two brokers started at once can be handed the
    same free port, and the one that loses the bind must not take the winner's answer for its
    own (it then exits with "Address already in use", which ``start`` retries on another port)."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    host, _, port = bootstrap.rpartition(":")
    admin = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the Kafka broker exited with code {proc.returncode} during start-up:\n"
                              f"{_tail(log_file)}")
        if port_in_use(int(port)):
            if admin is None:
                admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
            try:
                md = admin.list_topics(timeout=2)
                if md.brokers and (cluster_id is None or md.cluster_id == cluster_id):
                    return
            except Exception:  # any failure here just means "not ready yet"
                pass
        if time.monotonic() > deadline:
            raise BrokerError(f"the Kafka broker at {bootstrap} did not answer within {timeout:.0f}s:\n"
                              f"{_tail(log_file)}")
        time.sleep(0.2)


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
