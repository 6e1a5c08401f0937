"""The chaos report: one row per scenario in ``<dir>/report.md`` and the full figures in
``<dir>/results.json``, rewritten after every scenario so an interrupted run keeps what it did."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from floodgate.chaos.checker import Verdict

EVIDENCE = 5
"""Job ids quoted per failing figure: enough to look them up in the logs, not a dump."""


def row(verdict: Verdict, title: str, size: str) -> dict[str, Any]:
    to_next, to_half = verdict.recovery_summary()
    return {
        "scenario": verdict.scenario, "title": title, "size": size, "passed": verdict.passed,
        "accepted": verdict.accepted, "terminal": verdict.terminal, "completed": verdict.completed,
        "failed": verdict.failed, "lost": len(verdict.lost), "duplicated": verdict.duplicated_count,
        "over_limit": verdict.over_limit_count, "stuck": len(verdict.stuck),
        "unstored_requests": len(verdict.unstored_requests), "unstored_webhooks": len(verdict.unstored_webhooks),
        "conflicting": len(verdict.conflicting), "max_concurrency": verdict.max_concurrency,
        "faults": len(verdict.recoveries), "worst_to_next_completion_s": to_next, "worst_to_half_rate_s": to_half,
        "median_to_half_rate_s": verdict.median_recovery(), "duration_s": round(verdict.duration, 1),
        "evidence": {
            "lost": verdict.lost[:EVIDENCE], "stuck": verdict.stuck[:EVIDENCE],
            "duplicated": dict(list(verdict.duplicated.items())[:EVIDENCE]),
            "over_limit": verdict.over_limit, "unstored_requests": verdict.unstored_requests[:EVIDENCE],
            "unstored_webhooks": verdict.unstored_webhooks[:EVIDENCE], "conflicting": verdict.conflicting[:EVIDENCE],
        },
        "recoveries": [asdict(r) for r in verdict.recoveries],
        "notes": verdict.notes,
    }


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _sentence(note: str) -> str:
    """Notes come from several places, some ending with a full stop and some not."""
    note = note.strip()
    return note if note.endswith((".", "!", "?")) else note + "."


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Chaos report", "",
        "| scenario | jobs | accepted | terminal | lost | duplicated | over-limit | stuck | unstored | faults "
        "| to next completion (worst, s) | to half rate (median / worst, s) | bar |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        unstored = r["unstored_requests"] + r["unstored_webhooks"]
        lines.append(
            f"| {r['scenario']} | {r['size']} | {r['accepted']} | {r['terminal']} | {r['lost']} | {r['duplicated']} "
            f"| {r['over_limit']} | {r['stuck']} | {unstored} | {r['faults']} | {_s(r['worst_to_next_completion_s'])} "
            f"| {_s(r['median_to_half_rate_s'])} / {_s(r['worst_to_half_rate_s'])} "
            f"| {'met' if r['passed'] else '**NOT MET**'} |")
    lines += ["", "## Scenarios", ""]
    for r in rows:
        lines.append(f"- **{r['scenario']}**: {r['title']}. {r['completed']} completed, {r['failed']} failed; "
                     f"peak provider concurrency {r['max_concurrency']}; {r['duration_s']} s. "
                     + " ".join(_sentence(note) for note in r["notes"]))
        if not r["passed"]:
            lines.append(f"  - evidence: `{json.dumps(r['evidence'])}`")
    return "\n".join(lines) + "\n"


def record(directory: Path, verdict: Verdict, title: str, size: str) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in rows if r["scenario"] != verdict.scenario] + [row(verdict, title, size)]
    path.write_text(json.dumps(rows, indent=2))
    (directory / "report.md").write_text(markdown(rows))
    return rows[-1]
