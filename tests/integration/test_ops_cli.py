"""`floodgate audit` and `floodgate plan` as an operator runs them: real processes, real files
(no broker needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def floodgate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOODGATE_")}
    return subprocess.run([sys.executable, "-m", "floodgate.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**base, **env})


def routing(tmp_path: Path, *, kind: str = "simulator", timeout: float | None = None,
            render: dict[str, object] | None = None) -> str:
    connection: dict[str, object] = {"base_url": "http://127.0.0.1:9", "api_key": "env:KLING_KEY",
                                     "webhook_secret": "dev:simulator-webhook-secret"}
    if timeout is not None:
        connection["timeout"] = timeout
    target: dict[str, object] = {"provider": "kling", "provider_model": "kling-2.1",
                                 "render_time": render or {"kind": "uniform", "min": 30, "max": 180},
                                 "price_per_second": 0.05}
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"providers": {"kling": {"kind": kind, "concurrency_limit": 10,
                                                        "connection": connection}},
                                "routes": {"kling-2.1": [target]}}))
    return str(path)


def test_audit_of_a_good_chain_passes(tmp_path: Path) -> None:
    result = floodgate("audit", "--routing", routing(tmp_path), FLOODGATE_WEBHOOK_BASE_URL="https://hooks.example")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 warn, 0 fail" in result.stdout
    assert "slowest job 180s" in result.stdout


def test_audit_of_a_misconfigured_chain_fails(tmp_path: Path) -> None:
    # A 10 s load balancer, a 2-minute job timeout for 3-minute renders, and a provider that holds
    # calls 60 s behind a 30 s client timeout.
    result = floodgate("audit", "--routing", routing(tmp_path, kind="replicate", timeout=30), "--lb-idle", "10",
                       FLOODGATE_JOB_TIMEOUT="120")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for link in ("load balancer vs SSE keep-alive", "kling: HTTP timeout vs held calls",
                 "kling: job timeout vs slowest render", "outgoing webhooks vs receivers"):
        assert any(line.startswith("FAIL") and link in line for line in lines), (link, result.stdout)
    assert "fix: set FLOODGATE_JOB_TIMEOUT to at least 270" in result.stdout
    assert "Traceback" not in result.stderr


def test_plan_prints_the_table_and_draws_the_queue(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "queue.png"
    result = floodgate("plan", "--routing", routing(tmp_path), "--peak", "120/min", "--for", "10m",
                       "--target-wait", "5m", "--png", str(png))
    assert result.returncode == 0, result.stderr
    # 2/s for 600 s into 10 slots of 105 s: served at 10/105 per s; the line peaks at
    # (2 - 0.0952) * 600 = 1143 and the 1200 jobs cost 1200 x 105 s x 0.05.
    row = next(line for line in result.stdout.splitlines() if line.startswith("kling "))
    assert row.split()[1:4] == ["10", "1200", "120.0"]
    assert " 1143 " in row and "6,300.00" in row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_reads_an_arrivals_file(tmp_path: Path) -> None:
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text("seconds,model\n" + "".join(f"{i / 10},kling-2.1\n" for i in range(600)))
    result = floodgate("plan", "--routing", routing(tmp_path), "--arrivals", str(arrivals), "--png", "")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("kling "))
    assert row.split()[2] == "600"


def test_plan_without_a_traffic_shape_says_what_to_give(tmp_path: Path) -> None:
    result = floodgate("plan", "--routing", routing(tmp_path))
    assert result.returncode == 2 and "--peak RATE --for DURATION" in result.stderr
