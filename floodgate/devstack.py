"""The whole Floodgate stack on one machine: broker, simulator, API (ingress + bridge + fan-out)
and worker(s) as child processes. ``floodgate dev`` runs it in the foreground; tests and the demo
drive it through ``Stack``.

Children are tied to this process (PR_SET_PDEATHSIG), so even a killed supervisor leaves no
process behind; a clean stop goes worker → API → simulator → broker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from floodgate.broker.cluster import LocalCluster
from floodgate.broker.local import LocalBroker
from floodgate.errors import FloodgateError
from floodgate.kafka_admin import cluster_replication
from floodgate.procs import die_with_parent
from floodgate.settings import Settings


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_start: int = 0
    """Where this run's output begins in ``log``: a restarted child appends to its predecessor's."""

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    settings: Settings
    home: Path
    api_port: int = 0
    simulator_port: int = 0
    workers: int = 1
    brokers: int = 1
    """Nodes of the local broker when it is started here (more than one: a KRaft cluster, and
    Floodgate's topics replicated across it)."""
    simulator_args: list[str] = field(default_factory=lambda: ["--preset", "dev"])
    extra_env: dict[str, str] = field(default_factory=dict)
    broker: LocalBroker | LocalCluster | None = None
    bootstrap: str = ""
    api_url: str = ""
    simulator_url: str = ""
    children: dict[str, Child] = field(default_factory=dict)
    metrics_urls: dict[str, str] = field(default_factory=dict)
    """Child name → its Prometheus endpoint (simulator, api, worker-N), for tests and benchmarks."""
    _targets_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Kills and starts may run on threads side by side (the chaos scenarios): one writer of the
    targets file at a time, or one's rename finds the other's temporary file gone."""

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 120.0) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.bootstrap = self.settings.kafka_bootstrap or self._start_broker(timeout)
            self.simulator_url = self._spawn_with_url(
                "simulator", [sys.executable, "-m", "connectors.simulator", "--host", "127.0.0.1",
                              "--port", str(self.simulator_port), *self.simulator_args], "simulator=", timeout)
            self.metrics_urls["simulator"] = f"{self.simulator_url}/metrics"
            self.start_api(timeout=timeout)
            for i in range(self.workers):
                self.start_worker(i, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def targets_file(self) -> Path:
        """The workers' metrics endpoints as a Prometheus file_sd document, for the API's dashboard
        (and for a Prometheus server pointed at it)."""
        return self.home / "metrics-targets.json"

    def write_targets(self) -> None:
        with self._targets_lock:
            urls = dict(self.metrics_urls)  # (one copy: another thread may add or drop one meanwhile)
            groups = [{"targets": [urlsplit(url).netloc],
                       "labels": {"job": name, "__metrics_path__": urlsplit(url).path}}
                      for name, url in sorted(urls.items()) if name.startswith("worker")]
            tmp = self.targets_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            os.replace(tmp, self.targets_file)  # whole, so a reader never sees half a list

    def _start_broker(self, timeout: float) -> str:
        s = self.settings
        if self.brokers > 1:
            replication, min_isr = cluster_replication(self.brokers)
            # Every child gets these through env(): topics and changelogs replicated over the nodes.
            self.settings = s.with_overrides(replication_factor=replication, min_insync_replicas=min_isr)
            self.broker = LocalCluster(self.home / "broker", nodes=self.brokers, version=s.kafka_version,
                                       cache_dir=s.cache_dir)
            return self.broker.start(port=s.broker_port, detach=False, timeout=timeout).bootstrap
        self.broker = LocalBroker(self.home / "broker", version=s.kafka_version, cache_dir=s.cache_dir,
                                  heap=s.broker_heap)
        return self.broker.start(port=s.broker_port, detach=False, timeout=timeout).bootstrap

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOODGATE_")}
        # The whole configuration (its one secret included, so tokens verify in every child).
        env.update(s.to_env())
        env.update({
            "FLOODGATE_KAFKA_BOOTSTRAP": self.bootstrap,
            "FLOODGATE_CACHE_DIR": str(self.home / "cache"),
            "FLOODGATE_ALLOW_PRIVATE_WEBHOOKS": "1",
            "FLOODGATE_SIMULATOR_URL": self.simulator_url,
            "FLOODGATE_WEBHOOK_BASE_URL": self.api_url,
            "FLOODGATE_PUBLIC_URL": self.api_url,
            "FLOODGATE_METRICS_PORT": "0",  # each worker its own endpoint, announced as metrics=URL
            # The dashboard sums the workers' metrics with the API's own; the list follows the workers.
            "FLOODGATE_DASHBOARD_TARGETS": str(self.targets_file),
            "FLOODGATE_DEV_MODE": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, argv: list[str], **env: str) -> Child:
        log = self.home / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            start = out.tell()
            proc = subprocess.Popen(argv, env={**self.env(), **env}, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        child = self.children[name] = Child(name, proc, log, start)
        return child

    def _spawn_with_url(self, name: str, argv: list[str], marker: str, timeout: float) -> str:
        child = self._spawn(name, argv)
        line = _wait_for_line(child, marker, timeout)
        return line[line.index(marker) + len(marker):].split()[0]

    def start_api(self, *, timeout: float = 120.0) -> Child:
        """Start (or, after ``kill("api")``, restart) the API. Port 0: it binds a free port itself and
        reports it (no pick-then-bind race); a restart with a fixed ``api_port`` keeps its address,
        which the workers hand to providers as the webhook base."""
        self.api_url = self._spawn_with_url(
            "api",
            [sys.executable, "-m", "floodgate.cli", "api", "--host", "127.0.0.1", "--port", str(self.api_port)],
            "api=", timeout)
        self.metrics_urls["api"] = f"{self.api_url}/metrics"
        return self.children["api"]

    def start_ingress(self, name: str = "ingress", *, timeout: float = 120.0) -> str:
        """Start an API process with the ingress role alone (``--roles ingress``: it accepts jobs
        and follows no job's changes) beside the stack's API; its URL. ``stop_child(name)`` ends it."""
        url = self._spawn_with_url(
            name, [sys.executable, "-m", "floodgate.cli", "api", "--host", "127.0.0.1", "--port", "0",
                   "--roles", "ingress"], "api=", timeout)
        self.metrics_urls[name] = f"{url}/metrics"
        return url

    def start_worker(self, index: int = 0, *, timeout: float = 120.0) -> Child:
        name = f"worker-{index}"
        child = self._spawn(name, [sys.executable, "-m", "floodgate.cli", "worker"], FLOODGATE_WORKER_ID=name)
        _wait_for_line(child, "worker=ready", timeout)
        line = _wait_for_line(child, "metrics=", timeout)
        self.metrics_urls[name] = line[line.index("metrics=") + len("metrics="):].split()[0]
        self.write_targets()
        return child

    # ------------------------------------------------------------------- stop
    def kill(self, name: str) -> None:
        """SIGKILL one child (crash tests)."""
        child = self.children.pop(name)
        self.metrics_urls.pop(name, None)
        self.write_targets()
        child.proc.kill()
        child.proc.wait(timeout=30)

    def stop_child(self, name: str, timeout: float = 30.0) -> None:
        child = self.children.pop(name, None)
        if self.metrics_urls.pop(name, None) is not None and self.home.exists():
            self.write_targets()
        if child is None or child.proc.poll() is not None:
            return
        child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=10)

    def stop(self) -> None:
        for name in sorted((n for n in self.children if n.startswith("worker")), reverse=True):
            self.stop_child(name)
        for name in ("api", "simulator"):
            self.stop_child(name)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_line(child: Child, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(child.log, "rb") as f:
                f.seek(child.log_start)
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                # Faust routes a worker's stdout through its logger, so the marker may be prefixed.
                if marker in line:
                    return line
        except OSError:
            pass
        if child.proc.poll() is not None:
            raise FloodgateError(f"{child.name} exited with code {child.proc.returncode} while starting:\n"
                                 f"{child.tail()}")
        if time.monotonic() > deadline:
            raise FloodgateError(f"{child.name} did not report '{marker}' within {timeout:.0f}s:\n{child.tail()}")
        time.sleep(0.1)


def run_foreground(stack: Stack) -> int:
    """``floodgate dev``: start, print the addresses, wait for Ctrl-C/SIGTERM, stop cleanly."""
    stopping = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        stopping["flag"] = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        print(f"api={stack.api_url}")
        print(f"page={stack.api_url}/")
        print(f"dashboard={stack.api_url}/dashboard")
        print(f"broker={stack.bootstrap}")
        print(f"simulator={stack.simulator_url}")
        print(f"logs={stack.home / 'logs'}")
        for name, url in stack.metrics_urls.items():
            print(f"metrics.{name}={url}")
        print("ready", flush=True)
        while not stopping["flag"]:
            for child in list(stack.children.values()):
                if child.proc.poll() is not None:
                    print(f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        stack.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
