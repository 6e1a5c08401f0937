"""`floodgate dev --brokers 3`: the stack on a three-node local cluster, with every topic it
creates (Floodgate's own and the worker's table changelogs) replicated 3 times with
min.insync.replicas 2. Slow: three JVMs, then the stack."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_dev_with_three_brokers_replicates_every_topic(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOODGATE_KAFKA_BOOTSTRAP"}
    proc = subprocess.Popen([sys.executable, "-m", "floodgate.cli", "dev", "--brokers", "3", "--api-port", "0",
                             "--home", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            lines[key] = value
            if line.strip() == "ready" or time.monotonic() > deadline:
                break
        assert "ready" in lines, f"no 'ready' line; got {lines}"
        assert len(lines["broker"].split(",")) == 3
        with urllib.request.urlopen(lines["api"] + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        admin = AdminClient({"bootstrap.servers": lines["broker"]})
        topics = {name: t for name, t in admin.list_topics(timeout=30).topics.items() if not name.startswith("__")}
        assert any(name.startswith("floodgate.dispatch.") for name in topics)
        assert any("changelog" in name for name in topics), sorted(topics)
        for name, topic in topics.items():
            assert all(len(p.replicas) == 3 for p in topic.partitions.values()), name
        configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in topics])
        for resource, fut in configs.items():
            assert fut.result(timeout=30)["min.insync.replicas"].value == "2", resource.name
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 0
