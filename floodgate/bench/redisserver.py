"""Debian's ``redis-server`` as the Celery peer's broker, run as our own process on a free
loopback port with no persistence (the bench throws it away), dying with the bench.

Installed when missing by ``FLOODGATE_NEED_REDIS=1 bash dev/bootstrap.sh`` (``make bench`` sets it),
the way nginx is.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from floodgate.bench.daemon import Daemon
from floodgate.errors import FloodgateError

MISSING = "redis-server is not installed (FLOODGATE_NEED_REDIS=1 bash dev/bootstrap.sh installs it; make bench does)"


def binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).exists()), None)


class RedisServer(Daemon):
    """Debian's defaults but for these: loopback only, no snapshots or append-only file, our own
    directory and log. It listens once ready (nothing to load)."""

    name = "redis-server"
    log_name = "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        exe = binary()
        if exe is None:
            raise FloodgateError(MISSING)
        return [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.prefix), "--logfile", str(self.prefix / self.log_name), "--daemonize", "no"]
