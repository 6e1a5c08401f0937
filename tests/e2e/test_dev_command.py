"""`floodgate dev` as a developer runs it: the embedded default (its own broker), the
machine-readable lines, a working API, and SIGTERM leaving no process behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def test_dev_prints_addresses_serves_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOODGATE_KAFKA_BOOTSTRAP"}
    proc = subprocess.Popen([sys.executable, "-m", "floodgate.cli", "dev", "--api-port", "0", "--home", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 180
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            lines[key] = value
            if line.strip() == "ready" or time.monotonic() > deadline:
                break
        assert "ready" in lines, f"no 'ready' line; got {lines}"
        assert lines["api"].startswith("http://127.0.0.1:")
        assert lines["simulator"].startswith("http://127.0.0.1:")
        assert lines["broker"].startswith("127.0.0.1:")
        with urllib.request.urlopen(lines["api"] + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        descendants = _children(proc.pid)
        assert len(descendants) >= 4, "broker, simulator, API and worker run as children"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
    assert code == 0
    survivors = [p for p in descendants if _alive(p)]
    assert not survivors, f"processes left behind: {survivors}"
