"""Missing or old Java, or missing Maven: a message saying what to install (or to use Docker),
never a stack trace."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from floodgate.broker.jars import ensure_jars, java_binary
from floodgate.errors import BrokerError


def _fake_java(tmp_path: Path, version_line: str) -> Path:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return home


def test_old_java_is_refused_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, 'java version "1.8.0_392"')))
    with pytest.raises(BrokerError) as err:
        java_binary()
    assert "Java 17+" in str(err.value) and "found Java 8" in str(err.value)
    assert "docker compose up -d kafka" in str(err.value)


def test_new_java_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, 'openjdk version "21.0.2" 2024-01-16')))
    assert java_binary().endswith("/bin/java")


def test_missing_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(BrokerError, match="Java was not found.*apt-get install"):
        java_binary()


def test_missing_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn here
    with pytest.raises(BrokerError, match="Maven \\(mvn\\) was not found"):
        ensure_jars("3.9.1", tmp_path / "cache")


def test_cli_reports_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "nowhere"), "FLOODGATE_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "floodgate.cli", "broker", "start", "--dir", str(tmp_path / "b")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("floodgate: Java was not found")
    assert "Traceback" not in result.stderr
