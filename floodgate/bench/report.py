"""The report: ``report.json`` (every number), ``report.md`` (tables, plots, what limits each
number) and the summary table printed at the end of a run."""
from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import orjson

from floodgate.bench.limits import limits
from floodgate.bench.markdown import markdown, targets_table
from floodgate.bench.targets import evaluate


def clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf → None, floats rounded, tuples → lists."""
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(),
            "git_commit": _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
            "modified_files": dirty,
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def build(results: dict[str, Any], meta: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    return {"meta": meta, "targets": evaluate(results), "limits": limits(results, meta["machine"]["cpus"]),
            "results": results, "notes": notes}


def summary_table(report: dict[str, Any]) -> str:
    return targets_table(report["targets"])


def write(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    report = clean(report)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    md_path.write_text(markdown(report))
    return json_path, md_path
