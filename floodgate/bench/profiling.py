"""Where the time goes: py-spy samples a running process from outside (no code changes, no
restart) and ``summarize`` turns its collapsed stacks into shares per function and per layer."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# First match wins; paths are matched as substrings of the frame's file.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Floodgate code", ("/floodgate/", "/streams/", "/connectors/")),
    ("Avro (fastavro)", ("fastavro",)),
    ("Kafka client (aiokafka/librdkafka)", ("/aiokafka/", "confluent_kafka", "/kafka/")),
    ("Faust/mode runtime", ("/faust/", "/mode/")),
    ("HTTP (aiohttp/yarl/multidict)", ("/aiohttp/", "/yarl/", "/multidict/")),
    ("waiting for I/O (epoll)", ("selectors.py",)),
    ("asyncio event loop", ("/asyncio/", "uvloop")),
    ("logging", ("/logging/",)),
)


def py_spy() -> str | None:
    """The py-spy binary: next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> tuple[str | None, str]:
    """Sample ``pid`` for ``seconds``; returns (collapsed stacks or None, a note on what happened)."""
    binary = py_spy()
    if binary is None:
        return None, "py-spy not installed (pip install -e '.[dev]')"
    cmd = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
           "--format", "raw", "--output", str(out), "--nonblocking", "--full-filenames"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired:
        return None, "py-spy did not finish"
    if done.returncode != 0 or not out.exists():
        return None, f"py-spy failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return out.read_text(), "ok"


def _frame(text: str) -> tuple[str, str]:
    name, _, where = text.rpartition(" (")
    if not name:
        return text, ""
    path = where.rstrip(")").rsplit(":", 1)[0]
    return name, path


def layer(path: str) -> str:
    for name, needles in LAYERS:
        if any(n in path for n in needles):
            return name
    return "other (stdlib, C extensions' callers)"


def _label(name: str, path: str) -> str:
    short = "/".join(path.split("/")[-2:]) if path else "?"
    return f"{name} ({short})"


def _task_frames(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The frames of the running task: those above the event loop's ``Handle._run``. Below it sit
    entry points (``main``, ``run``) that every sample shares and that say nothing."""
    last = max((i for i, (_, path) in enumerate(frames) if path.endswith("asyncio/events.py")), default=None)
    return [] if last is None else frames[last + 1:]


def summarize(collapsed: str, top: int = 8) -> dict[str, Any]:
    """Shares of samples: by leaf function (self time), by our functions anywhere on the stack
    (inclusive), and by layer of the leaf frame."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        leaf_name, leaf_path = frames[-1]
        self_time[_label(leaf_name, leaf_path)] += count
        layers[layer(leaf_path)] += count
        for label in {_label(n, p) for n, p in _task_frames(frames) if layer(p) == "Floodgate code"}:
            inclusive[label] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"where": k, "share": round(v / total, 3)} for k, v in counter.most_common(top)] if total else []

    return {"samples": total, "self": shares(self_time), "floodgate_inclusive": shares(inclusive),
            "layers": shares(layers)}
