"""A server binary from Debian's packages (nginx, redis-server) run by the bench as its own child:
in a directory of its own, on a free loopback port, dying with the bench, stopped with SIGTERM."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from floodgate.errors import FloodgateError
from floodgate.procs import die_with_parent, free_port


class Daemon:
    name = "daemon"
    log_name = "stdout.log"  # the file whose tail explains a failed start

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The argv to run (after writing any configuration into ``prefix``)."""
        raise NotImplementedError

    def ready(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self, timeout: float = 15.0) -> Self:
        self.prefix.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with open(self.prefix / "stdout.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=die_with_parent)  # as devstack: dies with us
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise FloodgateError(f"{self.name} exited with {self.proc.returncode}: {self._tail()}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise FloodgateError(f"{self.name} did not listen within {timeout:.0f}s: {self._tail()}")
            time.sleep(0.05)

    def _tail(self) -> str:
        try:
            return (self.prefix / self.log_name).read_text()[-800:]
        except OSError:
            return f"(no {self.log_name})"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown, redis's clean one
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
