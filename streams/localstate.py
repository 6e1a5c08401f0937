"""A worker's local state directory: where Faust keeps its on-disk tables.

One directory per worker (``<cache>/faust/<app id>/<worker id>``), held with an exclusive lock
for the worker's lifetime: two workers sharing one would corrupt each other's RocksDB files, so
the second fails at once, saying which setting to change.

The tables are a cache of their Kafka changelogs. A directory written against another Kafka
cluster (a local broker started afresh, a new environment) would hand Faust offsets and rows
that mean nothing there, so it is emptied when the cluster id it records differs.
"""
from __future__ import annotations

import fcntl
import logging
import shutil
import socket
from pathlib import Path
from typing import IO

from confluent_kafka.admin import AdminClient

from floodgate.errors import ConfigError
from floodgate.settings import Settings

log = logging.getLogger(__name__)

_held: list[IO[str]] = []  # lock files stay open (and locked) until the process exits


def worker_name(settings: Settings) -> str:
    """This worker's name: its table directory's, and its static member's (``static_membership``)."""
    return settings.worker_id or socket.gethostname() or "worker"


def state_dir(settings: Settings) -> Path:
    return settings.cache_dir / "faust" / settings.app_id / worker_name(settings)


def cluster_id(bootstrap: str, timeout: float = 30.0) -> str:
    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout).cluster_id or ""


def prepare(settings: Settings, cluster: str) -> Path:
    """Lock this worker's directory and make sure its contents belong to ``cluster``."""
    path = state_dir(settings)
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / ".lock", "w")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"another worker is using {path}; give each worker on this host its own "
                          "FLOODGATE_WORKER_ID") from None
    _held.append(lock)
    marker = path / "cluster-id"
    recorded = marker.read_text().strip() if marker.exists() else None
    if recorded != cluster:
        if recorded is not None:
            log.warning("local tables in %s were built against Kafka cluster %s, not %s: starting empty",
                        path, recorded, cluster)
        for child in path.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        marker.write_text(cluster + "\n")
    return path
