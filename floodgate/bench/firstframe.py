"""Time to first frame: per provider and model, from the workers' milestone histograms.

After a scenario has drained, every worker's ``floodgate_time_to_first_progress_seconds`` and
``floodgate_time_to_completion_seconds`` are scraped and added up (each worker reports only its
own jobs), and each (provider, model) gets its count, mean and bucket-interpolated p50/p90 — in
wall seconds and, for a time-compressed run, in simulated seconds. A cold start at the simulator
delays the first progress, so it shows in the first column.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from floodgate.bench.limits import num

METRICS = {"first_progress": "floodgate_time_to_first_progress_seconds",
           "completion": "floodgate_time_to_completion_seconds"}


async def scrape(urls: Iterable[str]) -> list[str]:
    """The text exposition of each URL (one per worker)."""
    out = []
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.get(url) as resp:
                resp.raise_for_status()
                out.append(await resp.text())
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, linear within a bucket
    (as Prometheus's histogram_quantile does); None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # past the last finite bucket: its bound is all we know
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = bound, count
    return lower


def milestones(texts: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``"provider/model"`` → ``{provider, model, first_progress: {count, mean, p50, p90}, completion: …}``
    summed over every worker's exposition."""
    acc: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"buckets": defaultdict(float), "sum": 0.0, "count": 0.0})
    names = {v: k for k, v in METRICS.items()}
    for text in texts:
        for family in text_string_to_metric_families(text):
            key = names.get(family.name)
            if key is None:
                continue
            for sample in family.samples:
                labels = sample.labels
                slot = acc[(labels.get("provider", ""), labels.get("model", ""), key)]
                if sample.name.endswith("_bucket"):
                    slot["buckets"][float(labels["le"])] += sample.value
                elif sample.name.endswith("_sum"):
                    slot["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    slot["count"] += sample.value
    out: dict[str, dict[str, Any]] = {}
    for (provider, model, key), slot in sorted(acc.items()):
        if not slot["count"]:
            continue
        buckets = sorted(slot["buckets"].items())
        row = out.setdefault(f"{provider}/{model}", {"provider": provider, "model": model})
        row[key] = {"count": int(slot["count"]), "mean": slot["sum"] / slot["count"],
                    "p50": quantile(buckets, 0.5), "p90": quantile(buckets, 0.9)}
    return out


def _cell(d: dict[str, Any] | None, time_factor: float) -> str:
    if not d:
        return "–"
    wall = f"p50 {num(d['p50'])} / p90 {num(d['p90'])} / mean {num(d['mean'])} s"
    if time_factor == 1.0:
        return wall
    p50, p90 = (None if v is None else v / time_factor for v in (d["p50"], d["p90"]))
    sim = f"p50 {num(p50, 0)} / p90 {num(p90, 0)} s simulated"
    return f"{wall} wall ({sim})"


def section(rows: dict[str, dict[str, Any]], time_factor: float = 1.0) -> list[str]:
    """The report's "Time to first frame" section: one row per provider and model."""
    from floodgate.bench.markdown import table

    body = [[r["provider"], r["model"], str((r.get("completion") or r.get("first_progress") or {}).get("count", 0)),
             _cell(r.get("first_progress"), time_factor), _cell(r.get("completion"), time_factor)]
            for r in rows.values()]
    intro = ("From submission (the 202) to the provider's first progress — its queue and any cold start "
             "behind it — and to completion, per provider and model (the workers' histograms, summed).")
    return ["## Time to first frame", "", intro, "",
            table(body, ["provider", "model", "jobs", "to first progress", "to completion"]), ""]


__all__ = ["METRICS", "milestones", "quantile", "scrape", "section"]
