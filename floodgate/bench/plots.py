"""PNG plots (matplotlib, headless Agg backend): the peak-shaving picture, latency CDFs, and the
accept path's latency against offered rate."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display, no GUI toolkit
import matplotlib.pyplot as plt

from floodgate.bench.stats import moving_average


def spike(result: dict[str, Any], path: Path) -> Path:
    """Arrivals/s and provider submissions/s (log scale) with queue depth, over one time axis."""
    s, cfg = result["series"], result["config"]
    f = cfg["plan"]["time_factor"]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    n = min(len(s["t"]), len(s["arrivals_per_s"]))
    ax.step(s["t"][:n], s["arrivals_per_s"][:n], where="post", color="tab:red", lw=1.2, label="arrivals/s (HTTP)")
    width = max(1, round(5.0 / s["bin_s"]))  # a 5-second trailing mean: one render rarely lands per bin
    ax.plot(s["t"][:n], moving_average(s["submissions_per_s"][:n], width), color="tab:green", lw=1.8,
            label="provider submissions/s (5 s mean)")
    ax.axhline(result["capacity_per_s"], color="tab:green", ls=":", lw=1,
               label=f"capacity with both providers busy ≈ {result['capacity_per_s']:.1f}/s")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("requests per wall second (symlog)")
    ax.set_xlabel(f"wall seconds (time factor {f}: 1 simulated minute = {60 * f:g} s)")
    start, end = cfg["plan"]["before_s"] * f, (cfg["plan"]["before_s"] + cfg["plan"]["spike_s"]) * f
    ax.axvspan(start, end, color="tab:red", alpha=0.12, label="spike: 5,000/min")
    right = ax.twinx()
    right.fill_between(s["t"][:len(s["waiting"])], s["waiting"], step="post", color="tab:blue", alpha=0.25,
                       label="queue depth: admitted, not yet submitted (events)")
    right.plot(s["queue_t"], s["dispatch_lag"], color="tab:blue", lw=1.2, drawstyle="steps-post",
               label="dispatch lag (Kafka offsets, commit interval ~3 s)")
    right.plot(s["queue_t"], s["requests_lag"], color="tab:purple", lw=1, ls="--",
               label="requests lag (not yet admitted)")
    right.set_ylabel("jobs waiting in Kafka")
    right.set_ylim(bottom=0)
    top = ax.secondary_xaxis("top", functions=(lambda x: x / f / 60, lambda m: m * f * 60))
    top.set_xlabel("simulated minutes")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    ax.set_title(f"Spike: 50/h → 5,000/min → 50/h, {result['offered']:,} requests; "
                 f"providers {cfg['limit']} slots each, renders {cfg['render'][0]:g}-{cfg['render'][1]:g} s simulated")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_cdf(spike_result: dict[str, Any], naive: dict[str, Any] | None, path: Path) -> Path:
    """Left: time to an HTTP answer (Floodgate's 202 vs the naive endpoint's answer, whatever it
    was). Right: Floodgate accept → terminal, in simulated minutes."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    if spike_result.get("cdf_accept_ms"):
        x, y = zip(*spike_result["cdf_accept_ms"], strict=True)
        left.step(x, y, where="post", label="Floodgate: 202 accepted")
    if naive and naive.get("cdf_response_ms"):
        x, y = zip(*naive["cdf_response_ms"], strict=True)
        left.step(x, y, where="post", label="naive + nginx: any answer (200/429/504)")
    left.set_xscale("log")
    left.set_xlabel("ms from scheduled send to HTTP answer (wall)")
    left.set_ylabel("fraction of requests")
    left.set_title("Answer latency under the spike")
    left.legend(fontsize=8)
    if spike_result.get("cdf_e2e_sim_min"):
        x, y = zip(*spike_result["cdf_e2e_sim_min"], strict=True)
        right.step(x, y, where="post", color="tab:green", label="Floodgate: accepted → terminal")
    right.set_xlabel("simulated minutes")
    right.set_title("Accept → terminal (latency CDF)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.01)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def accept_steps(accept: dict[str, Any], path: Path) -> Path:
    steps = accept.get("steps") or []
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    rates = [b["offered_rate"] for b in steps]
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p999", "^-")):
        ax.plot(rates, [b["latency_ms"][key] for b in steps], style, label=key)
    slo = accept["config"]["slo_p99_ms"]
    ax.axhline(slo, color="tab:red", ls=":", label=f"p99 target {slo:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, open loop)")
    ax.set_ylabel("HTTP 202 latency (ms)")
    ax.set_title("Accept path: latency vs offered rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
