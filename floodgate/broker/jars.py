"""Fetch the official Kafka broker jars from Maven Central, once, into a cache outside the repo."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from floodgate.errors import BrokerError

POM = Path(__file__).with_name("pom.xml")
_MARKER = ".complete"

INSTALL_HINT = (
    "Install a Java 17+ runtime and Maven (Debian: apt-get update && apt-get install -y "
    "openjdk-17-jre-headless maven), or run Kafka with Docker instead: `docker compose up -d kafka` "
    "and set FLOODGATE_KAFKA_BOOTSTRAP=127.0.0.1:9092."
)


def java_binary() -> str:
    """The java executable (JAVA_HOME wins), checked to be version 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(f"Java was not found. {INSTALL_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"could not run {java} -version: {exc}. {INSTALL_HINT}") from exc
    major = _java_major(out.stderr + out.stdout)
    if major is None or major < 17:
        raise BrokerError(f"Kafka {'' if major is None else f'needs Java 17+, found Java {major}. '}{INSTALL_HINT}")
    return java


def _java_major(text: str) -> int | None:
    # `openjdk version "17.0.15" 2025-04-15` / `java version "1.8.0_392"`
    for line in text.splitlines():
        if "version" in line and '"' in line:
            version = line.split('"')[1]
            parts = version.split(".")
            try:
                return int(parts[1]) if parts[0] == "1" else int(parts[0])
            except (ValueError, IndexError):
                return None
    return None


def ensure_jars(version: str, cache_dir: Path) -> Path:
    """Return a directory holding the broker's runtime classpath, downloading it on first use.

    The download lands in a temporary sibling and is renamed into place, so an interrupted
    fetch never leaves a half-filled cache that later runs would trust.
    """
    target = cache_dir / f"kafka-{version}"
    if (target / _MARKER).exists():
        return target
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(f"Maven (mvn) was not found; it fetches the Kafka jars once. {INSTALL_HINT}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=cache_dir))
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-Dkafka.version={version}", f"-DoutputDirectory={staging}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=str(cache_dir))
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError("Maven did not finish fetching the Kafka jars within 15 minutes") from exc
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"Maven could not fetch org.apache.kafka:kafka_2.13:{version}:\n{tail}")
    (staging / _MARKER).write_text(version)
    if target.exists():  # another process won the race; keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(target)
    return target
