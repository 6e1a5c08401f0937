"""`floodgate broker start|status|stop` as a user runs it: a real broker that kcat can list,
a clean stop, clear messages for a stale pid file and a busy port."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka


def floodgate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "floodgate.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def test_start_list_with_kcat_status_stop(tmp_path: Path) -> None:
    state = str(tmp_path / "broker")
    started = floodgate("broker", "start", "--dir", state)
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().removeprefix("broker=")
        kcat = shutil.which("kcat")
        assert kcat, "kcat is missing: `make test` installs it"
        listing = subprocess.run([kcat, "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stderr
        assert "1 brokers:" in listing.stdout and f"at {bootstrap}" in listing.stdout
        status = floodgate("broker", "status", "--dir", state)
        assert status.returncode == 0 and f"broker={bootstrap}" in status.stdout
        again = floodgate("broker", "start", "--dir", state)  # idempotent: the same broker
        assert again.stdout.strip() == started.stdout.strip()
    finally:
        stopped = floodgate("broker", "stop", "--dir", state)
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped"
    pid_file = Path(state) / "broker.json"
    pid = json.loads(pid_file.read_text())["pid"] if pid_file.exists() else None
    assert pid is None, "the pid file is removed on stop"
    after = floodgate("broker", "status", "--dir", state)
    assert after.returncode == 3 and "no broker running" in after.stdout


def test_stale_pid_file_is_cleared(tmp_path: Path) -> None:
    state = tmp_path / "broker"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (state / "broker.json").write_text(
        json.dumps({"pid": dead.pid, "port": 1, "controller_port": 2, "version": "3.9.1"}))
    status = floodgate("broker", "status", "--dir", str(state))
    assert status.returncode == 3 and "no broker running" in status.stdout
    assert not (state / "broker.json").exists()


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = floodgate("broker", "start", "--dir", str(tmp_path / "b"), "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broker_handed_a_port_another_broker_holds_moves_to_its_own(kafka_bootstrap: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two test sessions starting brokers at once can draw the same free port: the one that loses
    the bind must not take the other's answer for its own (it did, and lost its broker when the
    other session ended), but move to a port of its own."""
    from confluent_kafka.admin import AdminClient

    from floodgate.broker import local
    from floodgate.settings import Settings

    taken = int(kafka_bootstrap.rpartition(":")[2])  # a live broker of another cluster
    real_free_port = local.free_port
    draws = iter([taken])
    monkeypatch.setattr(local, "free_port", lambda: next(draws, None) or real_free_port())
    settings = Settings.from_env()
    broker = local.LocalBroker(tmp_path / "b", version=settings.kafka_version, cache_dir=settings.cache_dir,
                               heap="512m")
    info = broker.start(detach=False, timeout=90)
    try:
        assert info.port != taken
        md = AdminClient({"bootstrap.servers": info.bootstrap}).list_topics(timeout=10)
        assert md.cluster_id == broker.cluster_id() is not None
    finally:
        broker.stop()
